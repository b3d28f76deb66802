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
It names the host's registration it is about (the agent rewrites ``machines/<host>`` in
every registration), so a record from before the host came back never counts for its
next loss; the manager also deletes it once it sees the host back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
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
    ``retry``: a failed fence is tried again this long after it failed."""

    grace: float
    retry: float = 30.0

    @classmethod
    def for_ttl(cls, ttl: float, margin: float = TIMED_MARGIN) -> FencePolicy:
        return cls(grace=ttl + margin)


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


def judge(host: str, volumes: Collection[str], record: HostFence, now: float,
          policy: FencePolicy, power_agent: bool, storage_fencer: bool,
          running: Method | None = None) -> Verdict:
    """May the guests on ``volumes`` of lost ``host`` be recovered? ``record``: what is
    known (``gone_since`` at least); ``power_agent``/``storage_fencer``: the ways there
    are; ``running``: a fence of the host in flight."""
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
    waited = now - record.gone_since
    if waited >= policy.grace:
        return Fenced(Method.TIMED, f"timed: {host}'s lease gone {waited:.0f} s "
                                    f"(grace {policy.grace:g} s)")
    return Wait(f"timed fence: recovery {policy.grace:g} s after {host}'s lease went")
