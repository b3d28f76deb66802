"""The HA manager's shell: an etcd election, then a loop that reads a snapshot of the
registry, asks the pure ``hadecide.decide`` what to do, and writes intents.

The leader reads by watch: a :class:`gridtool.registry.mirror.MirrorStore` keeps the
prefixes it reads, and each full round first brings it up to the registry's revision (or
lists again). A round whose inputs did not change since an idle round (no actions, nothing
in flight, nobody fenced or suspect) skips the barrier, the snapshot and ``decide`` (a
*quiet* round: no round trip; a background probe checks that the watch keeps up), until
``full_every`` seconds have passed since the last full one. A lost host's timed grace
ending brings the next round forward to that moment, and so does a host record or a
fence vanishing (not a put: ``gridtool.ha.pacing``); the fleet index's audit runs after
idle full rounds, and at most once per ``AUDIT_EVERY_S`` while rounds are busy.

Every write of the leader is a transaction guarded by its election key (compare its
create revision), so a deposed leader that has not noticed yet cannot act.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from gridtool.backoff import Backoff
from gridtool.clock import SYSTEM, Clock
from gridtool.config import Config
from gridtool.errors import AuthError, LeaseGone, RegistryUnavailable
from gridtool.fencing import agentrun
from gridtool.fencing.power import DEFAULT_POWER, Outcome, PowerPolicy
from gridtool.fencing.recovery import (
    POWER_FAILED,
    POWER_OFF,
    PREEMPTED,
    REFUSED,
    SUSPECTED,
    UNSUPPORTED,
    FencePolicy,
    HostFence,
    Method,
    StorageFencer,
    due_times,
    note_lost,
)
from gridtool.fencing.rules import Observation, Observed, observe
from gridtool.fencing.shell import read_holders, read_host_fences, run_plan
from gridtool.ha import batch
from gridtool.ha.kinds import guest_kind
from gridtool.ha.pacing import audit_due, wakes_round
from gridtool.ha.rules import (
    Action,
    Blocked,
    FenceHost,
    ForgetFence,
    GuestView,
    MarkError,
    NoteGone,
    Pending,
    ReleaseFences,
    Restart,
    RestartLimits,
    RevokeLease,
    Snapshot,
    attempts,
    decide,
    round_holders,
    stale_holders,
)
from gridtool.placement.index import FleetIndex
from gridtool.placement.shell import FleetView, guest_needs, live_hosts
from gridtool.pools.keeper import PoolKeeper
from gridtool.registry import fenceagents
from gridtool.registry.fenceagents import FenceAgentConf
from gridtool.registry.fleet import Registry
from gridtool.registry.hostconf import HostConf
from gridtool.registry.intents import IntentClient
from gridtool.registry.keyindex import KeyIndex, decoded
from gridtool.registry.keys import Keys
from gridtool.registry.mirror import Memo, MirrorStore, guest_pages
from gridtool.registry.model import ACTIVE_STATES, DecodeError, GuestRecord
from gridtool.registry.records import GuestSettings, Intent, ManagerStatus, decode, encode
from gridtool.registry.store import Compare, Delete, Item, Put, Store, Watch

log = logging.getLogger("gridtool.ha.manager")


class RoundTime(NamedTuple):
    """One round: its ``seconds``, whether it was ``full`` (read and decided; False: a
    quiet round), and the seconds of those spent bringing the view up to date (``sync``:
    in a full round the barrier, a revision read and the wait for the watch)."""

    seconds: float
    full: bool
    sync: float = 0.0


class Manager:
    """One manager candidate; ``run()`` campaigns and, once elected, manages.

    ``clock`` is where it reads the time; ``threaded=False`` runs pool rounds and fences
    inline. The simulator passes both and calls :meth:`step` itself instead of ``run()``.
    Fencing a lost host: ``power_fence(host)`` (default: the host's configured fence agent,
    :func:`gridtool.fencing.agentrun.power_off`), ``storage_fencer`` (none: no storage
    fencing), ``fencing`` (the timed grace; default TTL + margin).
    """

    def __init__(self, cfg: Config, store: Store, name: str, period: float = 1.0,
                 limits: RestartLimits | None = None, pool_period: float = 10.0,
                 clock: Clock = SYSTEM, threaded: bool = True,
                 power_fence: Callable[[str], Outcome] | None = None,
                 storage_fencer: StorageFencer | None = None,
                 fencing: FencePolicy | None = None,
                 power_policy: PowerPolicy = DEFAULT_POWER,
                 mirror: bool = True, full_every: float = 30.0) -> None:
        self.cfg = cfg
        self.store = store
        self.keys = cfg.keys
        self.registry = Registry(store, cfg.keys)
        self.name = name
        self.period = period
        self.limits = limits or RestartLimits()
        self.lease: int | None = None
        self.leader_rev = 0
        self.since = 0.0
        self.blocked: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.recent: list[str] = []
        self.clock = clock
        self._last_keepalive = 0.0
        self._wake = threading.Event()  # a host or fence vanishing wakes the next round
        self._audited: float | None = None  # when the last index audit ran (monotonic)
        self._watches: list[Watch] = []
        self._dead_marks: dict[str, int] = {}  # confirm-dead marks read: host -> revision
        self.threaded = threaded
        self.power_policy = power_policy
        self.power_fence = power_fence or self._run_fence_agent
        self.storage_fencer = storage_fencer
        self.fencing = fencing or FencePolicy.for_ttl(cfg.ttl, suspect_after=cfg.suspect_after)
        self._fence_lock = threading.Lock()
        self._fencing_now: dict[str, Method] = {}  # fences in flight, by host
        self._fenced_inline = False  # an inline fence finished: decide again this tick
        self._host_fences: dict[str, HostFence] = {}  # as last read
        self._stale_holders: dict[str, int] = {}  # holders/ keys to delete (stale_holders)
        #: each host's heartbeat as last seen: (mod revision, monotonic time first seen)
        self._beats: dict[str, tuple[int, float]] = {}
        self._beat_lock = threading.Lock()
        self.pools = PoolKeeper(store, cfg, self, period=pool_period, clock=clock,
                                threaded=threaded, wake=self._wake.set)
        self.mirror = mirror  # read by watch (False: list the registry every round)
        self.full_every = full_every
        self.view: Store = store  # where rounds read: the mirror while leading
        self._idle: tuple[int, float] | None = None  # (mirror changes, time) of an idle round
        self.rounds: deque[RoundTime] = deque(maxlen=10_000)  # the last rounds
        self.txn_limits = batch.TxnLimits()  # what one transaction of restarts may hold
        self._intent_ns = 0  # the last start intent's id (time_ns), for unique ids
        self._memo = Memo()  # decoded host records, kept between rounds
        #: guest records per host, settings and host views, updated per changed key
        self._index = FleetIndex(cfg.keys, guest_needs)
        #: fence keys, fence agents and host settings, decoded per changed key
        self._fences: KeyIndex[Observation] = KeyIndex(
            cfg.keys.fences, lambda volume, item: observe(volume, item.value, item.mod_revision))
        self._agents = KeyIndex(cfg.keys.fence_agents, decoded(FenceAgentConf))
        self._hostconfs = KeyIndex(cfg.keys.hostconfs, decoded(HostConf))
        self.index_repairs = 0  # hosts the audit found the index wrong about

    # -- election ------------------------------------------------------------

    def run(self, stop: threading.Event, resign: bool = True) -> None:
        """Campaign and manage until ``stop``; then resign (revoke the lease) unless told
        not to (a test's stand-in for a manager that dies)."""
        log.info("event=manager_start name=%s", self.name)
        backoff = Backoff(first=0.5, limit=5.0)  # jittered: candidates must not retry together
        threading.Thread(target=_set_on, args=(stop, self._wake), daemon=True,
                         name=f"manager {self.name} stop").start()  # ends a round's wait
        while not stop.is_set():
            if self.step():
                backoff.reset()
                self._wake.wait(self._until_next() if self.leader_rev
                                else min(self.period, 0.5))
            else:
                stop.wait(backoff.next())  # not _wake: a watch event must not cut it short
        self._watches = _cancel(self._watches)
        self.pools.stop()
        if resign:
            self._resign()

    def step(self) -> bool:
        """One turn: campaign when not leading; once leading, keep the lease and run a
        round. Registry errors end the leadership (a lost lease: campaign anew) and make
        it return False (``run`` then backs off)."""
        ok = True
        try:
            if not self.leader_rev:
                self._campaign()
            if self.leader_rev:
                self._keepalive()
            if self.leader_rev:
                if not self._watches:
                    self._watches = self._watch()
                self._wake.clear()
                self.tick()
        except (RegistryUnavailable, AuthError) as exc:
            if self.leader_rev:
                log.warning("event=manager_step_down name=%s error=%s", self.name, exc)
            self.leader_rev = 0
            ok = False
            if isinstance(exc, LeaseGone):
                self.lease = None  # campaign again with a fresh lease
        if not self.leader_rev:
            self._watches = _cancel(self._watches)
            self.view = self.store
        return ok

    def _watch(self) -> list[Watch]:
        """Watch what wakes a round (hosts, fences), heartbeats (when suspecting), and,
        reading by watch, everything a round reads (one watch feeding the mirror)."""
        if not self.mirror:
            watches: list[Watch] = [self.store.watch_prefix(p, self._wake_event)
                                    for p in (self.keys.hosts, self.keys.fences)]
            if self.fencing.suspect_after is not None:
                watches.append(self.store.watch_prefix(self.keys.heartbeats, self._beat_event))
            return watches
        view = MirrorStore(self.store, self.keys.prefix, mirrored(self.keys),
                           quiet=(self.keys.heartbeats,), on_event=self._mirror_event,
                           catch_up=max(2.0, self.cfg.timeout), bounds=guest_pages(self.keys),
                           journal=True)
        view.start()
        self.view, self._idle = view, None
        return [view]

    def _wake_event(self, ev: Any) -> None:
        if wakes_round(self.keys, ev.kind, ev.key):
            self._wake.set()

    def _mirror_event(self, ev: Any) -> None:
        if ev.key.startswith(self.keys.heartbeats):
            self._beat_event(ev)
        else:
            self._wake_event(ev)

    def _campaign(self) -> None:
        if self.lease is None:
            self.lease = self.store.grant_lease(self.cfg.ttl)
            self._last_keepalive = self.clock.monotonic()
        else:
            self._keepalive_lease()
            if self.lease is None:  # it expired: campaign next turn with a fresh one
                return
        key = self.keys.manager_leader
        body = json.dumps({"v": 1, "leader": self.name, "since": self.clock.wall()}).encode()
        self.store.txn([Compare(key, "create", 0)], [Put(key, body, self.lease)])
        # Won now, or still holds the key from before a step-down (a registry error):
        # the key under our own lease is the leadership (else nobody could win until
        # the lease this candidate keeps alive expired).
        item = self.store.get(key)
        if item is not None and item.lease == self.lease:
            self.leader_rev = item.create_revision
            self.since = self.clock.wall()
            log.info("event=manager_elected name=%s revision=%s", self.name,
                     self.leader_rev)

    def _keepalive_lease(self) -> None:
        if self.lease is None or \
                self.clock.monotonic() - self._last_keepalive < self.cfg.ttl / 3:
            return
        if self.store.keepalive(self.lease) <= 0:
            self.lease = None
            self.leader_rev = 0
            return
        self._last_keepalive = self.clock.monotonic()

    def _keepalive(self) -> None:
        self._keepalive_lease()
        item = self.store.get(self.keys.manager_leader)
        if item is None or item.create_revision != self.leader_rev:
            log.warning("event=manager_lost_leadership name=%s", self.name)
            self.leader_rev = 0

    def _resign(self) -> None:
        if self.lease is not None:
            with contextlib.suppress(RegistryUnavailable, AuthError):  # it expires by itself
                self.store.revoke_lease(self.lease)
        log.info("event=manager_stop name=%s", self.name)

    @property
    def guard(self) -> list[Compare]:
        return [Compare(self.keys.manager_leader, "create", self.leader_rev)]

    # -- heartbeats (detection before the lease expires) -----------------------

    def _beat_event(self, ev: Any) -> None:
        if ev.kind == "put":
            self._saw_beat(ev.key.removeprefix(self.keys.heartbeats), ev.revision)

    def _saw_beat(self, host: str, revision: int) -> None:
        """Note ``host``'s heartbeat at ``revision``; its silence counts from the first
        time the manager saw it (by its own monotonic clock: no clock skew)."""
        with self._beat_lock:
            known = self._beats.get(host)
            if known is None or revision > known[0]:
                self._beats[host] = (revision, self.clock.monotonic())

    def _silences(self, live: set[str]) -> dict[str, float]:
        """Seconds since each live host's heartbeat last changed (read the keys too: the
        watch may have missed some), forgetting hosts that are gone; none without
        ``suspect_after`` (nothing read)."""
        if self.fencing.suspect_after is None:
            return {}
        for item in self.view.list(self.keys.heartbeats)[0]:
            self._saw_beat(item.key.removeprefix(self.keys.heartbeats), item.mod_revision)
        now = self.clock.monotonic()
        with self._beat_lock:
            self._beats = {h: b for h, b in self._beats.items() if h in live}
            return {h: now - seen for h, (_, seen) in self._beats.items()}

    def _until_next(self) -> float:
        """How long to wait for the next round: ``period``, or less when a host becomes
        suspect sooner (its heartbeat silent for ``suspect_after``) or a lost host's fence
        verdict changes sooner (its timed grace ends, a failed fence is retried)."""
        wall = self.clock.wall()
        due = [t - wall for rec in self._host_fences.values()
               for t in due_times(rec, self.fencing)]
        after = self.fencing.suspect_after
        if after is not None:
            now = self.clock.monotonic()
            with self._beat_lock:
                due += [seen + after - now for _, seen in self._beats.values()]
        soonest = min((d for d in due if d > 0), default=self.period)
        return max(0.05, min(self.period, soonest + 0.01))

    # -- one round -----------------------------------------------------------

    def tick(self) -> None:
        started = time.perf_counter()
        full = self._sync_view()
        synced = time.perf_counter() - started
        for _ in range(2 if full else 0):  # a 2nd pass recovers what an inline fence allowed
            self._fenced_inline = False
            self._round()
            if not self._fenced_inline:
                break
        if full and isinstance(self.view, MirrorStore) and \
                audit_due(self._idle is not None, self._audited, self.clock.monotonic()):
            self._audited = self.clock.monotonic()
            self._audit(self.view)
        self.rounds.append(RoundTime(time.perf_counter() - started, full, synced))
        self._publish_status()
        self.pools.maybe_run()

    def _sync_view(self) -> bool:
        """Bring the view up to date; True when this round must read and decide (after
        the barrier: :meth:`MirrorStore.sync`), False for a quiet round (no round trip,
        no wait)."""
        if not isinstance(self.view, MirrorStore):
            return True
        if self._quiet(self.view):
            return False
        self.view.sync()
        return True

    def _quiet(self, view: MirrorStore) -> bool:
        """Nothing a round reads changed since an idle full round less than
        ``full_every`` ago, as far as the mirror has seen, no host's heartbeat has been
        silent past ``suspect_after``, and the watch keeps up (``MirrorStore.check``: it
        delivered every revision probed within its catch-up time). A change still in
        flight makes the round after its arrival full (hosts and fences wake it at once)."""
        idle = self._idle
        if idle is None or idle[0] != view.changes or \
                self.clock.monotonic() - idle[1] >= self.full_every or not view.check():
            return False
        after = self.fencing.suspect_after
        if after is None:
            return True
        live = {i.key.removeprefix(self.keys.hosts) for i in view.list(self.keys.hosts)[0]}
        return all(s < after for s in self._silences(live).values())

    def _round(self) -> None:
        changes = self.view.changes if isinstance(self.view, MirrorStore) else 0
        snap, self.names = self.snapshot()
        actions = decide(snap, self.limits, fencing=self.fencing)
        idle = not (actions or snap.pending or snap.host_fences or snap.fencing_now)
        self._idle = (changes, self.clock.monotonic()) if idle else None
        waiting = {a.guest for a in actions if isinstance(a, Blocked)}
        self.blocked = {g: r for g, r in self.blocked.items() if g in waiting}
        failed: set[str] = set()
        singles, restarts = batch.order(actions)
        for action in singles:
            if action.guest and action.guest in failed:
                continue
            if not self._act(action, snap):
                failed.add(action.guest)
        self._restart_batch([r for r in restarts if r.guest not in failed], snap)
        self._forget_holders()

    def _forget_holders(self) -> None:
        """Delete the ``holders/`` keys :func:`stale_holders` found, each only if it was
        not rewritten since it was read."""
        for uuid, rev in self._stale_holders.items():
            key = self.keys.holder(uuid)
            self.store.txn([*self.guard, Compare(key, "mod", rev)], [Delete(key)])
        self._stale_holders = {}

    def snapshot(self) -> tuple[Snapshot, dict[str, str]]:
        """Read intents, hosts and guests (as placement sees them, from the fleet index:
        :meth:`_fleet`), settings, fences: the manager's whole input.

        Intents first: an agent takes a guest's fences before it reports its intent
        done, so a restart that finishes while the snapshot is read is either still in
        flight here or its fences are seen (never neither: that ordered it again). Reading
        them first also marks failed attempts in the settings read next."""
        view = self.view
        pending = self._pending()
        fleet = self._fleet(view)
        fences = dict(self._fences.values)
        self._dead_marks = {item.key.removeprefix(self.keys.dead): item.mod_revision
                            for item in view.list(self.keys.dead)[0]}
        dead = set(self._dead_marks)
        live = set(fleet.records)
        # only guests with a record on shared storage can be managed (``guest_kind``):
        # decide skips every other one, and they are most of a large fleet
        managed = {r.uuid for r in fleet.guests if r.fenced}
        by_uuid: dict[str, list[GuestRecord]] = {}
        for rec in fleet.guests:
            if rec.uuid in managed:
                by_uuid.setdefault(rec.uuid, []).append(rec)
        current = {o.fence.guest: o.fence.holder for o in fences.values()
                   if isinstance(o, Observed)}
        remembered = read_holders(view, self.keys)
        holders = round_holders(current, {g: h for g, (h, _) in remembered.items()}, live)
        registrations = {item.key.removeprefix(self.keys.machines): item.mod_revision
                         for item in view.list(self.keys.machines)[0]}
        self._stale_holders = stale_holders(remembered, current, registrations, live)
        views = [_view(recs, live, fleet, holders.get(uuid)) for uuid, recs in by_uuid.items()]
        history = {uuid: attempts(s.attempts, s.failed_on)
                   for uuid, s in ((u, fleet.settings.get(u)) for u in by_uuid) if s}
        self._host_fences = read_host_fences(view, self.keys)[0]
        with self._fence_lock:
            running = dict(self._fencing_now)
        snap = Snapshot(
            now=self.clock.wall(), hosts=fleet.hosts, guests=tuple(views), fences=fences,
            confirmed_dead=frozenset(dead), history=history, pending=pending,
            host_fences=self._host_fences,
            power_agents=frozenset(self._agents.values),
            storage_fencer=self.storage_fencer is not None, fencing_now=running,
            registrations=registrations,
            silent=self._silences(live))
        self._memo.sweep()  # forget deleted records
        return snap, {v.uuid: v.name for v in views}

    def _fleet(self, view: Store) -> FleetView:
        """The fleet from the index, after reading again what changed since the last
        round (everything when ``view`` is not the journaled mirror, or after it listed
        again), and the fence keys, fence agents and host settings the same way. Its
        ``guests`` are the records on shared storage only: the others count on their
        hosts' views, and the manager manages none of them."""
        changed = view.take_changed() if isinstance(view, MirrorStore) else None
        lister = self._lister(view)
        self._index.update(lister, changed)
        for keyed in self._keyed:
            keyed.update(lister, changed)
        draining = frozenset(h for h, c in self._hostconfs.values.items() if c.draining)
        hosts, draining, declared = live_hosts(view, self.keys, self._memo,
                                               frozenset(self._agents.values), draining)
        return FleetView(self._index.views(hosts, draining, declared),
                         {h.name: h for h in hosts}, self._index.fenced(),
                         self._index.settings, declared)

    def _audit(self, view: MirrorStore) -> None:
        """Check a slice of the fleet index, and every key of the fence, fence agent and
        host settings indexes (by revision), against the mirror (after the round acted:
        it never delays a decision); what differed is repaired and logged (not what
        changed since the round read it: the journal holds that for the next round)."""
        lister = self._lister(view)
        wrong = self._index.audit(lister, view.journaled)
        keys = [k.prefix + n for k in self._keyed for n in k.audit(lister, view.journaled)]
        if wrong or keys:
            self.index_repairs += len(wrong) + len(keys)
            log.warning("event=fleet_index_repaired hosts=%s keys=%s",
                        ",".join(wrong[:20]) or "-", ",".join(keys[:20]) or "-")

    @property
    def _keyed(self) -> tuple[KeyIndex[Any], ...]:
        return (self._fences, self._agents, self._hostconfs)

    @staticmethod
    def _lister(view: Store) -> Callable[[str], list[Item]]:
        return lambda prefix: view.list(prefix)[0]

    def _pending(self) -> dict[str, Pending]:
        pending = {}
        for item in self.view.list(self.keys.all_intents)[0]:
            try:
                intent = decode(Intent, item.key, item.value)
            except DecodeError:
                continue
            if not intent.finished:
                pending[intent.guest] = Pending(intent.guest, intent.host, intent.created)
            elif intent.by == self.by:
                log.info("event=restart_%s guest=%s host=%s message=%s", intent.state,
                         intent.name, intent.host, intent.message)
                self._note(f"{intent.name} on {intent.host}: {intent.message}")
                if intent.state != "failed" or self._attempt_failed(intent):
                    IntentClient(self.store, self.keys).collect(intent)  # intent list
        return pending

    @property
    def by(self) -> str:
        return f"manager:{self.name}"

    # -- carrying out --------------------------------------------------------

    def _act(self, action: Action, snap: Snapshot) -> bool:
        """Carry out one of ``decide``'s actions through its handler in ``_HANDLERS``;
        False when its write failed (the round skips that guest's later actions). An
        action with no handler is a bug: logged and raised (``TypeError``), never skipped.
        """
        handler = _HANDLERS.get(type(action))
        if handler is None:
            log.error("event=ha_unknown_action type=%s action=%r", type(action).__name__,
                      action)
            raise TypeError(f"the HA manager has no handler for {action!r}")
        if not isinstance(action, Blocked):
            self.blocked.pop(action.guest, None)
        return handler(self, action, snap)

    def _block(self, action: Blocked, _snap: Snapshot) -> bool:
        if self.blocked.get(action.guest) != action.reason:
            log.info("event=ha_blocked guest=%s reason=%s", action.name, action.reason)
            self.blocked[action.guest] = action.reason
        return True

    def _release_fences(self, action: ReleaseFences, _snap: Snapshot) -> bool:
        """Only while the host is still absent and the mark read is still there: a host
        that came back (or a withdrawn mark) makes the transaction fail."""
        absent = [Compare(self.keys.host(action.host), "create", 0),
                  Compare(self.keys.dead_host(action.host), "mod",
                          self._dead_marks.get(action.host, 0))]
        ok = run_plan(self.store, self.keys, action.plan, guard=[*self.guard, *absent])
        log.info("event=fences_released_for_dead_host guest=%s host=%s ok=%s",
                 action.name, action.host, ok)
        return ok

    def _mark_error(self, action: MarkError, _snap: Snapshot) -> bool:
        log.error("event=ha_error guest=%s reason=%s", action.name, action.reason)
        return self._update_settings(action.guest, action.name,
                                     lambda s: replace(s, error=action.reason))

    def _restart(self, action: Restart, snap: Snapshot) -> bool:
        """Write the start intent and record the attempt, in one guarded transaction
        (the guest's settings read afresh)."""
        compare, puts = self._restart_writes(
            action, snap, self.store.get(self.keys.guest_settings(action.guest)))
        ok = self.store.txn([*self.guard, compare], puts)
        if ok:
            self._restarted(action)
        return ok

    def _restart_batch(self, actions: Sequence[Restart], snap: Snapshot) -> None:
        """Write many restarts in few guarded transactions (:func:`batch.pack`), each
        guest's settings compared as the view holds them; a transaction that fails
        (someone changed a guest's settings meanwhile) is retried one guest at a time."""
        writes = [self._restart_writes(a, snap, self._held(self.keys.guest_settings(a.guest)))
                  for a in actions]
        costs = [batch.Cost(1, len(puts), sum(len(p.key) + len(p.value) for p in puts))
                 for _, puts in writes]
        for group in batch.pack(costs, self.txn_limits):
            if len(group) > 1 and self.store.txn(
                    [*self.guard, *(writes[i][0] for i in group)],
                    [p for i in group for p in writes[i][1]]):
                for i in group:
                    self.blocked.pop(actions[i].guest, None)
                    self._restarted(actions[i])
                continue
            for i in group:
                self._act(actions[i], snap)

    def _held(self, key: str) -> Item | None:
        """``key``'s item as the round's view holds it (the mirror: no round trip)."""
        return next((i for i in self.view.list(key)[0] if i.key == key), None)

    def _restart_writes(self, action: Restart, snap: Snapshot,
                        settings: Item | None) -> tuple[Compare, list[Put]]:
        """The compare and puts of one restart: the start intent, and the attempt recorded
        in the guest's ``settings`` (as read)."""
        # the intent's ``created`` is the attempt's time: a failed intent marks its attempt
        params = {"reason": action.reason, **({"fence": action.fence} if action.fence else {})}
        self._intent_ns = max(self._intent_ns + 1, time.time_ns())  # unique within a batch
        intent = Intent(id=f"{self._intent_ns:x}-ha", host=action.on_host, action="start",
                        guest=action.guest, name=action.name, created=snap.now, by=self.by,
                        params=params)
        attempt = [snap.now, 1.0 if action.relocated else 0.0]
        compare, put = self._settings_write(
            action.guest, action.name,
            lambda s: replace(s, attempts=[*s.attempts[-20:], attempt]), settings)
        return compare, [put, Put(self.keys.intent(action.on_host, intent.id), encode(intent))]

    def _restarted(self, action: Restart) -> None:
        log.info("event=ha_restart guest=%s on=%s from=%s reason=%s fence=%s",
                 action.name, action.on_host, action.from_host, action.reason,
                 action.fence or "-")
        self._note(f"restart {action.name} on {action.on_host}: {action.reason}"
                   + (f" (fenced by {action.fence})" if action.fence else ""))

    # -- fencing a lost host ----------------------------------------------------

    def _note_gone(self, action: NoteGone, _snap: Snapshot) -> bool:
        """Record when the host's lease was first seen gone, unless a record of this
        registration is there (another leader's, kept with its time)."""
        ok = self._change_host_fence(
            action.host, lambda r: note_lost(r, action.host, action.at, action.registration,
                                             action.lease_gone))
        if ok:
            log.info("event=host_lost host=%s registration=%s detection=%s", action.host,
                     action.registration, "lease_expired" if action.lease_gone else "suspected")
            if not action.lease_gone:
                self._note(f"suspect {action.host}: no heartbeat for "
                           f"{self.fencing.suspect_after:g} s")
        return ok

    def _revoke_lease(self, action: RevokeLease, _snap: Snapshot) -> bool:
        """Revoke fenced ``host``'s lease, only while it is the registration fenced."""
        machine = self.store.get(self.keys.machine(action.host))
        item = self.store.get(self.keys.host(action.host))
        if machine is None or machine.mod_revision != action.registration or \
                item is None or not item.lease:
            return True  # gone already, or a new life of the host: nothing to revoke
        try:
            self.store.revoke_lease(item.lease)
        except AuthError as exc:  # an old role: the lease expires by itself (not a step-down)
            log.error("event=host_lease_revoke_refused host=%s error=%s note=the manager role "
                      "needs write access to hosts/ and heartbeats/: run `gridtool registry "
                      "init` to repair it", action.host, " ".join(str(exc).split()))
            return False
        log.info("event=host_lease_revoked host=%s lease=%x detection=suspected",
                 action.host, item.lease)
        self._note(f"revoked {action.host}'s lease (suspected, fenced)")
        self._fenced_inline = True  # the lease's keys are gone: decide again at once
        return True

    def _forget_fence(self, action: ForgetFence, _snap: Snapshot) -> bool:
        self.store.txn(self.guard, [Delete(self.keys.host_fence(action.host))])
        log.info("event=host_fence_forgotten host=%s", action.host)
        return True

    def _fence_host(self, action: FenceHost, _snap: Snapshot) -> bool:
        """Start the fence (a thread, or inline when not ``threaded``); its result is
        written to the host's record when it ends."""
        with self._fence_lock:
            if action.host in self._fencing_now:
                return True
            self._fencing_now[action.host] = action.method
        log.info("event=host_fence_start host=%s method=%s volumes=%s", action.host,
                 action.method, ",".join(action.volumes) or "-")
        if self.threaded:
            threading.Thread(target=self._run_fence, args=(action,), daemon=True,
                             name=f"fence-{action.host}").start()
        else:
            self._run_fence(action)
            self._fenced_inline = True
        return True

    def _run_fence(self, action: FenceHost) -> None:
        try:
            change, ok, message = (self._power(action) if action.method is Method.POWER
                                   else self._storage(action))
            written = self._change_host_fence(action.host, change)
            level = logging.INFO if ok else logging.ERROR
            log.log(level, "event=host_fenced host=%s method=%s ok=%s recorded=%s message=%s",
                    action.host, action.method, ok, written, message)
            self._note(f"fence {action.host} by {action.method}: "
                       f"{'ok' if ok else 'FAILED'}: {message}")
        except (RegistryUnavailable, AuthError) as exc:
            log.warning("event=host_fence_unrecorded host=%s error=%s", action.host, exc)
        finally:
            with self._fence_lock:
                self._fencing_now.pop(action.host, None)
            self._wake.set()

    def _power(self, action: FenceHost) -> tuple[Callable[[HostFence], HostFence], bool, str]:
        outcome = self.power_fence(action.host)
        now = self.clock.wall()
        return (lambda r: replace(r, power=POWER_OFF if outcome.ok else POWER_FAILED,
                                  power_at=now, power_message=outcome.message),
                outcome.ok, outcome.message)

    def _storage(self, action: FenceHost) -> tuple[Callable[[HostFence], HostFence], bool, str]:
        assert self.storage_fencer is not None
        try:
            result = self.storage_fencer.preempt(action.host, action.volumes)
            results = {**{v: PREEMPTED for v in result.preempted},
                       **{v: UNSUPPORTED for v in result.unsupported},
                       **{v: REFUSED for v in result.refused}}
            message = "; ".join(f"{v}: {why}" for v, why in result.refused.items())
        except Exception as exc:  # a port's failure is a refused fence, never success
            results = {v: REFUSED for v in action.volumes}
            message = f"storage fencer failed: {exc}"
        missing = [v for v in action.volumes if v not in results]
        results.update({v: REFUSED for v in missing})
        message = message or ("preempted" if all(r == PREEMPTED for r in results.values())
                              else "not all volumes preempted")
        now = self.clock.wall()
        ok = all(results.get(v) == PREEMPTED for v in action.volumes)
        return (lambda r: replace(r, storage={**r.storage, **results}, storage_at=now,
                                  storage_message=message), ok, message)

    def _run_fence_agent(self, host: str) -> Outcome:
        conf = fenceagents.read(self.store, self.keys, host)
        if conf is None:
            return Outcome(False, f"no fence agent configured for {host}")
        return agentrun.power_off(conf, self.power_policy)

    def _change_host_fence(self, host: str, change: Callable[[HostFence], HostFence]) -> bool:
        """Write ``change(record)`` for ``host`` in one guarded transaction."""
        key = self.keys.host_fence(host)
        item = self.store.get(key)
        try:
            current = decode(HostFence, key, item.value) if item else None
        except DecodeError:
            current = None
        base = current or HostFence(host, self.clock.wall())
        compare = Compare(key, "mod", item.mod_revision) if item else Compare(key, "create", 0)
        record = change(base)
        ok = self.store.txn([*self.guard, compare], [Put(key, encode(record))])
        if ok:  # known before the next snapshot reads it (``_until_next``: its grace)
            self._host_fences = {**self._host_fences, host: record}
        return ok

    def _update_settings(self, uuid: str, name: str,
                         change: Callable[[GuestSettings], GuestSettings],
                         extra: Sequence[Put] = ()) -> bool:
        """Write ``change(settings)`` and the ``extra`` puts in one guarded transaction."""
        compare, put = self._settings_write(uuid, name, change,
                                            self.store.get(self.keys.guest_settings(uuid)))
        return self.store.txn([*self.guard, compare], [put, *extra])

    def _settings_write(self, uuid: str, name: str,
                        change: Callable[[GuestSettings], GuestSettings],
                        item: Item | None) -> tuple[Compare, Put]:
        """The put of ``change(settings)``, compared against ``item`` (as read)."""
        key = self.keys.guest_settings(uuid)
        current = (decode(GuestSettings, key, item.value) if item
                   else GuestSettings(uuid, name))
        compare = Compare(key, "mod", item.mod_revision) if item else Compare(key, "create", 0)
        return compare, Put(key, encode(change(current)))

    def _attempt_failed(self, intent: Intent) -> bool:
        """Mark the restart attempt of a failed intent as failed (it does not count
        against the restart limit; the next try backs off); False if the write failed."""
        def mark(settings: GuestSettings) -> GuestSettings:
            failed_on = sorted({**settings.failed_on, intent.host: intent.created}.items(),
                               key=lambda item: item[1])[-8:]
            return replace(settings, attempts=[
                [a[0], a[1], 1.0] if a[0] == intent.created else a
                for a in settings.attempts], failed_on=dict(failed_on))

        return self._update_settings(intent.guest, intent.name, mark)

    def _note(self, line: str) -> None:
        self.recent = [*self.recent, line][-10:]

    def _fence_summary(self) -> dict[str, str]:
        """Each lost host's fence, in a few words (``manager status``)."""
        with self._fence_lock:
            running = dict(self._fencing_now)
        summary = {}
        for host, rec in sorted(self._host_fences.items()):
            summary[host] = {
                "failed": f"FAILED: {rec.failed}",
                "power": f"power: {rec.power_message}",
                "storage": "storage: " + ", ".join(f"{v} {r}" for v, r in
                                                   sorted(rec.storage.items())),
                "waiting": f"lost since {rec.gone_since:.0f}; timed grace "
                           f"{self.fencing.grace:g} s",
            }[rec.state] if host not in running else f"fencing by {running[host]}"
            if rec.detection == SUSPECTED:
                summary[host] += " (suspected before its lease expired)"
        return summary

    def _publish_status(self) -> None:
        status = ManagerStatus(self.name, self.since, self.clock.wall(), self.recent,
                               {self.names.get(k, k): v for k, v in self.blocked.items()},
                               self._fence_summary())
        self.store.txn(self.guard, [Put(self.keys.manager_status, encode(status), self.lease)])


#: One handler per kind of :data:`gridtool.ha.rules.Action` (a closed union).
_HANDLERS: dict[type, Callable[[Manager, Any, Snapshot], bool]] = {
    Blocked: Manager._block,
    Restart: Manager._restart,
    ReleaseFences: Manager._release_fences,
    MarkError: Manager._mark_error,
    NoteGone: Manager._note_gone,
    FenceHost: Manager._fence_host,
    ForgetFence: Manager._forget_fence,
    RevokeLease: Manager._revoke_lease,
}


def _view(records: list[GuestRecord], live: set[str], fleet: FleetView,
          holder: str | None) -> GuestView:
    """One guest from its records on several hosts (a shared-storage guest is often
    defined on many): the fence holder's record wins, then an active one, then a live one;
    what it needs from a host is placement's reading of that record (``fleet.needs``).
    """
    def rank(r: GuestRecord) -> tuple[bool, bool, bool, float]:
        return (r.host == holder, r.state in ACTIVE_STATES, r.host in live, r.updated_at)

    rec = max(records, key=rank)
    if holder is not None and holder not in live:  # it may run there, reported or not
        rec = replace(rec, host=holder)
    settings = fleet.settings.get(rec.uuid)
    kind = guest_kind(any(r.fenced for r in records), bool(settings and settings.ha))
    if settings is not None:
        desired = settings.desired
    else:  # a held fence means it ran when last known, even if no report said so yet
        running = any(r.state in ACTIVE_STATES for r in records) or holder is not None
        desired = "running" if running else "stopped"
    state = "error" if settings is not None and settings.error else rec.state
    volumes = tuple(sorted({v for r in records for v in r.volumes}))
    return GuestView(rec.uuid, rec.name, rec.host, state, rec.memory_mib, kind, volumes,
                     desired, fleet.needs(rec))


def _set_on(cause: threading.Event, effect: threading.Event) -> None:
    """Set ``effect`` once ``cause`` is set."""
    cause.wait()
    effect.set()


def mirrored(keys: Keys) -> tuple[str, ...]:
    """The prefixes a manager round reads (what its mirror keeps)."""
    return (keys.hosts, keys.guests, keys.settings, keys.hostconfs, keys.fence_agents,
            keys.fences, keys.holders, keys.all_intents, keys.dead, keys.host_fences,
            keys.machines, keys.heartbeats)


def _cancel(watches: list[Watch]) -> list[Watch]:
    """Cancel every watch; the empty list that replaces them."""
    for watch in watches:
        watch.cancel()
    return []
