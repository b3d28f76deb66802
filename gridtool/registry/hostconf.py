"""Operator settings of a host (``hostconf/<host>``), kept apart from what its agent
reports: ``draining`` (the host takes no new guests; ``host drain`` moves its guests
away) and the host settings of ``host add``/``host set``: labels, overflow, manager
candidate, watchdog device and timeout. The key has no lease: the settings outlive
agent restarts and reboots, and ``host add`` only ever changes the ones it is given.

A setting left unset (None) falls back to the agent's own ``agent.conf``; the agent
reads the record at start (:func:`effective`) and watches it: labels and overflow
take effect live, the manager candidate and the watchdog at its next start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gridtool.config import Config
from gridtool.errors import Conflict
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError
from gridtool.registry.records import decode, encode
from gridtool.registry.store import Compare, Put, Store

#: Settings the agent applies while it runs; the others wait for its next start.
LIVE = frozenset({"labels", "overflow"})
#: Every host setting, in the order ``host show`` lists them.
SETTINGS = ("labels", "overflow", "manager", "watchdog", "watchdog_timeout")


@dataclass(frozen=True)
class HostConf:
    """What an operator decided about one host (None: not set, agent.conf decides)."""

    host: str
    draining: bool = False
    since: float = 0.0  # when draining was switched on
    by: str = ""  # who did it (user@machine)
    reason: str = ""
    labels: list[str] | None = None  # replaces agent.conf's labels
    overflow: bool | None = None  # adds (True) or removes (False) the overflow label
    manager: bool | None = None  # the agent runs a manager candidate
    watchdog: str | None = None  # the watchdog device ("": none)
    watchdog_timeout: float | None = None
    set_by: str = ""  # who last changed a setting
    set_at: float = 0.0

    def settings(self) -> dict[str, Any]:
        """The settings that are set, by name."""
        return {name: value for name in SETTINGS
                if (value := getattr(self, name)) is not None}


def check_settings(changes: Mapping[str, Any]) -> None:
    """ValueError (one line) for a setting that cannot be stored."""
    for name, value in changes.items():
        if name not in SETTINGS:
            raise ValueError(f"unknown host setting {name!r}")
        if value is None:
            continue
        if name == "labels":
            for label in value:
                if not label or any(c.isspace() or c == "," or ord(c) < 32 for c in label):
                    raise ValueError(f"invalid label {label!r}: no commas, spaces or "
                                     "control characters")
        elif name == "watchdog" and value and not value.startswith("/"):
            raise ValueError(f"watchdog {value!r}: an absolute device path, such as "
                             "/dev/watchdog")
        elif name == "watchdog_timeout" and not 1 <= value <= 3600:
            raise ValueError(f"watchdog timeout {value!r}: between 1 and 3600 seconds")


def with_settings(conf: HostConf, changes: Mapping[str, Any], by: str = "",
                  now: float = 0.0) -> HostConf:
    """``conf`` with ``changes`` (setting name -> value; None unsets it)."""
    check_settings(changes)
    fixed: dict[str, Any] = {k: (list(v) if k == "labels" and v is not None else v)
                             for k, v in changes.items()}
    return replace(conf, **fixed, set_by=by, set_at=now)


def effective(cfg: Config, conf: HostConf) -> Config:
    """The agent's configuration with the registry's settings over agent.conf's."""
    from gridtool.placement.rules import DEFAULT_POLICY  # not for every reader's start-up

    overflow = DEFAULT_POLICY.overflow_label  # the label of hosts used when no other fits
    labels = list(cfg.labels if conf.labels is None else conf.labels)
    if conf.overflow is not None:
        labels = [label for label in labels if label != overflow]
        labels += [overflow] if conf.overflow else []
    changes: dict[str, Any] = {"labels": tuple(dict.fromkeys(labels))}
    if conf.manager is not None:
        changes["manager"] = conf.manager
    if conf.watchdog is not None:
        changes["watchdog"] = conf.watchdog or None
    if conf.watchdog_timeout is not None:
        changes["watchdog_timeout"] = float(conf.watchdog_timeout)
    return replace(cfg, **changes)


def pending(running: Config, wanted: Config) -> list[str]:
    """The settings ``wanted`` changes that a running agent applies only at its next
    start (its manager candidate, its watchdog)."""
    return [name for name in ("manager", "watchdog", "watchdog_timeout")
            if getattr(running, name) != getattr(wanted, name)]


def parse(key: str, raw: bytes | str, host: str) -> HostConf:
    """The record's settings (defaults when it is corrupt)."""
    try:
        return decode(HostConf, key, raw)
    except DecodeError:
        return HostConf(host)


def read(store: Store, keys: Keys, host: str) -> HostConf:
    """The host's settings (defaults when none were ever written or the record is corrupt)."""
    item = store.get(keys.hostconf(host))
    return HostConf(host) if item is None else parse(item.key, item.value, host)


def read_all(store: Store, keys: Keys) -> dict[str, HostConf]:
    """Every host's settings, by host name (corrupt records are skipped)."""
    found = {}
    base = keys.hostconfs
    for item in store.list(base)[0]:
        try:
            conf = decode(HostConf, item.key, item.value)
        except DecodeError:
            continue
        found[item.key.removeprefix(base)] = conf
    return found


def draining_hosts(store: Store, keys: Keys) -> frozenset[str]:
    """Names of the hosts marked draining (one range read)."""
    return frozenset(name for name, conf in read_all(store, keys).items() if conf.draining)


def update(store: Store, keys: Keys, host: str,
           change: Callable[[HostConf], HostConf]) -> HostConf:
    """Read-modify-write of the host's record, compared on its revision (retried on a
    race): what one command changes never drops what another set."""
    key = keys.hostconf(host)
    for _ in range(10):
        item = store.get(key)
        current = HostConf(host) if item is None else parse(item.key, item.value, host)
        new = change(current)
        compare = Compare(key, "mod", item.mod_revision) if item else Compare(key, "create", 0)
        if store.txn([compare], [Put(key, encode(new))]):
            return new
    raise Conflict(f"the settings of {host} keep changing under us: try again")


def set_draining(store: Store, keys: Keys, host: str, draining: bool, by: str = "",
                 reason: str = "") -> HostConf:
    """Mark ``host`` draining (or not), keeping its settings; returns what was written."""
    return update(store, keys, host, lambda conf: replace(
        conf, draining=draining, since=time.time() if draining else 0.0, by=by,
        reason=reason if draining else ""))


def set_settings(store: Store, keys: Keys, host: str, changes: Mapping[str, Any],
                 by: str = "") -> HostConf:
    """Change some of ``host``'s settings (None unsets one), keeping the others."""
    check_settings(changes)
    return update(store, keys, host, lambda conf: with_settings(conf, changes, by, time.time()))
