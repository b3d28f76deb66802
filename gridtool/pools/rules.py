"""Worker pools, pure: the pool's records and the plan that keeps a pool at its size.

Functional core (no etcd, no libvirt, no clock): the shell (``gridtool.pools.keeper``)
reads a pool's spec, its members as the registry sees them and the live hosts, calls
:func:`plan`, and carries out the returned actions with the clone API.

Rules:

- A member whose host has left the registry (its lease expired) is *lost*: it is
  forgotten at once (it no longer counts; its removal waits queued for its host, should
  that come back) and the pool is cloned back to size on the remaining hosts.
- A member still in its start-up grace (``grace`` seconds after it was cloned) counts as
  *starting* capacity whatever its state; after that it must be running (or paused...),
  else it is *broken* and removed (the grow step replaces it).
- The pool grows to its target at once (one :class:`Clone` for the missing count, never
  onto draining hosts; the allocator behind the clone API uses ``overflow`` hosts only
  when the dedicated ones are full), and shrinks by removing workers in
  :func:`removal_order`: on draining hosts, then on overflow hosts; idle ones (by their
  own load reports, when they send them) before busy ones, then the newest.
- The target is always within ``[min, max]``; for ``flex`` pools it comes from the flex
  policy (:mod:`gridtool.pools.flex`) fed with the load the pool's workers report
  (:func:`aggregate`, :func:`flex_step`).
- Warm workers (``spec.warm``): clones booted once until ready, then put to sleep
  (``warm_mode`` hibernate: libvirt managed save, no RAM held; pause: suspended, RAM
  held). They are capacity that is not serving: never in ``ready``/``starting``. A pool
  short of serving workers wakes asleep ones first (:func:`wake_order`) and clones cold
  ones for the rest; the warm set is then refilled to :func:`warm_target`
  (``min(warm, max - target)``: serving plus warm never exceeds the pool's maximum) and
  trimmed (newest first) when above it.
- The warm set is refilled without waiting (nothing in a round waits for a boot): a
  refill only submits the clones, recorded ``booting`` at once; a later round sees one
  booted (:attr:`MemberView.booted`) and plans a :class:`Sleep` (the keeper records it
  ``sleeping`` with the intent's id, then submits it); a later round sees that intent
  done and plans :class:`MarkAsleep`. Every step is in the member record, so a new
  leader goes on where the old one stopped and never refills twice. A booting or
  sleeping worker stuck past ``warm_timeout``, or whose sleep failed, is removed.
- A cold clone does not wait either: the clone API records the member ``cloning`` with
  the id of its ``clone`` intent, then sends that intent under that id (create-only),
  and the round goes on. It is serving capacity that is *starting*; a later round sees
  the intent done and the guest running and plans :class:`MarkAwake` (serving), or
  failed (or stuck past ``warm_timeout``) and removes it. One whose intent was never
  sent (its leader stopped between the two steps) cannot be sent by another (its
  identity, the XML, went with that leader): :class:`Withdraw` takes its id first, so a
  late send by the old leader fails and nothing is cloned twice; the next round removes
  it as failed and clones anew. Failed clones, wakes and sleeps are named with their
  intent's error in :attr:`Plan.failures` (``pool show``'s last failure).
- A wake does not wait either: the keeper records the worker ``waking`` with the id of
  its ``wake`` intent, then submits that intent under that id (create-only), and the
  round goes on. A waking worker is serving capacity that is *starting*; a later round
  sees its intent done and plans :class:`MarkAwake` (serving), or failed (or stuck past
  ``warm_timeout``) and removes it; one whose intent was never submitted (its leader
  stopped between the two steps) is woken again under the same id, so a wake is never
  sent twice.
- A removal (a shrink, a broken worker, a trimmed warm one) does not wait either: the
  keeper records the member ``removing`` with the id of its ``remove_clone`` intent,
  then sends that intent under that id (create-only). A removing member counts nowhere
  (not serving, not warm, never picked again); a later round sees its intent done and
  plans :class:`MarkRemoved` (its records forgotten), or sends one never sent under the
  same id, or tries a failed one again under a new id (:func:`removals`); on a host that
  is gone it is forgotten, its removal left queued for that host. So a failover
  mid-removal neither removes twice nor loses a member.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from gridtool.pools.flex import Decision, FlexState, LoadSample, PolicyParams, decide

POOL_POLICIES = ("fixed", "flex")
WARM_MODES = ("hibernate", "pause")
#: ``MemberRecord.warm``: cloned as a warm worker, booting to ready (then put to sleep).
WARM_BOOTING = "booting"
#: ``MemberRecord.warm``: booted, its ``sleep`` intent submitted (``MemberRecord.intent``).
WARM_SLEEPING = "sleeping"
#: ``MemberRecord.warm``: asleep (hibernated or paused), waiting to be woken.
WARM_ASLEEP = "asleep"
#: ``MemberRecord.warm``: its ``wake`` intent (``MemberRecord.intent``) recorded, then
#: submitted; serving capacity that is starting until the intent is done.
WARM_WAKING = "waking"
#: ``MemberRecord.warm``: a cold clone, its ``clone`` intent (``MemberRecord.intent``)
#: recorded, then submitted; serving capacity that is starting until it runs.
WARM_CLONING = "cloning"
#: ``MemberRecord.warm``: its ``remove_clone`` intent (``MemberRecord.intent``) recorded,
#: then submitted; no capacity at all, forgotten once the intent is done.
WARM_REMOVING = "removing"
#: ``MemberRecord.warm``: a wake failed (records of older keepers; removed).
WARM_FAILED = "failed"
#: Guest states in which a started worker counts as ready.
READY_STATES = frozenset({"running", "blocked", "paused", "pmsuspended"})
#: Guest states of an asleep warm worker: hibernated (managed save) or paused.
SLEEP_STATES = frozenset({"shutoff", "paused", "pmsuspended"})
DEFAULT_GRACE = 30.0
#: Seconds a warm worker may stay booting (from its clone) or sleeping (from its sleep).
WARM_TIMEOUT = 180.0
#: A worker reporting at least this busy fraction is removed after idle ones.
BUSY_UTILIZATION = 0.5


# --- records (registry JSON through gridtool.registry.records' typed codec) --------------------


@dataclass(frozen=True)
class PoolSpec:
    """What the operator asked for: ``pools/<name>/spec``.

    ``desired`` is the size of a fixed pool (``pool scale``, ``gridtool.set_desired``);
    a flex pool's size follows its policy, started from ``desired``. ``flex`` holds
    :class:`gridtool.pools.flex.PolicyParams` overrides (e.g. ``target_kind``, ``target``).
    """

    name: str
    template: str
    min: int
    max: int
    desired: int
    policy: str = "fixed"
    flex: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    warm: int = 0
    warm_mode: str = "hibernate"

    def problems(self) -> list[str]:
        """Why this spec is invalid (empty when it is fine)."""
        found = []
        if not 0 <= self.min <= self.max:
            found.append(f"need 0 <= min <= max (min {self.min}, max {self.max})")
        elif not self.min <= self.desired <= self.max:
            found.append(f"size {self.desired} is outside [{self.min}, {self.max}]")
        if self.policy not in POOL_POLICIES:
            found.append(f"policy must be one of {', '.join(POOL_POLICIES)}")
        found += warm_problems(self.warm, self.warm_mode, self.max)
        if not found and self.policy == "flex":
            try:
                self.params()
            except (TypeError, ValueError) as exc:
                found.append(str(exc))
        return found

    def params(self) -> PolicyParams:
        """The flex policy's parameters, bounded by the pool's min and max."""
        return PolicyParams.from_dict(
            {**self.flex, "min_workers": self.min, "max_workers": self.max})

    def clamp(self, size: int) -> int:
        return max(self.min, min(self.max, size))


def warm_problems(warm: int, mode: str, maximum: int) -> list[str]:
    """Why a warm size and mode are invalid for a pool of at most ``maximum`` workers."""
    found = []
    if warm < 0:
        found.append(f"warm size must be >= 0, not {warm}")
    elif warm > maximum:
        found.append(f"warm size {warm} is above the pool's maximum {maximum}")
    if mode not in WARM_MODES:
        found.append(f"warm mode must be one of {', '.join(WARM_MODES)}, not {mode!r}")
    return found


@dataclass(frozen=True)
class MemberRecord:
    """``pools/<name>/members/<uuid>`` as the clone API writes it."""

    host: str
    name: str
    template: str = ""
    created_at: float = 0.0
    warm: str = ""  # "" serving, WARM_CLONING, WARM_BOOTING, WARM_SLEEPING, WARM_ASLEEP,
    #                 WARM_WAKING, WARM_REMOVING
    since: float = 0.0  # when ``warm`` was last set (0: at ``created_at``)
    intent: str = ""  # the id of its clone, sleep, wake or removal intent (``warm`` says)


@dataclass(frozen=True)
class PoolStatus:
    """What the leading manager last did with a pool: ``pools/<name>/status``.

    ``flex_state`` carries the policy's memory across rounds and manager fail-overs;
    ``decision`` is its last verdict (the numbers ``pool show`` prints); ``decisions``
    counts verdicts by direction (up, down, hold) for the metrics.
    """

    pool: str
    updated: float
    desired: int
    ready: int
    starting: int
    lost: int = 0
    message: str = ""
    samples_until: float = 0.0
    flex_state: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    warm: int = 0  # asleep warm workers (capacity that is not serving)
    warming: int = 0  # warm workers booting to ready before their sleep
    failure: str = ""  # the last failed clone, wake or sleep, with its error
    failed_at: float = 0.0  # when a round saw it (kept until a later failure)


# --- plan inputs and actions ----------------------------------------------------------


class MemberClass(StrEnum):
    READY = "ready"
    STARTING = "starting"
    BROKEN = "broken"
    LOST = "lost"


@dataclass(frozen=True)
class MemberView:
    """A pool member as the registry shows it (``state`` "missing": no guest record).

    ``busy``: its own latest load report (``source`` = its name) says it is busy; a
    worker that does not report counts as idle. ``ready_at``: its guest record's (the
    ready marker seen this run, 0 when not). ``step``: the state of a cloning, sleeping
    or waking worker's intent (pending, running, done, failed; ``gone`` when not found).
    """

    uuid: str
    name: str
    host: str
    created_at: float
    state: str
    busy: bool = False
    warm: str = ""  # as in MemberRecord
    ready_at: float = 0.0
    since: float = 0.0
    step: str = ""
    intent: str = ""  # as in MemberRecord
    error: str = ""  # a failed step's intent's message


#: Members that become serving once their intent is done: cold clones, woken workers.
IN_FLIGHT = (WARM_CLONING, WARM_WAKING)


def is_serving(member: MemberView | MemberRecord) -> bool:
    """A serving member, or one being cloned or woken (serving capacity, starting)."""
    return member.warm in ("", *IN_FLIGHT)


@dataclass(frozen=True)
class HostInfo:
    """A live host (its agent holds its lease)."""

    name: str
    draining: bool = False
    overflow: bool = False
    free_memory_mib: int = 0


@dataclass(frozen=True)
class Clone:
    """Clone ``count`` workers from the pool's template, on none of ``exclude_hosts``
    (``warm``: as warm workers, put to sleep once ready)."""

    count: int
    exclude_hosts: tuple[str, ...]
    reason: str
    warm: bool = False


@dataclass(frozen=True)
class Wake:
    """Wake an asleep warm worker (start from managed save, or resume): record it
    ``waking`` with ``intent`` as its wake intent's id, then submit that intent (an
    ``intent`` given: the recorded one, never submitted by the leader that recorded it)."""

    uuid: str
    name: str
    host: str
    reason: str
    intent: str = ""


@dataclass(frozen=True)
class MarkAwake:
    """Record a waking (or cloning: ``was``) worker whose intent is done as serving."""

    uuid: str
    name: str
    host: str
    reason: str
    was: str = WARM_WAKING


@dataclass(frozen=True)
class Withdraw:
    """Take a cloning member's recorded clone intent id before anyone sends it (its
    leader stopped between recording and sending): the clone is never made; a later
    round removes the member as failed."""

    uuid: str
    name: str
    host: str
    intent: str
    reason: str


@dataclass(frozen=True)
class Sleep:
    """Put a booted warm worker to sleep (submit its ``sleep`` intent, recorded first)."""

    uuid: str
    name: str
    host: str
    reason: str


@dataclass(frozen=True)
class MarkAsleep:
    """Record a warm worker whose sleep intent is done as asleep."""

    uuid: str
    name: str
    host: str
    reason: str


@dataclass(frozen=True)
class Remove:
    """Stop and remove a worker (its domain, overlays, records): record it ``removing``
    with ``intent`` as its ``remove_clone`` intent's id, then submit that intent (an
    ``intent`` given: the recorded one, never submitted by the leader that recorded it).
    Not waited for: a later round sees it done (:class:`MarkRemoved`)."""

    uuid: str
    name: str
    host: str
    reason: str
    intent: str = ""
    retry: str = ""  # the failed removal intent's id this one replaces


@dataclass(frozen=True)
class MarkRemoved:
    """Forget a removed worker (its removal intent done): its clone record, membership
    and settings, in one transaction."""

    uuid: str
    name: str
    host: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """Drop a member whose host is gone (its removal is queued for that host: the
    recorded ``intent`` of one being removed, sent now if it never was)."""

    uuid: str
    name: str
    host: str
    reason: str
    intent: str = ""


Action = Wake | Clone | Sleep | MarkAsleep | MarkAwake | Withdraw | Remove | MarkRemoved | Forget


@dataclass(frozen=True)
class Plan:
    """The actions for one round and the counts behind them."""

    pool: str
    target: int
    ready: int
    starting: int
    lost: int
    broken: int
    short: int  # workers the hosts have no room for this round
    actions: tuple[Action, ...]
    warm: int = 0  # asleep warm workers left after this round's wakes
    warming: int = 0  # warm workers booting to ready
    failures: tuple[str, ...] = ()  # clones and wakes that failed (removed this round)

    @property
    def healthy(self) -> int:
        return self.ready + self.starting


# --- the plan -------------------------------------------------------------------------


def classify(member: MemberView, live: Mapping[str, HostInfo], now: float,
             grace: float = DEFAULT_GRACE, warm_timeout: float = WARM_TIMEOUT) -> MemberClass:
    """Where a serving member stands: lost (host gone), ready, starting (in grace) or
    broken. One being cloned or woken: ready once its intent is done and it runs (a
    clone whose intent record has expired: once it runs), starting while its intent is
    pending, running or not yet submitted (within ``warm_timeout``), else broken."""
    if member.host not in live:
        return MemberClass.LOST
    if member.warm in IN_FLIGHT:
        since = member.since or member.created_at
        expired = member.warm == WARM_CLONING and member.step == "gone"
        if member.step == "done" or (expired and member.state in READY_STATES):
            if member.state in READY_STATES:  # (its record may trail the intent a moment)
                return MemberClass.READY
            return MemberClass.STARTING if now - since < grace else MemberClass.BROKEN
        if member.step == "failed" or now - since >= warm_timeout:
            return MemberClass.BROKEN
        return MemberClass.STARTING
    if member.state in READY_STATES:
        return MemberClass.READY
    if now - member.created_at < grace:
        return MemberClass.STARTING
    return MemberClass.BROKEN


def removal_order(members: Iterable[MemberView],
                  live: Mapping[str, HostInfo]) -> list[MemberView]:
    """Members in the order a shrinking pool removes them: on draining hosts first, then
    on overflow hosts; within those, idle before busy, then newest first (ties by name,
    for a stable order)."""
    def key(m: MemberView) -> tuple[bool, bool, bool, float, str]:
        host = live.get(m.host, HostInfo(m.host))
        return (not host.draining, not host.overflow, m.busy, -m.created_at, m.name)

    return sorted(members, key=key)


def room(hosts: Iterable[HostInfo], memory_mib: int | None) -> int | None:
    """How many more workers of ``memory_mib`` the non-draining hosts hold (None:
    unknown)."""
    if not memory_mib or memory_mib <= 0:
        return None
    return sum(h.free_memory_mib // memory_mib for h in hosts if not h.draining)


def warm_target(spec: PoolSpec, target: int) -> int:
    """How many asleep (or booting) warm workers the pool keeps beside ``target``
    serving ones: ``spec.warm``, but never so many that serving plus warm exceeds the
    pool's maximum (a warm worker only ever becomes a serving one)."""
    return max(0, min(spec.warm, spec.max - spec.clamp(target)))


