"""Recovery only after a fence (pure): may the manager restart elsewhere the guests of a
host it lost, and if not yet, which fence must it run first?

Three ways to know a lost host can no longer write a guest's disks, tried in this order:

* **storage**: every LUN of the guest had the lost host's key preempted (SCSI-3 PR, a
  :class:`StorageFencer`); a LUN without PR support is never counted and the next way is
  used; a refused preempt means no recovery;
* **power**: the host's fence agent ran ``off`` and ``status`` then said off
  (:mod:`gridtool.fencing.power`); a failed or hung agent means no recovery;
* **timed**, for guests with neither: the host's lease is gone AND ``grace`` seconds
  passed since the manager first saw it gone. The lost host destroys its HA guests by its
  own deadline, at most one TTL after its last acknowledged keepalive (its deadline is
  counted from before it sent that keepalive); the lease cannot vanish before that
  keepalive was acknowledged, even when etcd revokes it early (etcd 3.4.23, issues
  15247/12528), and the manager sees it gone later still. So TTL after the manager saw the
  lease gone, plus a margin for clock rates and the destroy itself, the host's guests are
  gone: ``grace = TTL + margin``.

What the manager did is a :class:`HostFence` record in etcd (``manager/fenced/<host>``)
so a new leader neither redoes a fence that succeeded nor forgets when the lease went.
Detection: a host is lost when its lease is gone, or, only where a storage or power fence
makes it safe, *suspected* before that (:func:`suspect`): its heartbeat has not changed
for ``suspect_after`` seconds. A suspected host is fenced first and its lease revoked
after (the shell); the timed path never applies to it until its lease is really gone.

It names the host's registration it is about (the agent rewrites ``machines/<host>`` in
every registration), so a record from before the host came back never counts for its
next loss; the manager also deletes it once it sees the host back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol


class Method(StrEnum):
    """How a lost host was fenced."""

    STORAGE = "storage"
    POWER = "power"
    TIMED = "timed"


#: Per-volume results of a storage fence (``HostFence.storage``).
PREEMPTED, REFUSED, UNSUPPORTED = "preempted", "refused", "unsupported"
#: ``HostFence.power``.
POWER_OFF, POWER_FAILED = "off", "failed"
#: ``HostFence.detection``.
SUSPECTED, LEASE_EXPIRED = "suspected", "lease expired"
#: The margin (seconds) added to the TTL for the timed path (clock rates, the destroy).
TIMED_MARGIN = 2.0


@dataclass(frozen=True)
class HostFence:
    """What the manager knows and did about one lost host (stored; flat for the codec)."""

    host: str
    gone_since: float  # when a manager first saw the host's lease gone
    #: the host's registration it is about (``machines/<host>``'s mod revision then): a
    #: record of an earlier life of the host never counts for a later loss
    registration: int = 0
    power: str = ""  # "" (not tried), "off" (confirmed), "failed"
    power_at: float = 0.0
    power_message: str = ""
    storage: dict[str, str] = field(default_factory=dict)  # volume -> preempted/refused/...
    storage_at: float = 0.0
    storage_message: str = ""
    suspected_at: float = 0.0  # when it was suspected before its lease went (0: never)
    lease_gone: bool = True  # False: only suspected so far (``gone_since``: the suspicion)

    @property
    def detection(self) -> str:
        """How the host was found lost: ``suspected`` or ``lease expired``."""
        return SUSPECTED if self.suspected_at else LEASE_EXPIRED

    @property
    def state(self) -> str:
        """In a word: ``failed``, ``power`` or ``storage`` (fenced that way), ``waiting``."""
        if self.failed:
            return "failed"
        if self.power == POWER_OFF:
            return "power"
        return "storage" if PREEMPTED in self.storage.values() else "waiting"

    @property
    def failed(self) -> str:
        """Why the last fence failed ('' when none did): ``gridtool check``'s message."""
        if self.power == POWER_FAILED:
            return f"power fence of {self.host} failed: {self.power_message}"
        refused = sorted(v for v, r in self.storage.items() if r == REFUSED)
        if refused:
            return (f"storage fence of {self.host} refused on {', '.join(refused)}: "
                    f"{self.storage_message}")
        return ""


def note_lost(record: HostFence | None, host: str, at: float, registration: int,
              lease_gone: bool) -> HostFence:
    """The record once ``host`` (in ``registration``) is seen lost at ``at``: its lease
    gone, or only suspected (``lease_gone`` False). A record of this registration is kept,
    except that a suspicion's gains the time its lease was then seen gone (the timed
    path counts from there, never from the suspicion)."""
    if record is None or record.registration != registration:
        return HostFence(host, at, registration, suspected_at=0.0 if lease_gone else at,
                         lease_gone=lease_gone)
    if lease_gone and not record.lease_gone:
        return replace(record, gone_since=at, lease_gone=True)
    return record


