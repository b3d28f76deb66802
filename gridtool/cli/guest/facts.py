"""What ``guest show`` tells, as pure functions over the data gathered for one guest on
one host: the facts for people (human units, '-' for nothing) and the JSON document
(raw values: epoch seconds, MiB) come from the same :class:`GuestData`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gridtool.cli.common.output import NOTHING, guest_state, mib, text, when
from gridtool.ha.kinds import GuestKind, guest_kind
from gridtool.registry.records import GuestSettings

Rows = list[tuple[str, str]]


@dataclass(frozen=True)
class GuestData:
    """One guest's record on one host (``view``: the record with its effective state, as
    ``guest list`` shows it) and what other records say about it."""

    view: dict[str, Any]
    settings: GuestSettings | None = None
    fences: list[dict[str, Any]] = field(default_factory=list)  # held fences of its volumes
    template: str | None = None  # the template it was cloned from
    pool: str | None = None  # the pool it is a member of
    waiting: str | None = None  # why the HA manager waits instead of acting

    @property
    def kind(self) -> GuestKind:
        return guest_kind(self.view["fenced"], bool(self.settings and self.settings.ha))

    @property
    def volumes(self) -> list[str]:
        """Its shared-storage volumes, sorted."""
        return sorted({d["volume"] for d in self.view["disks"] if d["shared"] and d["volume"]})


def guest_doc(data: GuestData) -> dict[str, Any]:
    """One entry of ``guest show --json``: the view as ``guest list`` gives it, then what
    the show adds (``settings`` null when none were ever written)."""
    return {**data.view, "kind": data.kind.value,
            "settings": asdict(data.settings) if data.settings else None,
            "fences": data.fences, "template": data.template, "pool": data.pool,
            "waiting": data.waiting}


def guest_facts(data: GuestData, now: float) -> Rows:
    """The FIELD / VALUE rows of ``guest show``: where and how it runs, who may run it."""
    v, s = data.view, data.settings
    return [
        ("host", v["host"]), ("state", guest_state(v["state"], v["reported_state"])),
        ("uuid", v["uuid"]), ("policy", _policy(data)),
        ("desired", s.desired if s else NOTHING),
        ("manager", _manager(data)),
        ("HA restarts", _restarts(s, now)),
        ("anti-affinity", text(s.anti_affinity if s else None)),
        ("template", text(data.template)), ("pool", text(data.pool)),
        ("vcpus", str(v["vcpus"])), ("memory", mib(v["memory_mib"])),
        ("persistent", text(v["persistent"])), ("autostart", text(v["autostart"])),
        ("updated", when(v["updated_at"], now)), ("ready", when(v["ready_at"], now)),
    ]


def fence_rows(data: GuestData, now: float) -> list[tuple[str, ...]]:
    """VOLUME, HOLDER, TOKEN, KIND, SINCE for each shared volume ('-' when not held)."""
    held = {f["volume"]: f for f in data.fences}
    return [(vol, held[vol]["holder"], str(held[vol]["token"]), held[vol]["kind"],
             when(held[vol]["since"], now)) if vol in held
            else (vol, NOTHING, NOTHING, NOTHING, NOTHING) for vol in data.volumes]


#: The VOLUME of a shared disk whose LUN could not be identified (the guest may not start).
UNIDENTIFIED = "cannot be identified: the guest may not start"


def disk_rows(data: GuestData) -> list[tuple[str, ...]]:
    """TARGET, SOURCE, TYPE, SHARED, VOLUME of each disk."""
    return [(d["target"], d["source"], d["kind"], text(d["shared"]),
             UNIDENTIFIED if d["shared"] and not d["volume"] else text(d["volume"]))
            for d in data.view["disks"]]


def _policy(data: GuestData) -> str:
    host = data.view["host"]
    if data.kind is GuestKind.HA:
        return f"HA: restarted on another host when {host} dies"
    if data.kind is GuestKind.PINNED:
        return f"pinned: moved only after 'gridtool host confirm-dead {host}'"
    return "not fenced (no disk on shared storage)"


def _manager(data: GuestData) -> str:
    """Why the HA manager waits, or why it gave up."""
    if data.settings is not None and data.settings.error:
        return f"gave up: {data.settings.error}"
    return f"waiting: {data.waiting}" if data.waiting else NOTHING


def _restarts(settings: GuestSettings | None, now: float) -> str:
    if settings is None or not settings.attempts:
        return NOTHING
    failed = sum(len(a) > 2 and bool(a[2]) for a in settings.attempts)
    note = f" ({failed} failed)" if failed else ""
    return f"{len(settings.attempts)}{note}, last {when(settings.attempts[-1][0], now)}"