def wake_order(members: Iterable[MemberView],
               live: Mapping[str, HostInfo]) -> list[MemberView]:
    """Asleep warm workers in the order a scale-up wakes them: none on draining hosts;
    dedicated hosts before overflow ones; the oldest first (ties by name)."""
    usable = [m for m in members if m.host in live and not live[m.host].draining]
    return sorted(usable, key=lambda m: (live[m.host].overflow, m.created_at, m.name))


def booted(member: MemberView, marker: bool) -> bool:
    """A warm worker's guest runs and (its template has a ready ``marker``) is ready."""
    return member.state == "running" and (member.ready_at > 0 or not marker)


def is_asleep(member: MemberView) -> bool:
    """Recorded asleep, or sleeping with its sleep intent done (not recorded yet)."""
    return member.warm == WARM_ASLEEP or (member.warm == WARM_SLEEPING
                                          and member.step == "done")


def classify_warm(member: MemberView, live: Mapping[str, HostInfo], now: float,
                  grace: float = DEFAULT_GRACE, marker: bool = False,
                  warm_timeout: float = WARM_TIMEOUT) -> MemberClass:
    """A warm worker: lost (host gone); starting (asleep in a sleeping state, booting
    in grace or not ready yet, sleeping within ``warm_timeout``); ready (booted, to be
    put to sleep); else broken (a failed wake or sleep, stuck, or asleep but running)."""
    if member.host not in live:
        return MemberClass.LOST
    if is_asleep(member):
        return MemberClass.STARTING if member.state in SLEEP_STATES else MemberClass.BROKEN
    since = member.since or member.created_at
    if member.warm == WARM_SLEEPING:
        if member.step in ("failed", "gone") or now - since >= warm_timeout:
            return MemberClass.BROKEN
        return MemberClass.STARTING
    if member.warm != WARM_BOOTING:  # WARM_FAILED, or unknown
        return MemberClass.BROKEN
    if booted(member, marker):
        return MemberClass.READY
    if member.state not in READY_STATES and now - member.created_at >= grace:
        return MemberClass.BROKEN
    return MemberClass.STARTING if now - since < warm_timeout else MemberClass.BROKEN


