"""A running lab's config is used only from a lab dir that is ours (issue 11, item 6).

/tmp is world-writable: a lab dir or state file planted there by another user, or one
that others may write, must not redirect the CLI (root's, typically) to another registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gridtool.config import choose_file
from gridtool.lab.state import pid_alive
from tests.harness.testbed import wait_until

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]


def make_lab(root: Path, pid: int | None = None) -> tuple[Path, Path]:
    """A lab dir as ``lab up`` leaves it (state file naming a live etcd pid); returns
    (lab dir, its config file)."""
    lab = root / "lab"
    lab.mkdir(mode=0o755)
    conf = lab / "gridtool.conf"
    conf.write_text("[registry]\nendpoints = 127.0.0.1:23790\n")
    members = [{"name": "e0", "pid": os.getpid() if pid is None else pid}]
    (lab / "lab.json").write_text(json.dumps({"config": str(conf), "etcd": {"members": members}}))
    return lab, conf


@pytest.fixture
def default(tmp_path: Path) -> Path:
    path = tmp_path / "default.conf"
    path.write_text("")
    return path


def chosen(lab: Path, default: Path) -> Path | None:
    return choose_file(None, default, {"GRIDTOOL_LAB_DIR": str(lab)})


def test_own_lab_dir_is_used(tmp_path: Path, default: Path, capsys) -> None:
    lab, conf = make_lab(tmp_path)
    assert chosen(lab, default) == conf
    assert capsys.readouterr().err == ""


def _chown_nobody(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


def _group_writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | 0o020)


def _world_writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | 0o002)


@pytest.mark.parametrize("spoil", [_chown_nobody, _group_writable, _world_writable],
                         ids=["other-owner", "group-writable", "world-writable"])
@pytest.mark.parametrize("which", ["dir", "state", "config"])
def test_planted_or_writable_lab_is_ignored(tmp_path: Path, default: Path, capsys,
                                            spoil: Callable[[Path], None], which: str) -> None:
    lab, conf = make_lab(tmp_path)
    spoil({"dir": lab, "state": lab / "lab.json", "config": conf}[which])
    assert chosen(lab, default) == default
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "warning" in err and "ignoring" in err
    assert str(lab) in err


def test_symlinked_lab_dir_is_ignored(tmp_path: Path, default: Path, capsys) -> None:
    real, _ = make_lab(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert chosen(link, default) == default
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "symlink" in err


def test_symlinked_state_file_is_ignored(tmp_path: Path, default: Path, capsys) -> None:
    lab, _ = make_lab(tmp_path)
    other = tmp_path / "elsewhere.json"
    (lab / "lab.json").rename(other)
    (lab / "lab.json").symlink_to(other)
    assert chosen(lab, default) == default
    assert "symlink" in capsys.readouterr().err


def test_no_lab_dir_is_silent(tmp_path: Path, default: Path, capsys) -> None:
    assert chosen(tmp_path / "none", default) == default
    assert capsys.readouterr().err == ""


def test_explicit_config_skips_the_lab_check(tmp_path: Path, default: Path, capsys) -> None:
    lab, _ = make_lab(tmp_path)
    _chown_nobody(lab)
    env = {"GRIDTOOL_LAB_DIR": str(lab), "GRIDTOOL_CONFIG": "/e.conf"}
    assert choose_file(None, default, env) == Path("/e.conf")
    assert choose_file("/x.conf", default, env) == Path("/x.conf")
    assert capsys.readouterr().err == ""


def as_nobody(work: Callable[[], object]) -> str:
    """``str(work())`` computed in a forked child running as uid nobody (the tests run as
    root), so it meets the kernel's real permission checks."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, str(work()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        out = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    return out


def test_pid_we_may_not_signal_is_not_alive() -> None:
    """EPERM: the pid is someone else's process, not our lab's etcd."""
    root_pid = os.getpid()
    assert as_nobody(lambda: pid_alive(root_pid)) == "False"


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A dir another user may enter (pytest's tmp dirs are root-only), removed after."""
    path = Path(tempfile.mkdtemp(prefix="gridtool-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_lab_with_someone_elses_pid_is_not_running(shared_tmp: Path) -> None:
    """nobody's own lab dir whose etcd pid is root's (EPERM): not nobody's running lab."""
    lab, _ = make_lab(shared_tmp)
    for path in (lab, lab / "lab.json", lab / "gridtool.conf"):
        _chown_nobody(path)
    env = {"GRIDTOOL_LAB_DIR": str(lab)}
    assert as_nobody(lambda: choose_file(None, Path("/nonexistent"), env)) == "None"


def test_own_and_dead_pids() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert not pid_alive(int(dead.stdout))


def gridtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gridtool.cli.main import main; main()",
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["status", "down", "up"])
def test_lab_commands_refuse_a_planted_lab_dir(tmp_path: Path, command: str) -> None:
    """``lab down`` would signal PIDs read from the dir, ``lab up`` would delete it."""
    lab, _ = make_lab(tmp_path)
    _chown_nobody(lab / "lab.json")
    run = gridtool("lab", command, "--lab-dir", str(lab))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("gridtool: untrusted lab dir") and run.stderr.count("\n") == 1
    assert (lab / "lab.json").exists()


def test_a_zombie_is_not_alive() -> None:
    """A killed lab agent stays a zombie until its parent reaps it: `lab status` must not
    call it alive (seen: the lab fence agent's off left `agent_alive` true)."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text()
                   .rpartition(")")[2].split()[0] == "Z", 10, what="the child to be a zombie")
        assert not pid_alive(child.pid), "dead, not yet reaped"
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)
