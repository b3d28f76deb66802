"""Runs fence agents (the shell around :mod:`gridtool.fencing.power`): one process per
run, parameters on stdin, a timeout after which its whole process group is killed.

An agent named without a ``/`` is looked up on PATH, then beside this Python (a
virtualenv's ``bin``, where ``fence_gridtool_lab`` lives), then in ``/usr/sbin`` and
``/sbin`` (Debian's ``fence-agents``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gridtool.fencing.power import (
    DEFAULT_POWER,
    PASSWORD_FILE,
    Outcome,
    PowerPolicy,
    Run,
    check_outcome,
    off_progress,
    stdin_text,
)
from gridtool.registry.fenceagents import FenceAgentConf


class FenceAgentError(Exception):
    """The agent cannot be run at all (not found, or its password file unreadable)."""


def resolve(agent: str) -> str:
    """The agent's executable path; FenceAgentError when there is none."""
    if "/" in agent:
        if not os.access(agent, os.X_OK) or not Path(agent).is_file():
            raise FenceAgentError(f"fence agent {agent} is not an executable file")
        return agent
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), str(Path(sys.executable).parent),
            "/usr/sbin", "/sbin"]
    found = shutil.which(agent, path=os.pathsep.join(d for d in dirs if d))
    if found is None:
        raise FenceAgentError(f"fence agent {agent} not found on PATH, beside {sys.executable}"
                              " or in /usr/sbin")
    return found


def _password(conf: FenceAgentConf) -> str | None:
    path = conf.params.get(PASSWORD_FILE)
    if path is None:
        return None
    try:
        return Path(path).read_text().splitlines()[0] if Path(path).stat().st_size else ""
    except (OSError, IndexError) as exc:
        raise FenceAgentError(f"cannot read {PASSWORD_FILE} {path}: {exc}") from None


def run(conf: FenceAgentConf, action: str, timeout: float) -> Run:
    """One run of the agent; a run past ``timeout`` is killed (its process group) and has
    ``returncode`` None. FenceAgentError when it cannot be started."""
    path = resolve(conf.agent)
    text = stdin_text(conf.params, action, _password(conf))
    start = time.monotonic()
    try:
        proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as exc:
        raise FenceAgentError(f"cannot run fence agent {path}: {exc}") from None
    try:
        out, err = proc.communicate(text, timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        code = None
    return Run(action, code, out, err, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def power_off(conf: FenceAgentConf, policy: PowerPolicy = DEFAULT_POWER,
              wait: Callable[[float], object] = time.sleep) -> Outcome:
    """Fence the host: ``off``, then ``status`` (again every ``policy.poll``) until it says off,
    within ``policy.power_wait``. Never raises: an agent that cannot run is a failure."""
    start = time.monotonic()
    try:
        runs = [run(conf, "off", policy.timeout)]
        while (outcome := off_progress(runs, time.monotonic() - start, policy)) is None:
            if len(runs) > 1:  # the first status right after the off
                wait(policy.poll)
            runs.append(run(conf, "status", policy.timeout))
    except FenceAgentError as exc:
        return Outcome(False, str(exc), time.monotonic() - start)
    return outcome


def check(conf: FenceAgentConf, policy: PowerPolicy = DEFAULT_POWER) -> Outcome:
    """``monitor``, then ``status`` (``host fence-agent test``); never raises."""
    try:
        monitor = run(conf, "monitor", policy.timeout)
        status = run(conf, "status", policy.timeout) if monitor.returncode == 0 else None
    except FenceAgentError as exc:
        return Outcome(False, str(exc))
    return check_outcome(monitor, status)
