"""Process helpers for the lab and the tests: free ports, start, wait, stop by PID."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

#: What an agent's command line contains (``python -m agents.main``).
AGENT_MARKER = "agents.main"
#: In a lab host's iSCSI initiator's command line (``python -m gridtool.lab.initiator``).
INITIATOR_MARKER = "gridtool.lab.initiator"


class LabError(RuntimeError):
    """A lab process failed to start or a condition was not met in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
          new_session: bool = True) -> subprocess.Popen:
    """Start a process with its output in ``log``, detached from our terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=new_session, close_fds=True)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.02, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``condition`` until true; LabError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if alive is not None and not alive():
            raise LabError(f"{what}: the process exited")
        time.sleep(interval)
    raise LabError(f"{what}: not within {timeout:.0f} s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_pid(pid: int | None, marker: str, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL, a process whose command line contains ``marker``.

    The marker check keeps a recycled PID from being killed. Returns True when a
    process was stopped.
    """
    if not pid or marker not in cmdline(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker not in cmdline(pid) or _zombie(pid):
            _reap(pid)
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def kill_now(pid: int | None, marker: str) -> bool:
    """SIGKILL (power loss, no clean-up) a process whose command line contains
    ``marker``; True when one was killed."""
    if not pid or marker not in cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (OSError, IndexError):
        return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder): one process at
    a time across the machine, e.g. concurrent test sessions building the same thing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
