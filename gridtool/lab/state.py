"""Where a running lab keeps its state file, and whether that lab may be trusted.

The default lab dir is in world-writable /tmp, so a lab dir is used only when it is
ours: the dir, its state file and its config file are each owned by the effective user,
not group/world-writable and not a symlink (checked with ``lstat``). Anything else is
treated as no lab, with a one-line warning, so a file planted there cannot redirect the
CLI (root's, typically) to another registry.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gridtool.errors import ConfigError

DEFAULT_LAB_DIR = Path("/tmp/gridtool-lab")


class UntrustedLab(ConfigError):
    """A lab dir or file that is not ours; the message says which and why."""


def lab_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("GRIDTOOL_LAB_DIR") or DEFAULT_LAB_DIR)


def state_path(directory: Path) -> Path:
    return directory / "lab.json"


def distrust(st: os.stat_result, euid: int) -> str | None:
    """Why an ``lstat`` result is not trustworthy for user ``euid``, or None when it is."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if st.st_uid != euid:
        return f"is owned by uid {st.st_uid}, not by uid {euid}"
    if st.st_mode & 0o022:
        return f"is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_ours(directory: Path, path: Path) -> bool:
    """True when ``path`` (in lab ``directory``) is ours, False when it does not exist;
    UntrustedLab otherwise."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    problem = distrust(st, os.geteuid())
    if problem:
        raise UntrustedLab(f"untrusted lab dir {directory}: {path} {problem}")
    return True


def write_file(path: Path, text: str) -> None:
    """Write a lab file only its owner may change (whatever the umask)."""
    path.write_text(text)
    path.chmod(0o644)


def read_state(directory: Path) -> dict[str, Any] | None:
    """The lab's state, or None when no lab was brought up there; UntrustedLab when the
    dir or its state file is not ours."""
    if not (check_ours(directory, directory) and check_ours(directory, state_path(directory))):
        return None
    try:
        state = json.loads(state_path(directory).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live process we may signal. EPERM means the pid was recycled
    by someone else's process: not ours, so not alive. A zombie (dead, not yet reaped by
    its parent: a lab process outlives the CLI that started it) is not alive either."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: kill's answer stands
    return fields.rpartition(")")[2].split()[:1] != ["Z"]


def running_lab_config(env: Mapping[str, str] | None = None) -> Path | None:
    """The running lab's gridtool.conf, or None when no lab is up; UntrustedLab when the
    lab dir, state or config file is not ours."""
    directory = lab_dir(env)
    state = read_state(directory)
    members = (state or {}).get("etcd", {}).get("members", [])
    if not state or not any(pid_alive(m.get("pid")) for m in members):
        return None
    path = Path(state.get("config") or directory / "gridtool.conf")
    return path if check_ours(directory, path) else None