def plan(spec: PoolSpec, target: int, members: Sequence[MemberView],
         hosts: Sequence[HostInfo], *, now: float, grace: float = DEFAULT_GRACE,
         worker_memory_mib: int | None = None, marker: bool = False,
         warm_timeout: float = WARM_TIMEOUT) -> Plan:
    """One round for one pool: what to wake, clone, put to sleep, remove and forget.

    ``target`` is the wanted number of serving workers (clamped here to ``[spec.min,
    spec.max]``). With ``worker_memory_mib`` the clone count is bounded by the hosts'
    free memory (serving clones before warm ones). ``marker``: the template has a ready
    marker (a warm worker is booted once its guest reported it).
    """
    size = spec.clamp(target)
    live = {h.name: h for h in hosts}
    serving = [m for m in members if is_serving(m)]
    removing = [m for m in members if m.warm == WARM_REMOVING]
    warm = [m for m in members if not is_serving(m) and m.warm != WARM_REMOVING]
    by_class: dict[MemberClass, list[MemberView]] = {c: [] for c in MemberClass}
    for m in serving:
        by_class[classify(m, live, now, grace, warm_timeout)].append(m)
    warm_class = {m.uuid: classify_warm(m, live, now, grace, marker, warm_timeout)
                  for m in warm}
    asleep = [m for m in warm if is_asleep(m) and warm_class[m.uuid] is MemberClass.STARTING]
    booting = [m for m in warm if not is_asleep(m)
               and warm_class[m.uuid] in (MemberClass.READY, MemberClass.STARTING)]
    healthy = by_class[MemberClass.READY] + by_class[MemberClass.STARTING]
    actions: list[Action] = []
    unsent = [m for m in by_class[MemberClass.STARTING]
              if m.warm in IN_FLIGHT and m.step == "gone"]
    # a recorded wake whose intent was never submitted: sent now, under its own id; a
    # recorded clone's cannot be (its identity went with its leader): withdrawn
    actions += [Wake(m.uuid, m.name, m.host, "its wake was never sent", m.intent)
                for m in unsent if m.warm == WARM_WAKING]
    actions += [Withdraw(m.uuid, m.name, m.host, m.intent, "its clone was never sent")
                for m in unsent if m.warm == WARM_CLONING]
    missing = size - len(healthy)
    woken = wake_order(asleep, live)[:max(0, missing)]
    actions += [Wake(m.uuid, m.name, m.host, f"{len(healthy)} of {size} serving")
                for m in woken]
    actions += [MarkAwake(m.uuid, m.name, m.host, f"its {_STEP[m.warm]} is done", m.warm)
                for m in sorted(by_class[MemberClass.READY], key=lambda m: m.name)
                if m.warm in IN_FLIGHT]
    left_asleep = [m for m in asleep if m not in woken]
    actions += [MarkAsleep(m.uuid, m.name, m.host, "its sleep is done")
                for m in left_asleep if m.warm == WARM_SLEEPING]
    actions += [Sleep(m.uuid, m.name, m.host, "booted") for m in booting
                if warm_class[m.uuid] is MemberClass.READY]
    capacity = room(hosts, worker_memory_mib)
    cold = max(0, missing - len(woken))
    cold_count = cold if capacity is None else min(cold, capacity)
    short = cold - cold_count
    draining = tuple(sorted(h.name for h in hosts if h.draining))
    if cold_count:
        actions.append(Clone(cold_count, draining,
                             f"{len(healthy) + len(woken)} of {size} workers"))
    actions += [Forget(m.uuid, m.name, m.host, f"host {m.host} is gone")
                for m in by_class[MemberClass.LOST]
                + [w for w in warm if warm_class[w.uuid] is MemberClass.LOST]]
    actions += removals(removing, live)
    actions += [Remove(m.uuid, m.name, m.host,
                       f"{_STEP[m.warm]} {m.step or 'stuck'} in state {m.state}"
                       if m.warm in IN_FLIGHT else f"state {m.state} after {grace:g} s")
                for m in by_class[MemberClass.BROKEN]]
    actions += [Remove(m.uuid, m.name, m.host, f"warm worker {m.warm} in state {m.state}"
                       + (f", its sleep {m.step}" if m.step else ""))
                for m in warm if warm_class[m.uuid] is MemberClass.BROKEN]
    if missing < 0:
        actions += [Remove(m.uuid, m.name, m.host, f"shrink to {size}")
                    for m in removal_order(healthy, live)[:-missing]]
    want = warm_target(spec, size)
    have = len(left_asleep) + len(booting)
    if want > have:
        spare = None if capacity is None else max(0, capacity - cold_count)
        refill = want - have if spare is None else min(want - have, spare)
        if refill:
            actions.append(Clone(refill, draining, f"{have} of {want} warm", warm=True))
    elif have > want:
        actions += [Remove(m.uuid, m.name, m.host, f"warm set to {want}")
                    for m in removal_order(left_asleep, live)[:have - want]]
    return Plan(spec.name, size, len(by_class[MemberClass.READY]),
                len(by_class[MemberClass.STARTING]), len(by_class[MemberClass.LOST]),
                len(by_class[MemberClass.BROKEN]), short, tuple(actions),
                warm=len(left_asleep), warming=len(booting),
                failures=failures([*by_class[MemberClass.BROKEN], *warm, *removing]))


