"""HA manager decisions, pure: which guests to restart where, and which to leave alone.

The leader-elected manager reads a :class:`Snapshot` of the registry and calls
:func:`decide`; the shell carries out the returned actions in order. Rules:

* fence before recover: an HA guest is restarted only when its host is gone (no host
  record) or it is down on a live host, AND every one of its fence keys is absent; and
  when its host is gone, only after that host was fenced
  (:func:`gridtool.fencing.recovery.judge`: storage preempt, power off by the host's
  fence agent, or the timed grace): :class:`NoteGone` records when the lease was first
  seen gone, :class:`FenceHost` runs a fence, and the :class:`Restart` names the fence
  it relied on; :class:`ForgetFence` drops that record once the host is back;
* a pinned guest that should run but is down on its live host (crashed, shut down from
  inside, or its autostart refused at boot) is restarted in place, on that host only;
  it is moved only after an operator's ``host confirm-dead`` of its host that is gone,
  and a fence of that host as above: then :class:`ReleaseFences` (the dead host's
  fences) and :class:`Restart`;
* at most ``max_restarts`` restarts and ``max_relocations`` relocations per guest per
  ``window``; beyond that :class:`MarkError`. A restart whose intent failed does not
  count; the next try waits ``retry_after`` seconds, doubled per consecutive failure up
  to ``retry_max``;
* no action for a guest with an intent in flight;
* the host is the placement allocator's (:func:`gridtool.placement.rules.place`, the one rule
  every placement follows: up, not draining, memory, vCPUs, labels, anti-affinity,
  storage reachability; overflow hosts last), each restart seeing the hosts as the
  restarts decided before it in the same round leave them.

:class:`Blocked` says why a guest that should run is left down (when no host passes, the
allocator's explanation); the shell logs it when the reason changes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from gridtool.fencing.recovery import (
    SUSPECTED,
    Fenced,
    FencePolicy,
    HostFence,
    Method,
    RunFence,
    judge,
    note_lost,
    suspect,
)
from gridtool.fencing.rules import (
    FenceKind,
    GuestRef,
    Observation,
    Observed,
    ReleasePlan,
    plan_release,
)
from gridtool.ha.kinds import GuestKind
from gridtool.placement.rules import (
    DEFAULT_POLICY,
    GuestNeeds,
    HostView,
    PlacementPolicy,
    add_guest,
    place,
)

#: Guest states (libvirt's names) in which a guest that should run is down.
DOWN_STATES = frozenset({"shutoff", "crashed"})


@dataclass(frozen=True)
class GuestView:
    """One guest as the manager sees it (the record from its live host wins)."""

    uuid: str
    name: str
    host: str | None
    state: str
    memory_mib: int
    kind: GuestKind
    volumes: tuple[str, ...] = ()
    desired: str = "running"
    needs: GuestNeeds | None = None  # what it needs from a host (None: its memory only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", GuestKind(self.kind))
        object.__setattr__(self, "volumes", tuple(sorted(set(self.volumes))))
        needs = self.needs
        if needs is not None and (needs.name, needs.memory_mib) != (self.name,
                                                                    self.memory_mib):
            raise ValueError(f"guest {self.name}: its needs describe another guest")

    def requirements(self) -> GuestNeeds:
        """What the allocator must find on a host for this guest; an HA guest, a
        protected host (never one where a hung agent could leave it running twice)."""
        needs = self.needs or GuestNeeds(self.name, self.memory_mib, 0)
        ha = self.kind is GuestKind.HA
        return needs if needs.ha == ha else replace(needs, ha=ha)

    def ref(self) -> GuestRef:
        """The fencing view of this guest (only for HA and pinned guests)."""
        return GuestRef(self.uuid, self.name, FenceKind(self.kind.value), self.volumes)


@dataclass(frozen=True)
class Attempt:
    """One restart the manager ordered: when, and whether it moved the guest."""

    at: float
    relocated: bool
    failed: bool = False  # its start intent failed: not a restart of the guest
    host: str = ""  # where it failed (when known)


def attempts(stored: Sequence[Sequence[float]], failed_on: Mapping[str, float]
             ) -> tuple[Attempt, ...]:
    """A guest's restart history from its stored settings (``attempts``, ``failed_on``)."""
    failed_at = {at: host for host, at in failed_on.items()}
    return tuple(Attempt(a[0], bool(a[1]), failed := len(a) > 2 and bool(a[2]),
                         failed_at.get(a[0], "") if failed else "")
                 for a in stored)


