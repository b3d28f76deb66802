"""The fence hook's own logic (pure parts) and its fail-closed path; the migration job's
progress line. The hook against real libvirt and agents: tests/integration/test_qemu.py."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import pytest

from agents import hook
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


def test_job_progress_line() -> None:
    mib = 2**20
    assert job_progress(32 * mib, 128 * mib) == (
        "[###############.....] 75 % of memory sent, 32 of 128 MiB remaining")
    assert job_progress(0, 0).startswith("[####################] 100 %")