def removals(removing: Iterable[MemberView],
             live: Mapping[str, HostInfo]) -> list[Remove | MarkRemoved | Forget]:
    """The next step of each member being removed (none while its intent runs): its
    host gone, forgotten (its intent sent if it never was: it waits queued for that
    host); its intent done, or gone with the guest, forgotten with its records; never
    sent (its leader stopped between recording and sending), sent under that id; failed,
    tried again under a new id."""
    steps: list[Remove | MarkRemoved | Forget] = []
    for m in sorted(removing, key=lambda m: m.name):
        if m.host not in live:
            steps.append(Forget(m.uuid, m.name, m.host, f"host {m.host} is gone", m.intent))
        elif m.step == "done" or (m.step == "gone" and m.state == "missing"):
            steps.append(MarkRemoved(m.uuid, m.name, m.host, "its removal is done"))
        elif m.step == "gone":
            steps.append(Remove(m.uuid, m.name, m.host, "its removal was never sent",
                                m.intent))
        elif m.step == "failed":
            steps.append(Remove(m.uuid, m.name, m.host, "its removal failed: again",
                                retry=m.intent))
    return steps


#: What each in-flight or warm state's intent does, for messages.
_STEP = {WARM_CLONING: "clone", WARM_WAKING: "wake", WARM_SLEEPING: "sleep",
         WARM_REMOVING: "removal"}


