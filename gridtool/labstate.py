"""Where a running lab keeps its state file, so every command finds it without flags."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_LAB_DIR = Path("/tmp/gridtool-lab")


def lab_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("GRIDTOOL_LAB_DIR") or DEFAULT_LAB_DIR)


def state_path(directory: Path) -> Path:
    return directory / "lab.json"


def read_state(directory: Path) -> dict[str, Any] | None:
    """The lab's state, or None when no lab was brought up there."""
    try:
        return json.loads(state_path(directory).read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_lab_config(env: Mapping[str, str] | None = None) -> Path | None:
    """The running lab's gridtool.conf, or None when no lab is up."""
    state = read_state(lab_dir(env))
    members = (state or {}).get("etcd", {}).get("members", [])
    if not state or not any(pid_alive(m.get("pid")) for m in members):
        return None
    path = Path(state["config"])
    return path if path.exists() else None
