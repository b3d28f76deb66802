"""Operator settings of a host (``hostconf/<host>``), kept apart from what its agent
reports: today only ``draining`` (the host takes no new guests; ``host drain`` moves its
guests away). The key has no lease: a draining host stays draining across agent
restarts and reboots until ``gridtool host undrain``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError
from gridtool.registry.records import decode, encode
from gridtool.registry.store import Store


@dataclass(frozen=True)
class HostConf:
    """What an operator decided about one host."""

    host: str
    draining: bool = False
    since: float = 0.0  # when draining was switched on
    by: str = ""  # who did it (user@machine)
    reason: str = ""


def read(store: Store, keys: Keys, host: str) -> HostConf:
    """The host's settings (defaults when none were ever written or the record is corrupt)."""
    item = store.get(keys.hostconf(host))
    if item is None:
        return HostConf(host)
    try:
        return decode(HostConf, item.key, item.value)
    except DecodeError:
        return HostConf(host)


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


def set_draining(store: Store, keys: Keys, host: str, draining: bool, by: str = "",
                 reason: str = "") -> HostConf:
    """Mark ``host`` draining (or not); returns what was written."""
    conf = HostConf(host, draining, time.time() if draining else 0.0, by,
                    reason if draining else "")
    store.put(keys.hostconf(host), encode(conf))
    return conf