def failures(members: Iterable[MemberView]) -> tuple[str, ...]:
    """One line per member whose clone, wake, sleep or removal intent failed, with its error
    (what ``pool show`` says until a later failure replaces it)."""
    return tuple(f"{_STEP.get(m.warm, 'intent')} of {m.name} on {m.host} failed: "
                 f"{m.error or 'no reason given'}" for m in members if m.step == "failed")


# --- flex -----------------------------------------------------------------------------


def aggregate(samples: Iterable[LoadSample], start: float, end: float) -> LoadSample | None:
    """The pool's load over ``(start, end]`` from the reports that ended in it.

    Each reporter (``source``) gives a rate (its arrivals over its reported intervals),
    so a reporter whose cadence drifts against the manager's period is neither counted
    twice nor zero; the rates add up. A reporter's surge report (``surge``: the load
    jumped, reported from where it began) starts its rate anew: the reports before it
    are the calm it ended, and the load is marked ``surge``. Service time: total busy
    seconds over completions (reports with a mean service time count as mean x
    completions). Queue depth: the latest of each reporter, summed. None when nothing was reported.
    """
    chosen = sorted((s for s in samples if start < s.timestamp <= end),
                    key=lambda s: s.timestamp)
    if not chosen or end <= start:
        return None
    sources: dict[str, list[LoadSample]] = {}
    for s in chosen:
        sources.setdefault(s.source, []).append(s)
    rate = sum(sum(s.arrivals for s in now) / sum(s.interval for s in now)
               for now in map(since_surge, sources.values()))
    busy = completions = 0.0
    for s in chosen:
        if s.busy_seconds is not None:
            busy, completions = busy + s.busy_seconds, completions + s.completions
        elif s.mean_service_time is not None and s.completions:
            busy, completions = busy + s.mean_service_time * s.completions, \
                completions + s.completions
    estimates = [s.mean_service_time for s in chosen if s.mean_service_time is not None]
    service = busy / completions if completions else (
        sum(estimates) / len(estimates) if estimates else None)
    interval = end - start
    return LoadSample(
        timestamp=end, interval=interval, arrivals=round(rate * interval),
        completions=sum(s.completions for s in chosen),
        busy_seconds=busy if completions else None,
        mean_service_time=service if service and service > 0 else None,
        queue_depth=sum(group[-1].queue_depth for group in sources.values()),
        surge=any(s.surge for s in chosen))


