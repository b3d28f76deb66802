"""What ``gridtool check`` judges: a :class:`Snapshot` of the registry, plain frozen data
that the shell (``gridtool.health.collect``) collects, with the checker's time ``now``."""

from __future__ import annotations

from dataclasses import dataclass

from gridtool.pools.feed import FeedStatus


@dataclass(frozen=True)
class EndpointStatus:
    """One etcd client endpoint as probed; ``is_leader`` if it is the raft leader."""

    endpoint: str
    healthy: bool
    is_leader: bool = False
    error: str = ""
    version: str = ""  # the etcd server's version ("" unknown)
    db_size: int = 0  # bytes of its backend database file (0 unknown)


@dataclass(frozen=True)
class HostObs:
    """A registered host: last report (epoch s), agent version, clock pair, lease presence.

    ``host_clock`` is the host's clock reading and ``checker_clock`` the checker's time taken
    for the same instant; either may be None when unmeasured.
    """

    name: str
    last_report: float | None
    agent_version: str = ""
    host_clock: float | None = None
    checker_clock: float | None = None
    lease: bool = True
    protected: bool = True  # a working watchdog, or the host can be fenced
    unhealthy: str = ""  # why its hypervisor cannot be trusted to list its guests


@dataclass(frozen=True)
class GuestObs:
    """A guest record as observed: assigned host, state ("running", "unknown", ...)."""

    uuid: str
    name: str
    host: str | None
    state: str
    fenced: bool = False
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunReport:
    """Host ``host`` reports guest ``uuid`` running (one per host per guest)."""

    uuid: str
    host: str


@dataclass(frozen=True)
class FenceObs:
    """A fence on shared-storage ``volume`` held by host ``holder`` for guest ``guest_uuid``;
    ``ha`` for an HA guest's fence (it vanishes with the holder's lease)."""

    volume: str
    holder: str
    guest_uuid: str
    ha: bool = False


@dataclass(frozen=True)
class IntentObs:
    """An intent queued for ``host``; ``state`` is "pending", "running", "done" or
    "failed"; ``guest`` the uuid it is about."""

    host: str
    id: str
    created: float
    state: str
    guest: str = ""


@dataclass(frozen=True)
class SettingsObs:
    """A guest's operator settings record (``settings/<uuid>``)."""

    uuid: str
    name: str


@dataclass(frozen=True)
class PoolObs:
    """A worker pool with its desired and actually running member counts, the heartbeat
    of its queue feeder (``gridtool pool feed``) when it has one, and the UUIDs of its
    warm workers asleep, going to sleep or waiting for their wake (a hibernated one keeps
    its fences); ``members``: the UUIDs of all its members."""

    name: str
    desired: int
    actual: int
    feed: FeedStatus | None = None
    asleep: frozenset[str] = frozenset()
    members: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CorruptRecord:
    """A registry key whose value failed to decode."""

    key: str
    error: str


@dataclass(frozen=True)
class FenceFailure:
    """The manager's last fence of lost ``host`` failed (``manager/fenced/<host>``)."""

    host: str
    message: str


@dataclass(frozen=True)
class AlarmObs:
    """An etcd alarm raised on one member (``NOSPACE``, ``CORRUPT``)."""

    member: str
    alarm: str


@dataclass(frozen=True)
class ViolationObs:
    """A fence violation an agent recorded (``violations/<host>/<uuid>``): ``guest`` ran
    on ``host`` while ``holder`` held the fence of ``volume``; ``action`` what it did."""

    host: str
    guest: str
    volume: str
    holder: str
    action: str
    at: float


@dataclass(frozen=True)
class CertObs:
    """A TLS certificate file the fleet relies on, with its expiry (epoch seconds);
    ``error`` when it could not be read or parsed."""

    path: str
    subject: str = ""
    not_after: float | None = None
    error: str = ""


@dataclass(frozen=True)
class Snapshot:
    """Everything the shell collected, at checker time ``now`` (epoch seconds).

    ``member_count`` is the etcd cluster size (0: use the number of endpoints); list every
    member's endpoint so quorum and leader can be judged.
    """

    now: float
    endpoints: tuple[EndpointStatus, ...] = ()
    member_count: int = 0
    hosts: tuple[HostObs, ...] = ()
    guests: tuple[GuestObs, ...] = ()
    running: tuple[RunReport, ...] = ()
    fences: tuple[FenceObs, ...] = ()
    intents: tuple[IntentObs, ...] = ()
    pools: tuple[PoolObs, ...] = ()
    manager_leader: str | None = None
    manager_since: float | None = None
    corrupt: tuple[CorruptRecord, ...] = ()
    fence_failures: tuple[FenceFailure, ...] = ()
    alarms: tuple[AlarmObs, ...] = ()
    violations: tuple[ViolationObs, ...] = ()
    certs: tuple[CertObs, ...] = ()
    settings: tuple[SettingsObs, ...] = ()
    clones: frozenset[str] = frozenset()  # uuids with a clone record