@dataclass(frozen=True)
class Pending:
    """An unfinished intent for a guest: addressed to ``host`` at ``since``."""

    guest: str
    host: str
    since: float


@dataclass(frozen=True)
class RestartLimits:
    """Per-guest limits within a sliding ``window`` of seconds."""

    max_restarts: int = 3
    max_relocations: int = 2
    window: float = 3600.0
    intent_timeout: float = 300.0  # an older unfinished intent no longer counts as in flight
    retry_after: float = 10.0  # after a failed restart intent; doubled per failure in a row
    retry_max: float = 300.0


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Snapshot:
    """What the manager read from the registry, at time ``now``; ``hosts`` are the live
    hosts (their records exist: leases alive) with their active guests; ``guests`` those
    it may manage (the manager leaves out a guest with no record on shared storage)."""

    now: float
    hosts: tuple[HostView, ...]
    guests: tuple[GuestView, ...]
    fences: Mapping[str, Observation] = field(default_factory=dict)  # present keys only
    confirmed_dead: frozenset[str] = frozenset()
    history: Mapping[str, tuple[Attempt, ...]] = field(default_factory=dict)  # by guest uuid
    pending: Mapping[str, Pending] = field(default_factory=dict)  # by guest uuid
    host_fences: Mapping[str, HostFence] = field(default_factory=dict)  # by host, stored
    power_agents: frozenset[str] = frozenset()  # hosts with a fence agent configured
    storage_fencer: bool = False  # a StorageFencer is wired in
    fencing_now: Mapping[str, Method] = field(default_factory=dict)  # fences in flight
    registrations: Mapping[str, int] = field(default_factory=dict)  # machines/<host> mod rev
    #: seconds since the manager saw each live host's heartbeat change (absent: never seen)
    silent: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "guests", tuple(self.guests))
        object.__setattr__(self, "confirmed_dead", frozenset(self.confirmed_dead))
        object.__setattr__(self, "power_agents", frozenset(self.power_agents))
        for name in ("fences", "history", "pending", "host_fences", "fencing_now",
                     "registrations", "silent"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError("snapshot: duplicate host names")


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Restart:
    """Ask ``on_host`` to start the guest (its agent takes the fences first)."""

    guest: str
    name: str
    on_host: str
    from_host: str | None
    relocated: bool
    reason: str
    fence: str = ""  # the fence of the lost host it relies on ('' when none was needed)


@dataclass(frozen=True)
class NoteGone:
    """Record that ``host``'s lease was first seen gone at ``at`` (the timed path's start),
    or, ``lease_gone`` False, that it was suspected then, in its registration
    ``registration`` (:func:`gridtool.fencing.recovery.note_lost`)."""

    guest: str
    name: str
    host: str
    at: float
    registration: int = 0
    lease_gone: bool = True


@dataclass(frozen=True)
class RevokeLease:
    """Suspected ``host`` is fenced: revoke its lease (in ``registration`` only), so its
    record and fences go and the fleet and its agent agree it is gone."""

    guest: str
    name: str
    host: str
    registration: int = 0


@dataclass(frozen=True)
class FenceHost:
    """Fence lost ``host`` by ``method`` (``volumes``: the LUNs to preempt) and record the
    result; recovery waits for it."""

    guest: str
    name: str
    host: str
    method: Method
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForgetFence:
    """``host`` is back: drop the record of its fence (a later loss is a new one)."""

    host: str
    guest: str = ""


@dataclass(frozen=True)
class ReleaseFences:
    """Release the fences a confirmed-dead host holds for a pinned guest (one txn)."""

    guest: str
    name: str
    host: str
    plan: ReleasePlan


@dataclass(frozen=True)
class MarkError:
    """Stop managing the guest: set its state to error, with ``reason``."""

    guest: str
    name: str
    reason: str


@dataclass(frozen=True)
class Blocked:
    """The guest should run but stays down for now, because of ``reason``."""

    guest: str
    name: str
    reason: str


Action = (Restart | ReleaseFences | MarkError | Blocked | NoteGone | FenceHost | ForgetFence
          | RevokeLease)


# --------------------------------------------------------------------------- decide


@dataclass
class _Round:
    """Working state of one decide() call: the hosts as this round's restarts leave them."""

    snap: Snapshot
    limits: RestartLimits
    policy: PlacementPolicy
    hosts: dict[str, HostView]  # the hosts a guest may be placed on (live, not silent)
    fencing: FencePolicy
    noted: set[str] = field(default_factory=set)  # hosts given a NoteGone this round
    started: dict[str, Method] = field(default_factory=dict)  # fences ordered this round
    revoking: set[str] = field(default_factory=set)  # hosts given a RevokeLease this round
    alive: frozenset[str] = frozenset()  # every live host (records exist), silent or not

    def live(self, host: str | None) -> bool:
        return host is not None and host in self.alive

    def silent(self, host: str) -> bool:
        """No heartbeat from live ``host`` for ``suspect_after`` (fence or not)."""
        after = self.fencing.suspect_after
        return after is not None and self.snap.silent.get(host, 0.0) >= after

    def record(self, host: str) -> HostFence | None:
        """The stored fence record of ``host``'s current registration, if any."""
        record = self.snap.host_fences.get(host)
        current = self.snap.registrations.get(host, 0)
        return record if record is not None and record.registration == current else None

    def held(self, guest: GuestView) -> dict[str, Observation]:
        """The fence keys of ``guest`` that exist, by volume."""
        return {v: self.snap.fences[v] for v in guest.volumes if v in self.snap.fences}

    def take(self, host: str, needs: GuestNeeds) -> None:
        self.hosts[host] = add_guest(self.hosts[host], needs)


#: The timed path's grace when the caller gives none: the default TTL (10 s) + margin.
DEFAULT_FENCING = FencePolicy.for_ttl(10)


def round_holders(current: Mapping[str, str], remembered: Mapping[str, str],
                  live: Collection[str]) -> dict[str, str]:
    """Each guest's fence holder for a round (guest uuid -> host): the one its fence
    names now; else the one that last took it (``remembered``: the registry's
    ``holders/`` keys, written with every HA fence and outliving it), while that host is
    lost. An HA fence dies with its holder's lease, in the same revision as the host's
    record, so a host that dies between starting a guest and reporting it running leaves
    no other sign that the guest ran there: remembered, that host is the guest's host in
    the round, and it is fenced (or its timed grace waited) before any restart, by this
    leader or one elected after the loss. A holder still live that no longer holds the
    fence released it (or lost it with its lease): not counted."""
    return {**{g: h for g, h in remembered.items() if h not in live}, **current}


def stale_holders(remembered: Mapping[str, tuple[str, int]], current: Mapping[str, str],
                  registrations: Mapping[str, int], live: Collection[str]) -> dict[str, int]:
    """The ``holders/`` keys the manager may delete (guest uuid -> the key's mod revision,
    to compare): their host is live, holds no fence of the guest now, and registered
    again after the key was written, so the fence it stood for died with an earlier
    lease (a fence re-taken since would have rewritten the key). A release deletes its
    key itself; these are left by a lease that ended under a live agent."""
    return {g: rev for g, (h, rev) in remembered.items()
            if h in live and current.get(g) != h and registrations.get(h, 0) > rev}


def decide(
    snap: Snapshot, limits: RestartLimits | None = None, policy: PlacementPolicy = DEFAULT_POLICY,
    fencing: FencePolicy = DEFAULT_FENCING,
) -> tuple[Action, ...]:
    """The manager's actions for ``snap``, in the order the shell must carry them out.

    Guests are taken by name (then uuid), so the result is deterministic. For one guest
    the shell stops at the first action that fails (e.g. a ReleaseFences whose compare
    fails drops the Restart after it).
    """
    rnd = _Round(snap, limits or RestartLimits(), policy, {}, fencing,
                 alive=frozenset(h.name for h in snap.hosts))
    rnd.hosts = {h.name: h for h in snap.hosts if not rnd.silent(h.name)}
    actions: list[Action] = [ForgetFence(h) for h in sorted(snap.host_fences)
                             if rnd.live(h) and not _suspicion_on(h, rnd)]
    for guest in sorted(snap.guests, key=lambda g: (g.name, g.uuid)):
        actions.extend(_decide_guest(guest, rnd))
    return tuple(actions)


def _in_flight(guest: GuestView, rnd: _Round) -> bool:
    pending = rnd.snap.pending.get(guest.uuid)
    if pending is None:
        return False
    fresh = rnd.snap.now - pending.since < rnd.limits.intent_timeout
    return fresh and rnd.live(pending.host)


def _decide_guest(guest: GuestView, rnd: _Round) -> list[Action]:
    managed = guest.kind is not GuestKind.NONE and guest.desired == "running"
    if not managed or guest.state == "error" or _in_flight(guest, rnd):
        return []
    if guest.kind is GuestKind.PINNED:
        return _decide_pinned(guest, rnd)
    return _decide_ha(guest, rnd)


def _suspicion_on(host: str, rnd: _Round) -> bool:
    """A suspicion of live ``host`` still stands: its fence runs, or it is still silent.
    A host heard from again has its record forgotten, even one saying its fence worked:
    a host that writes after its power-off was not off, and that record must never
    count for a later loss of the same registration."""
    record = rnd.record(host)
    if record is None or record.lease_gone:
        return False
    return host in rnd.snap.fencing_now or rnd.silent(host)


def _decide_ha(guest: GuestView, rnd: _Round) -> list[Action]:
    if rnd.live(guest.host):
        suspected = _decide_suspected(guest, rnd)
        if suspected is not None:
            return suspected
        if guest.state not in DOWN_STATES:
            return []
    held = rnd.held(guest)
    if held:
        volume, obs = next(iter(held.items()))
        who = obs.fence.holder if isinstance(obs, Observed) else "an unreadable record"
        return [Blocked(guest.uuid, guest.name,
                        f"waiting for fence {volume} held by {who} to go")]
    live = rnd.live(guest.host)
    if live or guest.host is None:
        why = f"{guest.state} on {guest.host}" if live else "not placed"
        return [_restart(guest, rnd, why)]
    first, fence = _fence_first(guest, guest.host, rnd)
    if fence is None:
        return first
    record = rnd.record(guest.host)
    how = " (suspected: heartbeat silent)" if record and record.detection == SUSPECTED else ""
    return [*first, _restart(guest, rnd, f"host {guest.host} gone{how}", fence=fence)]


def _decide_suspected(guest: GuestView, rnd: _Round) -> list[Action] | None:
    """``guest`` holds its fences on its live but silent host: fence that host, then
    revoke its lease; None when the host is not suspected for this guest (no fence can
    make it safe, or it was heard from)."""
    host = guest.host
    assert host is not None
    held = rnd.held(guest)
    mine = [o for o in held.values() if isinstance(o, Observed) and o.fence.holder == host]
    if not held or len(mine) != len(held):
        return None
    if not suspect(rnd.snap.silent.get(host), rnd.fencing, guest.volumes, rnd.record(host),
                   host in rnd.snap.power_agents, rnd.snap.storage_fencer):
        return None
    first, fence = _fence_first(guest, host, rnd, lease_gone=False)
    if fence is None:
        return first
    registration = rnd.snap.registrations.get(host, 0)
    revoke: list[Action] = [] if host in rnd.revoking else [
        RevokeLease(guest.uuid, guest.name, host, registration)]
    rnd.revoking.add(host)
    return [*first, *revoke, Blocked(guest.uuid, guest.name,
                                     f"host {host} suspected and fenced; revoking its lease")]


def _fence_first(guest: GuestView, host: str, rnd: _Round,
                 lease_gone: bool = True) -> tuple[list[Action], str | None]:
    """What must happen before ``guest`` of lost ``host`` (its lease gone, or only
    suspected) is recovered, and the fence it may rely on (None: not yet; the actions then
    end with why it waits)."""
    actions: list[Action] = []
    registration = rnd.snap.registrations.get(host, 0)
    stored = rnd.record(host)
    record = note_lost(stored, host, rnd.snap.now, registration, lease_gone)
    if record != stored and host not in rnd.noted:
        rnd.noted.add(host)
        actions.append(NoteGone(guest.uuid, guest.name, host, rnd.snap.now, registration,
                                lease_gone))
    running = rnd.snap.fencing_now.get(host) or rnd.started.get(host)
    verdict = judge(host, guest.volumes, record, rnd.snap.now, rnd.fencing,
                    host in rnd.snap.power_agents, rnd.snap.storage_fencer, running)
    if isinstance(verdict, Fenced):
        return actions, verdict.how
    if isinstance(verdict, RunFence):
        rnd.started[host] = verdict.method
        return [*actions, Blocked(guest.uuid, guest.name, f"fencing {host} by {verdict.method}"),
                FenceHost(guest.uuid, guest.name, host, verdict.method, verdict.volumes)], None
    return [*actions, Blocked(guest.uuid, guest.name, verdict.reason)], None


def _decide_pinned(guest: GuestView, rnd: _Round) -> list[Action]:
    if rnd.live(guest.host):
        return _restart_in_place(guest, rnd) if guest.state in DOWN_STATES else []
    host = guest.host
    if host is None:
        return [Blocked(guest.uuid, guest.name, "pinned guest without a host")]
    if host not in rnd.snap.confirmed_dead:
        return [Blocked(guest.uuid, guest.name,
                        f"pinned: host {host} unreachable; waiting for "
                        f"`host confirm-dead {host}`")]
    held = rnd.held(guest)
    plan = plan_release(host, guest.ref(), {v: held.get(v) for v in guest.volumes})
    foreign = [v for v in plan.skipped if v in held]
    if foreign:
        return [Blocked(guest.uuid, guest.name,
                        f"pinned: fence {foreign[0]} is not held by dead host {host}")]
    first, fence = _fence_first(guest, host, rnd)
    if fence is None:
        return first
    action = _restart(guest, rnd, f"host {host} confirmed dead", fence=fence)
    if not isinstance(action, Restart) or plan.empty:
        return [*first, action]
    return [*first, ReleaseFences(guest.uuid, guest.name, host, plan), action]


def _restart_in_place(guest: GuestView, rnd: _Round) -> list[Action]:
    """A pinned guest down on its live host: back on that host, never elsewhere."""
    assert guest.host is not None
    foreign = [(v, o) for v, o in rnd.held(guest).items()
               if not (isinstance(o, Observed) and o.fence.holder == guest.host)]
    if foreign:
        volume, obs = foreign[0]
        who = obs.fence.holder if isinstance(obs, Observed) else "an unreadable record"
        return [Blocked(guest.uuid, guest.name,
                        f"pinned: fence {volume} held by {who}, not by {guest.host}")]
    return [_restart(guest, rnd, f"{guest.state} on {guest.host}", on_host=guest.host)]


def _retry_wait(attempts: list[Attempt], limits: RestartLimits) -> tuple[int, float]:
    """Failed restarts in a row at the end of ``attempts`` (by time), and how long after
    the last of them the next try waits."""
    failures = 0
    for attempt in sorted(attempts, key=lambda a: a.at, reverse=True):
        if not attempt.failed:
            break
        failures += 1
    if not failures:
        return 0, 0.0
    return failures, min(limits.retry_max, limits.retry_after * 2 ** (failures - 1))


def _restart(guest: GuestView, rnd: _Round, why: str, on_host: str | None = None,
             fence: str = "") -> Action:
    """Restart ``guest`` where placement says (only ``on_host`` if given: placement still
    judges it, so a draining or full host leaves the guest Blocked), within the limits."""
    limits, now = rnd.limits, rnd.snap.now
    tried = [a for a in rnd.snap.history.get(guest.uuid, ()) if now - a.at < limits.window]
    recent = [a for a in tried if not a.failed]
    window = f"{limits.window:g} s"
    if len(recent) >= limits.max_restarts:
        return MarkError(guest.uuid, guest.name,
                         f"restart limit: {len(recent)} restarts within {window}")
    needs = guest.requirements()
    # the one placement rule, over every live host or only the one the guest is pinned to
    candidates = (tuple(rnd.hosts.values()) if on_host is None else
                  tuple(h for n, h in rnd.hosts.items() if n == on_host))
    failures, wait = _retry_wait(tried, limits)
    last = max(tried, key=lambda a: a.at, default=None)
    placement = None
    if failures == 1 and on_host is None and last is not None and last.host:
        # the first failure in a row: at once on another host (as pve-ha-manager's
        # relocation after a failed start); none there, or a later failure: back off
        placement = place(needs, tuple(h for h in candidates if h.name != last.host),
                          rnd.policy)
        placement = placement if placement.host is not None else None
    if placement is None and failures and last is not None and now - last.at < wait:
        return Blocked(guest.uuid, guest.name,  # a stable text: logged once
                       f"{failures} restart(s) in a row failed; next try {wait:g} s "
                       "after the last")
    placement = placement or place(needs, candidates, rnd.policy)
    if placement.host is None:
        return Blocked(guest.uuid, guest.name, placement.reason if on_host is None else
                       f"pinned to {on_host}, which cannot take it: {placement.reason}")
    host = placement.host
    relocated = host != guest.host
    moves = sum(a.relocated for a in recent)
    if relocated and moves >= limits.max_relocations:
        return MarkError(guest.uuid, guest.name,
                         f"relocation limit: {moves} relocations within {window}")
    rnd.take(host, needs)
    return Restart(guest.uuid, guest.name, host, guest.host, relocated, why, fence)