def all_reported(samples: Iterable[LoadSample], since: float, now: float,
                 window: float) -> bool:
    """Whether every reporter with a report in the ``window`` seconds before ``now`` has
    one after ``since`` (the last round's end): then a round can decide on all of them
    at once instead of at its own period's phase (one reporter: at each of its reports;
    several: once the last of them reported, so no round sees only some)."""
    latest: dict[str, float] = {}
    for s in samples:
        if s.timestamp > now - window:
            latest[s.source] = max(latest.get(s.source, s.timestamp), s.timestamp)
    return bool(latest) and all(t > since for t in latest.values())


def since_surge(reports: Sequence[LoadSample]) -> Sequence[LoadSample]:
    """One reporter's reports (oldest first) from its latest surge report on (all of
    them when there is none)."""
    starts = [i for i, s in enumerate(reports) if s.surge]
    return reports[starts[-1]:] if starts else reports


def busy_sources(samples: Iterable[LoadSample], threshold: float = BUSY_UTILIZATION
                 ) -> frozenset[str]:
    """Reporters whose latest report shows them busy at least ``threshold`` of its
    interval (busy seconds, or mean service time x completions)."""
    latest: dict[str, LoadSample] = {}
    for s in samples:
        if s.source not in latest or s.timestamp > latest[s.source].timestamp:
            latest[s.source] = s
    found = set()
    for source, s in latest.items():
        busy = s.busy_seconds if s.busy_seconds is not None else (
            (s.mean_service_time or 0.0) * s.completions)
        if busy >= threshold * s.interval:
            found.add(source)
    return frozenset(found)


