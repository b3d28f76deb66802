"""The fence hook's own logic (pure parts) and its fail-closed path; the migration job's
progress line. The hook against real libvirt and agents: tests/integration/test_qemu.py."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from agents import hook
from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS
from gridtool.placement.shell import job_progress

SHARED = "/srv/shared/*"


def xml(source: str, kind: str = "file", extra: str = "") -> str:
    attr = "file" if kind == "file" else "dev"
    return (f"<domain type='qemu'><name>g</name><uuid>u-1</uuid><devices>"
            f"<disk type='{kind}' device='disk'><source {attr}='{source}'/>{extra}"
            f"<target dev='vda'/></disk></devices></domain>")


def test_only_guests_with_a_disk_that_may_be_shared_are_asked_about() -> None:
    assert hook.may_be_fenced(xml("/srv/shared/a.qcow2"), [SHARED])
    assert not hook.may_be_fenced(xml("/var/lib/local.qcow2"), [SHARED])
    assert hook.may_be_fenced(xml("/var/lib/x.img", extra="<shareable/>"), [SHARED])
    assert hook.may_be_fenced("<domain", [SHARED]), "unreadable XML: ask the agent"
    assert hook.domain_uuid(xml("/x")) == "u-1"


def run_hook(monkeypatch: pytest.MonkeyPatch, sock: Path, op: str,
             source: str = "/srv/shared/a.qcow2") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(xml(source)))
    return hook.main(["--socket", str(sock), "--shared", SHARED, "--timeout", "0.3",
                      "--", "g", op, "begin", "-"])


def test_no_agent_means_a_refusal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run_hook(monkeypatch, tmp_path / "none.sock", "prepare") == 1
    assert "fail closed" in capsys.readouterr().err
    assert run_hook(monkeypatch, tmp_path / "none.sock", "release") == 0, "not checked"
    assert run_hook(monkeypatch, tmp_path / "none.sock", "prepare", "/local.qcow2") == 0


def test_an_agent_that_does_not_answer_in_time_means_a_refusal(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "slow.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)  # accepts the connection, never answers
    try:
        assert run_hook(monkeypatch, path, "migrate") == 1
        assert "did not answer within 0.3 s" in capsys.readouterr().err
    finally:
        server.close()


def test_the_agents_refusal_is_passed_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b'{"allow": false, "message": "its fence is held by hv7"}\n')

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert run_hook(monkeypatch, path, "prepare") == 1
        assert "refusing to start g: its fence is held by hv7" in capsys.readouterr().err
    finally:
        thread.join()
        server.close()


def test_the_hooks_default_patterns_are_the_agents() -> None:
    assert hook.DEFAULT_SHARED == DEFAULT_SHARED_PATTERNS


def test_the_config_gives_the_socket_and_the_patterns_and_flags_win(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text(f"[agent]\nhost = hv1\nhook_socket = {tmp_path / 'conf.sock'}\n"
                    f"[storage]\nshared_patterns = /srv/a/*, {SHARED}\n")
    assert hook.config_settings(str(conf)) == (str(tmp_path / "conf.sock"),
                                               ["/srv/a/*", SHARED])
    monkeypatch.setattr("sys.stdin", io.StringIO(xml("/srv/shared/a.qcow2")))
    assert hook.main(["--config", str(conf), "--timeout", "0.3",
                      "--", "g", "prepare", "begin", "-"]) == 1
    assert f"agent on {tmp_path / 'conf.sock'} cannot be asked" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(xml("/srv/shared/a.qcow2")))
    assert hook.main(["--config", str(conf), "--shared", "/elsewhere/*",
                      "--", "g", "prepare", "begin", "-"]) == 0, "--shared wins"


def test_a_config_without_patterns_means_the_default_ones(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\nhost = hv1\n")
    assert hook.config_settings(str(conf)) == (None, [])
    assert hook.main(["--config", str(conf), "--self-check", "--timeout", "0.3"]) == 0


def test_an_unreadable_config_fails_the_self_check_in_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("host = hv1\n")  # no section
    assert hook.main(["--config", str(bad), "--self-check"]) == 2
    assert hook.main(["--config", str(tmp_path / "none.conf"), "--self-check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("gridtool fence hook: config") for line in err)


@pytest.mark.parametrize("op", ["reconnect", "release", "stopped", "started"])
def test_an_unreadable_config_never_fails_an_operation_that_is_not_checked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, op: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """libxl kills the running domains when ``reconnect begin`` fails (libvirtd restarted):
    a broken agent.conf must not turn a daemon restart into an outage."""
    monkeypatch.setattr("sys.stdin", io.StringIO(xml("/local.qcow2")))
    assert hook.main(["--config", str(tmp_path / "none.conf"),
                      "--", "g", op, "begin", "-"]) == 0
    assert "config" in capsys.readouterr().err, "it still says what is wrong"


def test_an_unreadable_config_refuses_a_start_even_of_a_local_disk(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(xml("/local.qcow2")))
    assert hook.main(["--config", str(tmp_path / "none.conf"),
                      "--", "g", "prepare", "begin", "-"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gridtool fence hook: refusing to start g: config ")
    assert err.count("\n") == 1


def test_the_self_check_passes_failing_closed_without_an_agent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "none.sock"
    assert hook.main(["--socket", str(sock), "--shared", SHARED, "--self-check"]) == 0
    out = capsys.readouterr().out
    assert "shared-disk guest on /srv/shared/self-check: gridtool fence hook: refusing" in out
    assert "fail closed" in out and out.endswith("hook self-check passed\n")


def test_the_self_check_fails_when_no_guest_would_be_fenced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(tmp_path / "none.sock")
    assert hook.main(["--socket", sock, "--self-check"]) == 1
    assert "no shared-storage pattern" in capsys.readouterr().err
    # a pattern that catches local disks too: local guests would be refused
    assert hook.main(["--socket", sock, "--shared", "/var/*", "--self-check"]) == 1
    assert "a guest on a local disk would be refused" in capsys.readouterr().err


SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: gridtool is not installed there


def _run_file(hook_file: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEM_PYTHON, "-I", str(hook_file), "--socket", "/nonexistent",
                           "--shared", "/dev/etherd/*",
                           *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_run_as_a_file_it_finds_gridtool_in_the_tree_it_lies_in() -> None:
    """As the package runs it (``python3 -I /usr/lib/gridtool/agents/hook.py``), with no
    gridtool installed for that Python: the tree gives it (seen failing: every checked
    start died of ModuleNotFoundError, with a traceback)."""
    if subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import gridtool"],
                      capture_output=True).returncode == 0:
        pytest.fail(f"{SYSTEM_PYTHON} has gridtool installed: this test needs one without")
    done = _run_file(Path(hook.__file__), "--", "g", "prepare", "begin", "-",
                     stdin=xml("/dev/etherd/e1.2", kind="block"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "refusing to start g: the gridtool agent on /nonexistent" in done.stderr


def test_without_gridtool_only_the_checked_operations_fail_closed(tmp_path: Path) -> None:
    """A hook file that cannot load gridtool at all (a broken install) still lets through
    what it never checks (``reconnect begin``: libxl kills running domains when it fails)
    and refuses a start in one line."""
    alone = tmp_path / "hooks" / "qemu"
    alone.parent.mkdir()
    alone.write_text(Path(hook.__file__).read_text())
    guest = xml("/dev/etherd/e1.2", kind="block")
    assert _run_file(alone, "--", "g", "reconnect", "begin", "-", stdin=guest).returncode == 0
    refused = _run_file(alone, "--", "g", "prepare", "begin", "-", stdin=guest)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "disk detection cannot be loaded" in refused.stderr


def test_job_progress_line() -> None:
    mib = 2**20
    assert job_progress(32 * mib, 128 * mib) == (
        "[###############.....] 75 % of memory sent, 32 of 128 MiB remaining")
    assert job_progress(0, 0).startswith("[####################] 100 %")