@dataclass(frozen=True)
class StorageResult:
    """What a :class:`StorageFencer` did, by volume: preempted, refused (with why), or
    unsupported (no persistent reservations there)."""

    preempted: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()


class StorageFencer(Protocol):
    """The port a SCSI-PR library implements: preempt ``host``'s registration on every one
    of ``volumes``. With none wired the manager has no storage fencing (never faked)."""

    def preempt(self, host: str, volumes: Sequence[str]) -> StorageResult: ...


@dataclass(frozen=True)
class FencePolicy:
    """``grace``: the timed path's wait after the lease was seen gone (TTL + margin);
    ``retry``: a failed fence is tried again this long after it failed;
    ``suspect_after``: a host whose heartbeat has not changed for this long is suspected
    (None: never; only the lease's expiry finds a host lost)."""

    grace: float
    retry: float = 30.0
    suspect_after: float | None = None

    def __post_init__(self) -> None:
        if self.suspect_after is not None and not self.suspect_after > 0:
            raise ValueError(f"suspect_after must be positive, not {self.suspect_after!r}")

    @classmethod
    def for_ttl(cls, ttl: float, margin: float = TIMED_MARGIN,
                suspect_after: float | None = None) -> FencePolicy:
        return cls(grace=ttl + margin, suspect_after=suspect_after)


@dataclass(frozen=True)
class Fenced:
    """Recover: the host cannot write the guest's disks any more, because of ``how``."""

    method: Method
    how: str


@dataclass(frozen=True)
class RunFence:
    """Run this fence first (``volumes``: the LUNs to preempt, storage only)."""

    method: Method
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wait:
    """Not yet: ``reason``; ``failed`` when a fence failed (an alarm, not a wait)."""

    reason: str
    failed: bool = False


Verdict = Fenced | RunFence | Wait


def due_times(record: HostFence, policy: FencePolicy) -> tuple[float, ...]:
    """The wall times at which :func:`judge`'s verdict on ``record`` may change with time
    alone (nothing else written): the timed grace's end once its lease is gone, and a
    failed fence's retry. A manager rounds then rather than a period later."""
    times = [record.gone_since + policy.grace] if record.lease_gone else []
    if record.failed:
        times.append(max(record.storage_at, record.power_at) + policy.retry)
    return tuple(times)


def suspect(silent: float | None, policy: FencePolicy, volumes: Collection[str],
            record: HostFence | None, power_agent: bool, storage_fencer: bool) -> bool:
    """May the manager treat a host whose lease is alive as lost, for a guest on
    ``volumes``? Only when its heartbeat has been ``silent`` (seconds; None: never seen)
    for ``policy.suspect_after`` AND a fence can make it safe: the host's power agent, or a
    storage fencer for every one of the guest's LUNs (none known unsupported)."""
    after = policy.suspect_after
    if after is None or silent is None or silent < after:
        return False
    if power_agent:
        return True
    known = record.storage if record is not None else {}
    return storage_fencer and bool(volumes) and all(known.get(v) != UNSUPPORTED
                                                     for v in volumes)


def judge(host: str, volumes: Collection[str], record: HostFence, now: float,
          policy: FencePolicy, power_agent: bool, storage_fencer: bool,
          running: Method | None = None) -> Verdict:
    """May the guests on ``volumes`` of lost ``host`` be recovered? ``record``: what is
    known (``gone_since`` at least; ``lease_gone`` False: only suspected, so never the
    timed path); ``power_agent``/``storage_fencer``: the ways there are; ``running``: a
    fence of the host in flight."""
    wanted = tuple(sorted(volumes))
    results = {v: record.storage.get(v, "") for v in wanted}
    if wanted and all(r == PREEMPTED for r in results.values()):
        return Fenced(Method.STORAGE, f"storage: {host}'s key preempted on "
                                      f"{', '.join(wanted)}")
    if record.power == POWER_OFF:
        return Fenced(Method.POWER, f"power: {record.power_message}")
    if running is not None:
        return Wait(f"fencing {host} by {running}")
    retry_due = now - max(record.storage_at, record.power_at) >= policy.retry
    if storage_fencer and wanted and UNSUPPORTED not in results.values():
        if REFUSED in results.values() and not retry_due:
            return Wait(record.failed, failed=True)
        return RunFence(Method.STORAGE, tuple(v for v, r in results.items() if r != PREEMPTED))
    if power_agent:
        if record.power == POWER_FAILED and not retry_due:
            return Wait(record.failed, failed=True)
        return RunFence(Method.POWER)
    if not record.lease_gone:
        return Wait(f"{host} suspected but no fence can make that safe: waiting for its "
                    "lease to expire")
    waited = now - record.gone_since
    if waited >= policy.grace:
        return Fenced(Method.TIMED, f"timed: {host}'s lease gone {waited:.0f} s "
                                    f"(grace {policy.grace:g} s)")
    return Wait(f"timed fence: recovery {policy.grace:g} s after {host}'s lease went")
