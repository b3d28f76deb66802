"""What ``host show`` tells, as pure functions over the data gathered for one host: the
facts for people (human units, '-' for nothing) and the JSON document (raw values:
epoch seconds, MiB) come from the same :class:`HostData`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gridtool.cli.common.output import (
    NOTHING,
    guest_state,
    mib,
    seconds,
    text,
    when,
)
from gridtool.placement.rules import unprotected_reason
from gridtool.registry.fenceagents import FenceAgentConf
from gridtool.registry.hostconf import SETTINGS, HostConf
from gridtool.registry.model import GuestRecord, HostRecord, as_dict, effective_state

Rows = list[tuple[str, str]]


@dataclass(frozen=True)
class HostData:
    """One host as the registry has it. ``record`` None: the host is lost (its lease
    expired) but guest records or fences still name it."""

    name: str
    record: HostRecord | None
    lease_id: int = 0
    lease: tuple[int, float] | None = None  # (granted TTL, remaining seconds)
    guests: list[GuestRecord] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # uuid -> ha | pinned | none
    fences: list[dict[str, Any]] = field(default_factory=list)  # fence rows it holds
    conf: HostConf | None = None
    dead: dict[str, Any] | None = None  # the operator's confirm-dead mark
    fence_agent: FenceAgentConf | None = None

    @property
    def state(self) -> str:
        """up, draining or lost."""
        if self.record is None:
            return "lost"
        return "draining" if self.conf is not None and self.conf.draining else "up"

    def count(self, kind: str) -> int:
        return Counter(self.kinds.values())[kind]


def host_doc(data: HostData, now: float) -> dict[str, Any]:
    """The JSON of ``host show``: the record and guest records as stored (``host`` null
    for a lost host), then what the view adds."""
    conf = data.conf
    return {
        "host": as_dict(data.record) if data.record else None,
        "guests": [{**as_dict(g), "kind": data.kinds.get(g.uuid, "none")}
                   for g in data.guests],
        "state": data.state,
        "draining": {"since": conf.since, "by": conf.by, "reason": conf.reason}
        if conf is not None and conf.draining else None,
        "lease": None if data.lease is None else {
            "id": data.lease_id, "granted_ttl": data.lease[0],
            "remaining_ttl": data.lease[1], "last_keepalive": _keepalive(data.lease, now)},
        "fences": data.fences,
        "ha_guests": data.count("ha"),
        "pinned_guests": data.count("pinned"),
        "protected": data.record.protected if data.record else None,
        "confirmed_dead": data.dead,
        "settings": settings_doc(conf or HostConf(data.name), data.fence_agent),
    }


def settings_doc(conf: HostConf, fence: FenceAgentConf | None) -> dict[str, Any]:
    """The host's settings in the registry as ``host set/show --json`` give them (null:
    not set there, agent.conf's value applies)."""
    doc: dict[str, Any] = {name: getattr(conf, name) for name in SETTINGS}
    doc["fence_agent"] = fence.agent if fence else None
    doc["set_by"], doc["set_at"] = conf.set_by or None, conf.set_at or None
    return doc


def settings_rows(conf: HostConf, fence: FenceAgentConf | None) -> Rows:
    """(setting, value) rows; a setting not set in the registry shows as agent.conf's."""
    def shown(value: Any) -> str:
        if value is None:
            return "(agent.conf)"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            return ",".join(value) or NOTHING
        return str(value) or "none"

    doc = settings_doc(conf, fence)
    return [(name, shown(doc[name])) for name in SETTINGS] + [
        ("fence_agent", doc["fence_agent"] or NOTHING)]


def host_facts(data: HostData, now: float) -> Rows:
    """The FIELD / VALUE rows of ``host show``, what a sysadmin looks for first on top:
    up, draining or lost; the lease; what protects its HA guests; the fences it holds."""
    rows: Rows = [("state", _state(data, now))]
    if data.lease is not None:
        granted, remaining = data.lease
        rows += [("lease", f"TTL {seconds(granted)}, {seconds(remaining)} left "
                           f"(id {data.lease_id:x})"),
                 ("last keepalive", when(_keepalive(data.lease, now), now))]
    elif data.record is None:
        rows.append(("lease", "expired"))
    if data.record is not None:
        rows.append(("protection", _protection(data.record)))
    held = Counter(f["kind"] for f in data.fences)
    rows += [("fences held", f"{len(data.fences)} ({_counts(held)})" if held else NOTHING),
             ("guests", _guest_counts(data)),
             ("HA guests", str(data.count("ha"))),
             ("pinned guests", str(data.count("pinned")))]
    rec = data.record
    if rec is None:
        return rows
    rows += [
        ("agent version", rec.agent_version), ("agent started", when(rec.started_at, now)),
        ("last report", when(rec.reported_at, now)), ("hypervisor", rec.hypervisor),
        ("libvirt uri", rec.libvirt_uri), ("cpus", str(rec.cpus)),
        ("memory", mib(rec.memory_mib)), ("free memory", mib(rec.free_memory_mib)),
        ("labels", text(rec.labels)), ("storage", text(rec.storage))]
    return rows


def fence_rows(data: HostData, now: float) -> list[tuple[str, ...]]:
    """VOLUME, GUEST, TOKEN, KIND, SINCE of each fence the host holds."""
    return [(f["volume"], f["guest_name"], str(f["token"]), f["kind"], when(f["since"], now))
            for f in data.fences]


def guest_rows(data: HostData) -> list[tuple[str, ...]]:
    """NAME, STATE, KIND, VCPUS, MEMORY, UUID of each guest the host reported."""
    live = frozenset() if data.record is None else frozenset({data.name})
    return [(g.name, guest_state(effective_state(g, live), g.state),
             _KIND.get(data.kinds.get(g.uuid, "none"), NOTHING), str(g.vcpus),
             mib(g.memory_mib), g.uuid) for g in data.guests]


_KIND = {"ha": "HA", "pinned": "pinned"}


def _keepalive(lease: tuple[int, float], now: float) -> float:
    """When the lease was last renewed: its granted TTL minus what is left, ago."""
    granted, remaining = lease
    return now - max(0.0, granted - remaining)


def _state(data: HostData, now: float) -> str:
    if data.record is None:
        if data.dead:
            return (f"lost (confirmed dead by {data.dead.get('by') or '?'} "
                    f"{when(data.dead.get('at'), now)})")
        return "lost (its lease expired)"
    conf = data.conf
    if conf is None or not conf.draining:
        return "up"
    by = f" by {conf.by}" if conf.by else ""
    why = f": {conf.reason}" if conf.reason else ""
    return f"draining since {when(conf.since, now)}{by}{why}"


def _protection(rec: HostRecord) -> str:
    """What keeps an HA guest from running twice if this host's agent hangs."""
    ways = ([f"working watchdog ({seconds(rec.watchdog_timeout)} timeout)"]
            if rec.watchdog else []) + ([f"fencing: {text(rec.fencing)}"] if rec.fencing else [])
    return "; ".join(ways) if ways else f"none: {unprotected_reason(rec.name)}"


def _guest_counts(data: HostData) -> str:
    if not data.guests:
        return NOTHING
    states = _counts(Counter(g.state for g in data.guests))
    if data.record is None:
        return f"{len(data.guests)} (unknown; last reported {states})"
    return f"{len(data.guests)} ({states})"


def _counts(counter: Counter[str]) -> str:
    """'2 running, 1 shutoff' (largest first, then by name)."""
    return ", ".join(f"{n} {what}" for what, n in sorted(counter.items(),
                                                         key=lambda c: (-c[1], c[0])))
