"""Power fencing through the standard fence-agent interface, pure: what to write on the
agent's stdin, and what its exit codes and runs mean.

The interface is the one Pacemaker and RHCS use (Debian's ``fence-agents``: fence_ipmilan,
fence_redfish, ...): ``key=value`` lines on stdin, ``action=off|on|reboot|status|monitor|
list|metadata``; exit 0 is success, and for ``status`` 0 means on and 2 means off. A
fence is ``off``, then ``status`` until it says off (as the agents' own power-wait does);
a run that outlives its timeout is killed and counts as failed (the shell:
:mod:`gridtool.fencing.agentrun`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

ACTIONS = ("off", "on", "reboot", "status", "monitor", "list", "metadata")
#: Secrets are never stored in the registry; name a file on the manager's host instead.
SECRET_PARAMS = frozenset({"password", "passwd"})
#: A file on the manager's host whose content is passed as ``password=`` (first line).
PASSWORD_FILE = "passwd_file"
#: Set by the runner, never by the configuration.
RESERVED_PARAMS = frozenset({"action", "option"})
EXIT_OK = 0
EXIT_STATUS_OFF = 2
_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")


class Power(StrEnum):
    """A host's power as its fence agent's ``status`` reports it."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PowerPolicy:
    """How long one agent run may take, and how long ``off`` may take to show."""

    timeout: float = 20.0  # one run of the agent; killed after, counts as failed
    power_wait: float = 30.0  # off, then status until off, at most this long in all
    poll: float = 1.0  # between status runs


#: The defaults (fence_ipmilan's own power_wait and timeouts are of this order).
DEFAULT_POWER = PowerPolicy()


@dataclass(frozen=True)
class Run:
    """One run of a fence agent; ``returncode`` None: it hung and was killed."""

    action: str
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    def why(self) -> str:
        """Why this run failed, in one line."""
        if self.returncode is None:
            return f"fence agent hung on {self.action}: killed after {self.seconds:.1f} s"
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-1:]
        return (f"fence agent {self.action} failed (exit {self.returncode})"
                + (f": {tail[0][:200]}" if tail else ""))


@dataclass(frozen=True)
class Outcome:
    """The end of a fence or a check: ``ok`` and what happened, in one line."""

    ok: bool
    message: str
    seconds: float = 0.0


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` words as parameters; ValueError (one line) on bad input or a secret."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ValueError(f"bad parameter {pair!r}: want key=value (key: a-z, 0-9, _ or -)")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"parameter {key}: newlines and NUL are not allowed in a value")
        if key in SECRET_PARAMS:
            raise ValueError(f"parameter {key}: secrets are not stored in the registry; "
                             f"use {PASSWORD_FILE}=PATH or password_script=PATH")
        if key in RESERVED_PARAMS:
            raise ValueError(f"parameter {key} is set by gridtool, not by the configuration")
        params[key] = value
    return params


def stdin_text(params: Mapping[str, str], action: str, password: str | None = None) -> str:
    """The agent's stdin: its parameters (``passwd_file`` turned into ``password``), then
    the action."""
    if action not in ACTIONS:
        raise ValueError(f"unknown fence action {action!r}")
    lines = [f"{k}={v}" for k, v in sorted(params.items()) if k != PASSWORD_FILE]
    if password is not None:
        lines.append(f"password={password}")
    return "\n".join([*lines, f"action={action}"]) + "\n"


def power_of(run: Run) -> Power:
    """What a ``status`` run says: exit 0 on, 2 off, anything else (or a hang) unknown."""
    if run.returncode == EXIT_OK:
        return Power.ON
    if run.returncode == EXIT_STATUS_OFF:
        return Power.OFF
    return Power.UNKNOWN


def off_progress(runs: Sequence[Run], elapsed: float, policy: PowerPolicy) -> Outcome | None:
    """The fence so far (``runs``: the ``off``, then the ``status`` runs): its outcome, or
    None to run ``status`` again after ``policy.poll``."""
    first = runs[0]
    if first.returncode != EXIT_OK:
        return Outcome(False, first.why(), elapsed)
    last = runs[-1]
    if len(runs) > 1:
        power = power_of(last)
        if power is Power.OFF:
            return Outcome(True, f"power off confirmed by status after {elapsed:.1f} s",
                           elapsed)
        if last.returncode is None:
            return Outcome(False, last.why(), elapsed)
    if elapsed >= policy.power_wait:
        power = power_of(last) if len(runs) > 1 else Power.UNKNOWN
        return Outcome(False, f"power still {power} {elapsed:.1f} s after off", elapsed)
    return None


def check_outcome(monitor: Run, status: Run | None) -> Outcome:
    """``host fence-agent test``: the agent's monitor, then the host's status."""
    if monitor.returncode != EXIT_OK:
        return Outcome(False, monitor.why(), monitor.seconds)
    if status is None:
        return Outcome(True, "monitor ok", monitor.seconds)
    seconds = monitor.seconds + status.seconds
    power = power_of(status)
    if power is Power.UNKNOWN:
        return Outcome(False, status.why(), seconds)
    return Outcome(True, f"monitor ok; power {power}", seconds)