def flex_step(spec: PoolSpec, state: FlexState, load: LoadSample | None, ready: int,
              starting: int, now: float) -> tuple[Decision | None, FlexState]:
    """Feed one round's load to the pool's flex policy (None when nothing was reported:
    the pool holds its size)."""
    if load is None:
        return None, state
    return decide(state, replace(load, workers=ready, starting=starting), now, spec.params())


def direction(decision: Decision) -> str:
    """up, down or hold."""
    return "up" if decision.change > 0 else "down" if decision.change < 0 else "hold"


ENGINE_NUMBERS = ("arrival_rate", "smoothed_rate", "service_time", "intensity",
                  "utilization", "recommended", "last_decision")


def engine_numbers(spec: PoolSpec, decision: Mapping[str, Any]) -> dict[str, Any]:
    """What an outside policy engine reads about a pool (the contract of ``pool numbers``,
    ``pool show --json``'s ``numbers`` and the ``gridtool_pool_*`` gauges).

    From one policy decision as ``pool show`` has it (``Decision.to_dict()`` plus ``at``
    and ``from``: ``manager`` for the leader's last round, ``reports`` for a dry run over
    the live reports):
    ``arrival_rate`` (measured, per s), ``smoothed_rate`` (the policy's estimate, per s),
    ``service_time`` (s), ``intensity`` (offered load in Erlangs: rate x service time),
    ``utilization`` (Erlangs per current worker, None for an empty pool),
    ``recommended`` (the workers gridtool's policy would have, within the pool's
    bounds) and ``last_decision`` (when, from where, which policy, direction, current
    and desired workers, reason). ``{}`` when ``decision`` is empty.
    """
    if not decision:
        return {}
    change = int(decision["desired"]) - int(decision["current"])
    return {
        "arrival_rate": decision.get("arrival_rate", decision["smoothed_rate"]),
        "smoothed_rate": decision["smoothed_rate"],
        "service_time": decision["service_time"],
        "intensity": decision["offered_load"],
        "utilization": decision.get("intensity"),
        "recommended": spec.clamp(int(decision["recommended"])),
        "last_decision": {
            "at": decision["at"], "from": decision["from"], "policy": decision["policy"],
            "direction": "up" if change > 0 else "down" if change < 0 else "hold",
            "current": decision["current"], "desired": decision["desired"],
            "reason": decision["reason"]},
    }


def target_size(spec: PoolSpec, status: PoolStatus | None) -> int:
    """The size the pool should have now: its spec's for a fixed pool, the policy's last
    verdict for a flex pool (its spec's until the policy has spoken)."""
    if spec.policy == "flex" and status is not None and status.decision:
        return spec.clamp(int(status.desired))
    return spec.clamp(spec.desired)

