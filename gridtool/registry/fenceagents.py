"""Per-host power fence agents (``fenceagents/<host>``): which agent fences the host and
its parameters, set by an operator (``gridtool host fence-agent set``). Secrets never live
here: a password is a path to a file on the manager's host (``passwd_file``) or a
``password_script`` the agent runs. No lease: the setting outlives the host's agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError, HostRecord
from gridtool.registry.records import decode, encode
from gridtool.registry.store import Store

#: What a configured fence agent adds to a host record's ``fencing``.
POWER = "power"


@dataclass(frozen=True)
class FenceAgentConf:
    """The fence agent of one host: a name found on the manager's PATH, or a path."""

    host: str
    agent: str
    params: dict[str, str] = field(default_factory=dict)
    by: str = ""
    since: float = 0.0


def read(store: Store, keys: Keys, host: str) -> FenceAgentConf | None:
    """The host's fence agent; None when none is set (or its record is corrupt)."""
    item = store.get(keys.fence_agent(host))
    if item is None:
        return None
    try:
        return decode(FenceAgentConf, item.key, item.value)
    except DecodeError:
        return None


def read_all(store: Store, keys: Keys) -> dict[str, FenceAgentConf]:
    """Every host's fence agent, by host name (corrupt records are skipped)."""
    found = {}
    for item in store.list(keys.fence_agents)[0]:
        try:
            found[item.key.removeprefix(keys.fence_agents)] = decode(
                FenceAgentConf, item.key, item.value)
        except DecodeError:
            continue
    return found


def write(store: Store, keys: Keys, host: str, agent: str, params: dict[str, str],
          by: str = "") -> FenceAgentConf:
    """Set ``host``'s fence agent; returns what was written."""
    conf = FenceAgentConf(host, agent, dict(params), by, time.time())
    store.put(keys.fence_agent(host), encode(conf))
    return conf


def remove(store: Store, keys: Keys, host: str) -> bool:
    """Forget ``host``'s fence agent; False when it had none."""
    return store.delete(keys.fence_agent(host))


def with_fencing(record: HostRecord, powered: frozenset[str] | set[str]) -> HostRecord:
    """``record`` with ``power`` in its ``fencing`` when its host has a fence agent
    (``powered``: those hosts): what protects the host, as placement and checks read it."""
    if record.name not in powered or POWER in record.fencing:
        return record
    return replace(record, fencing=(*record.fencing, POWER))
