"""Placement views and guest migration: the shell around ``placement`` and ``rebalance``.

**Views.** Registry records become the allocator's :class:`HostView` / :class:`GuestNeeds`
(:func:`read_fleet`):

* a host (one per live host record): total and free memory and CPUs from its record;
  vCPUs allocated = the sum of the vCPUs of its active guests (running, paused, ...);
  its labels and the ``storage`` ids its agent declares; draining from ``hostconf/<host>``;
  its active guests, each with its anti-affinity group from ``settings/<uuid>``;
* a guest's storage needs (:func:`storage_needs`), kept simple: every storage id some host
  declares that is a prefix of one of the guest's shared volume ids (``aoe-e9.`` for
  ``aoe-e9.1``; declare ids that end at a separator), and nothing at all when no host
  declares storage. A guest that is not persistent cannot be cold-migrated: not movable.

**Cold migration** (:class:`Migrator`), phase by phase, each phase one intent followed
through a watch:

1. ``define`` on the destination, from the registry's copy of the XML (``domains/<uuid>``,
   kept by agents for fenced guests): a destination that cannot take the definition
   fails the migration before anything stopped. An unfenced guest has no copy yet: the
   source publishes it in phase 2 and the define runs right after it.
2. ``stop`` on the source with ``handover_to``: after the guest is off, the source agent
   passes every fence to the destination in ONE transaction comparing the holder (HA
   fences go under the destination host's lease) instead of releasing it.
3. ``start`` on the destination: its agent finds the fences already its own (the fencing
   token grows) and starts the guest. Skipped for a guest that was not running when the
   source agent stopped it (its ``stop`` intent's result ``was_running``, not the record
   the move began from, which can be a moment behind a start or a stop).
4. ``undefine`` on the source.

Any failure ends in a safe state, which the result names (:class:`EndState`): the guest
runs on the source with its fence (nothing changed, or rolled back: the destination hands
the fences back with its own ``stop``/``handover_to`` and the source starts it again), or
it is stopped with its fences released or handed back. A destination that stops answering
after it was handed the fences may have started the guest: then the source never starts
it again while the destination holds a fence (HA fences vanish with its lease, exactly
as for an HA restart), and the result says so (``unknown``). A guest is never left
running on two hosts. Live migration (:func:`live_refusal`, :meth:`Migrator._live`) works
between QEMU hosts (the test driver never will): ``receive`` on the destination, then
``migrate`` on the source (:meth:`Migrator._live`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import Any

from gridtool.errors import Conflict, NotFound, OperationFailed, Timeout
from gridtool.fencing.rules import Observed
from gridtool.fencing.shell import read_fences
from gridtool.placement.index import host_view
from gridtool.placement.rules import (
    DEFAULT_POLICY,
    GuestNeeds,
    HostView,
    Placement,
    PlacementPolicy,
    place,
    remove_guest,
)
from gridtool.registry import fenceagents, hostconf
from gridtool.registry import settings as guest_settings
from gridtool.registry.intents import IntentClient, who
from gridtool.registry.keys import Keys
from gridtool.registry.mirror import Memo, derive_all
from gridtool.registry.model import ACTIVE_STATES, DecodeError, GuestRecord, HostRecord
from gridtool.registry.model import decode as decode_record
from gridtool.registry.records import DomainDefinition, GuestSettings, Intent, decode
from gridtool.registry.store import Compare, Delete, Item, Store

log = logging.getLogger("gridtool.placement.shell")

#: Hypervisors gridtool can live-migrate between (the same one on both ends): QEMU through
#: libvirt peer-to-peer (``agents/livemigrate.py``); the test driver cannot live-migrate.
#: Xen (libxl) is refused (:data:`XEN_LIVE_REFUSAL`): the agent's side is built
#: (``livemigrate.migration_flags``, ``reach``) and the destination's fence hook judges
#: libxl's ``migrate begin`` (``rules.incoming_named``), but libxl's live save failed.
LIVE_HYPERVISORS: frozenset[str] = frozenset({"qemu"})
#: Why: tried between two real dom0s (issue 17), the source's libxl could not start the
#: live save ("xc: Failed to enable logdirty: 95,22,0 (22 = Invalid argument)", then
#: "Failed to send migration data to destination host"); the guest kept running on the
#: source with its fence. A handover through libxl was never seen to complete.
XEN_LIVE_REFUSAL = ("live migration between xen hosts is refused: libxl's live save fails "
                    "on these dom0s (xc: Failed to enable logdirty): use --paused (libxl's "
                    "non-live migration: the guest is suspended while its memory is sent) "
                    "or --cold")
#: Hypervisors gridtool can migrate with the guest suspended while all its memory is sent
#: (libvirt without ``VIR_MIGRATE_LIVE``; the same intents and fence handover as a live
#: one): Xen, whose libxl non-live save needs no log-dirty mode. QEMU has live migration.
PAUSED_HYPERVISORS: frozenset[str] = frozenset({"xen"})
#: The migration modes, best first (the default is the first one possible).
MODES = ("live", "paused", "cold")


# --------------------------------------------------------------------------- views


def storage_needs(volumes: Iterable[str], declared: Iterable[str]) -> frozenset[str]:
    """Storage ids a guest with shared ``volumes`` needs: every declared id that prefixes
    one of its volume ids (none when no host declares storage)."""
    volumes = tuple(volumes)
    return frozenset(s for s in declared if any(v.startswith(s) for v in volumes))


@dataclass(frozen=True)
class FleetView:
    """The registry as the allocator sees it, plus the records behind it."""

    hosts: tuple[HostView, ...]
    records: dict[str, HostRecord]  # live hosts by name
    guests: tuple[GuestRecord, ...]  # every guest record, on any host
    settings: dict[str, GuestSettings]  # by uuid
    declared: frozenset[str]  # every storage id some host declares

    def needs(self, rec: GuestRecord) -> GuestNeeds:
        """What ``rec`` needs from a host."""
        return guest_needs(rec, self.settings.get(rec.uuid), self.declared)

    def host(self, name: str) -> HostView:
        for h in self.hosts:
            if h.name == name:
                return h
        raise NotFound(f"unknown host {name!r} (not in the registry: no live agent)")

    def without(self, rec: GuestRecord) -> tuple[HostView, ...]:
        """The hosts with ``rec`` taken off its host (when it occupies it)."""
        return tuple(remove_guest(h, rec.name) if h.name == rec.host
                     and any(g.name == rec.name for g in h.guests) else h for h in self.hosts)

    def record(self, host: str, name: str) -> GuestRecord:
        """The active guest ``name`` on ``host`` (what a planned move refers to)."""
        for g in self.guests:
            if g.host == host and g.name == name and g.state in ACTIVE_STATES:
                return g
        raise NotFound(f"guest {name} is not active on {host}")


def guest_needs(rec: GuestRecord, settings: GuestSettings | None,
                declared: Iterable[str]) -> GuestNeeds:
    """A guest record as the allocator's :class:`GuestNeeds`."""
    group = settings.anti_affinity if settings is not None else ""
    return GuestNeeds(rec.name, rec.memory_mib, rec.vcpus,
                      storage=storage_needs(rec.volumes, declared),
                      anti_affinity=group or None, movable=rec.persistent,
                      ha=settings is not None and settings.ha and rec.fenced)


def read_fleet(store: Store, keys: Keys, memo: Memo | None = None) -> FleetView:
    """Read hosts, guests, guest settings and host settings into a :class:`FleetView`;
    ``memo`` (kept between calls: the manager's) decodes only the records that changed
    and keeps each guest's needs while its record and settings stay."""
    memo = memo or Memo()
    hosts, draining, declared = read_hosts(store, keys, memo)
    guests, _ = derive_all(store, keys.guests, partial(_record, GuestRecord), memo)
    settings = guest_settings.read_all(store, keys)
    by_host: dict[str, list[GuestRecord]] = {}
    for g in guests:
        if g.state in ACTIVE_STATES:
            by_host.setdefault(g.host, []).append(g)
    views = []
    for h in sorted(hosts, key=lambda h: h.name):
        on = sorted(by_host.get(h.name, []), key=lambda g: g.name)
        views.append(host_view(h, h.name in draining, tuple(
            _needs(memo, g, settings.get(g.uuid), declared) for g in on)))
    return FleetView(tuple(views), {h.name: h for h in hosts}, tuple(guests), settings,
                     declared)


def read_hosts(store: Store, keys: Keys, memo: Memo,
               ) -> tuple[list[HostRecord], frozenset[str], frozenset[str]]:
    """The live hosts' records (``power`` in their fencing when a fence agent is
    configured), the hosts marked draining, and every storage id some host declares."""
    return live_hosts(store, keys, memo, frozenset(fenceagents.read_all(store, keys)),
                      hostconf.draining_hosts(store, keys))


def live_hosts(store: Store, keys: Keys, memo: Memo, powered: frozenset[str],
               draining: frozenset[str],
               ) -> tuple[list[HostRecord], frozenset[str], frozenset[str]]:
    """:func:`read_hosts` given the hosts with a fence agent (``powered``) and those
    marked ``draining`` (the manager keeps both between rounds)."""
    hosts = [fenceagents.with_fencing(h, powered)
             for h in derive_all(store, keys.hosts, partial(_record, HostRecord), memo)[0]]
    return hosts, draining, frozenset(s for h in hosts for s in h.storage)


def _record(cls: type, item: Item) -> Any:
    return decode_record(cls, item.key, item.value)


def _needs(memo: Memo, rec: GuestRecord, settings: GuestSettings | None,
           declared: frozenset[str]) -> GuestNeeds:
    """:func:`guest_needs`, kept while what it depends on stays."""
    return memo.derive(f"needs {rec.host}/{rec.uuid}", (rec, settings, declared),
                       lambda: guest_needs(rec, settings, declared))


def current_record(records: list[GuestRecord], live: Iterable[str]) -> GuestRecord:
    """The record a guest is moved from: the one active on a live host; a stopped guest
    only when a single live host defines it."""
    live = set(live)
    alive = [r for r in records if r.host in live]
    name = records[0].name
    if not alive:
        hosts = ", ".join(sorted({r.host for r in records}))
        raise Conflict(f"guest {name} is only on hosts that are gone ({hosts})")
    active = [r for r in alive if r.state in ACTIVE_STATES]
    if len(active) > 1:
        raise Conflict(f"guest {name} is active on {', '.join(r.host for r in active)}")
    if active:
        return active[0]
    if len(alive) > 1:
        raise Conflict(f"guest {name} is stopped and defined on "
                       f"{', '.join(sorted(r.host for r in alive))}: start it where you "
                       f"want it (gridtool guest start {name} --on HOST)")
    return alive[0]


def placement_for(fleet: FleetView, rec: GuestRecord | None, needs: GuestNeeds,
                  policy: PlacementPolicy = DEFAULT_POLICY) -> tuple[Placement, str | None]:
    """Where ``needs`` goes, and the host it occupies now (excluded from the choice).

    A guest active on a host is taken off it first (its resources freed), so the other
    hosts are judged as they would be after a move.
    """
    current = rec.host if rec is not None and rec.state in ACTIVE_STATES else None
    hosts = fleet.without(rec) if rec is not None else fleet.hosts
    choice = place(needs, [h for h in hosts if h.name != current], policy)
    return Placement(needs, choice.host, hosts, policy), current


# --------------------------------------------------------------------------- live or cold


def live_refusal(source: HostRecord, target: HostRecord) -> str | None:
    """Why ``source`` -> ``target`` cannot be a live migration (None: it can).

    The seam for live migration: both ends must run the same hypervisor and gridtool must
    know how to live-migrate it (:data:`LIVE_HYPERVISORS`).
    """
    if "test" in (source.hypervisor, target.hypervisor):
        return (f"the test driver cannot live-migrate ({source.name}: {source.hypervisor}, "
                f"{target.name}: {target.hypervisor}): use --cold")
    if source.hypervisor != target.hypervisor:
        return (f"{source.name} runs {source.hypervisor} and {target.name} runs "
                f"{target.hypervisor}: live migration needs the same hypervisor (use --cold)")
    if source.hypervisor == "xen":
        return XEN_LIVE_REFUSAL
    if source.hypervisor not in LIVE_HYPERVISORS:
        return (f"live migration between {source.hypervisor} hosts is not built yet: "
                "use --cold")
    return None


def paused_refusal(source: HostRecord, target: HostRecord) -> str | None:
    """Why ``source`` -> ``target`` cannot be a paused (non-live) migration (None: it can):
    both ends must run the same hypervisor, one of :data:`PAUSED_HYPERVISORS`."""
    if source.hypervisor == target.hypervisor and source.hypervisor in PAUSED_HYPERVISORS:
        return None
    return (f"a paused migration is built between xen hosts only ({source.name}: "
            f"{source.hypervisor}, {target.name}: {target.hypervisor}): use "
            + ("--live" if live_refusal(source, target) is None else "--cold"))


def choose_mode(source: HostRecord, target: HostRecord, asked: str | None) -> str:
    """``live``, ``paused`` or ``cold`` (:data:`MODES`): the one ``asked`` for (Conflict
    naming why when it is impossible), else the first one possible."""
    refusals = {"live": live_refusal(source, target),
                "paused": paused_refusal(source, target), "cold": None}
    if asked is None:
        return next(mode for mode in MODES if refusals[mode] is None)
    why = refusals[asked]
    if why:
        verb = "live-migrate" if asked == "live" else f"migrate {asked}"
        raise Conflict(f"cannot {verb} from {source.name} to {target.name}: {why}")
    return asked


#: How long a live migration's transfer may take beyond the intent timeout.
LIVE_TRANSFER_S = 600.0


def job_progress(remaining: int, total: int, width: int = 20) -> str:
    """A libvirt migration job's memory progress as one line with a text bar."""
    total = max(total, 1)
    done = min(max(total - remaining, 0), total)
    filled = round(width * done / total)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {100 * done // total} % of memory "
            f"sent, {remaining / 2**20:.0f} of {total / 2**20:.0f} MiB remaining")


# --------------------------------------------------------------------------- migration


def stopped_as_found(rec: GuestRecord, result: dict[str, Any]) -> GuestRecord:
    """``rec`` as the source agent found the guest when its ``stop`` ran (``result``:
    ``was_running``): a record read just after a start may still say ``shutoff`` (seen
    on Xen under TCG: the guest then arrived defined but not started), or still
    ``running`` just after a stop. Kept as it is when the agent did not say (an older
    agent)."""
    found = result.get("was_running")
    if not isinstance(found, bool) or found == (rec.state in ACTIVE_STATES):
        return rec
    return replace(rec, state="running" if found else "shutoff")


class EndState(StrEnum):
    """Where a migration left the guest."""

    MOVED = "moved"  # on the destination (running if it was running)
    ON_SOURCE = "on-source"  # running on the source with its fence (unchanged/rolled back)
    STOPPED = "stopped"  # running nowhere; the message says where its fences are
    UNKNOWN = "unknown"  # a host stopped answering; its fences keep it from running twice


@dataclass(frozen=True)
class PhaseEvent:
    """Progress of one phase: ``state`` is pending/running (under way), done or failed."""

    phase: str
    host: str
    state: str
    message: str = ""
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


@dataclass
class MigrationResult:
    """The outcome of one migration, with the time each phase took."""

    guest: str
    uuid: str
    source: str
    target: str
    mode: str
    state: EndState = EndState.ON_SOURCE
    message: str = ""
    phases: list[PhaseEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state is EndState.MOVED

    def to_dict(self) -> dict[str, Any]:
        return {"guest": self.guest, "uuid": self.uuid, "from": self.source,
                "to": self.target, "mode": self.mode, "state": self.state.value,
                "ok": self.ok, "message": self.message, "seconds": round(self.seconds, 3),
                "warnings": self.warnings,
                "phases": [{"phase": p.phase, "host": p.host, "state": p.state,
                            "seconds": round(p.seconds, 3), "message": p.message}
                           for p in self.phases]}


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    message: str
    lost: bool = False  # no outcome: the host stopped answering (intent withdrawn)
    result: dict[str, Any] = field(default_factory=dict)  # the agent's params["result"]


class Migrator:
    """Moves guests between hosts through intents; one migration at a time per call."""

    def __init__(self, store: Store, keys: Keys, shutdown_timeout: float = 60.0,
                 intent_timeout: float = 60.0,
                 on_event: Callable[[PhaseEvent], None] | None = None,
                 bandwidth_mib: int | None = None) -> None:
        self.store = store
        self.keys = keys
        self.client = IntentClient(store, keys)
        self.shutdown_timeout = shutdown_timeout
        self.intent_timeout = intent_timeout
        self.on_event = on_event or (lambda _ev: None)
        self.bandwidth_mib = bandwidth_mib  # live transfers' cap in MiB/s (None: none)
        self.by = who()

    # -- the phases ----------------------------------------------------------

    def migrate(self, rec: GuestRecord, target: str, mode: str = "cold",
                follow_cleanup: bool = True) -> MigrationResult:
        """Move ``rec`` (its record on the source host) to ``target``; never raises for
        a failed phase: the result names the state the guest ended in."""
        result = MigrationResult(rec.name, rec.uuid, rec.host, target, mode)
        start = time.monotonic()
        try:
            if mode in ("live", "paused") and rec.state in ACTIVE_STATES:
                self._live(rec, target, result, live=mode == "live")
            else:  # a stopped guest has no memory to move live: a cold move is the same
                result.mode = "cold"
                self._cold(rec, target, result, follow_cleanup)
        finally:
            result.seconds = time.monotonic() - start
        return result

    def _check_ends(self, source: str, target: str, name: str) -> None:
        """Both ends must be distinct live hosts."""
        if target == source:
            raise Conflict(f"{name} is already on {target}")
        for host in (source, target):
            if not self._alive(host):
                raise NotFound(f"unknown host {host!r} (not in the registry: no live agent)")

    def _cold(self, rec: GuestRecord, target: str, result: MigrationResult,
              follow_cleanup: bool) -> None:
        source, name = rec.host, rec.name
        self._check_ends(source, target, name)
        if not rec.persistent:
            raise Conflict(f"{name} is a transient guest on {source}: it has no definition "
                           "to move (define it persistently first)")
        running = rec.state in ACTIVE_STATES
        was_defined = self.store.get(self.keys.guest(target, rec.uuid)) is not None
        made_copy = False  # we defined it on the target (undo on failure)
        here = f"{name} still runs on {source}" if running else f"{name} stays on {source}"
        xml = self._definition(rec.uuid)
        if xml is not None:  # 1. define on the target before anything stops
            done = self._step(result, "define", target, "define", {"xml": xml})
            if not done.ok:
                self._end(result, EndState.ON_SOURCE if running else EndState.STOPPED,
                          f"define on {target} failed ({done.message}): {here}")
                return
            made_copy = not was_defined
        # 2. stop on the source, handing its fences to the target
        done = self._step(result, "stop", source, "stop",
                          {"timeout": self.shutdown_timeout, "handover_to": target},
                          timeout=self.shutdown_timeout + self.intent_timeout)
        if done.lost:
            self._undo_copy(result, rec, target, made_copy)
            self._end(result, EndState.UNKNOWN,
                      f"{source} did not finish stopping {name} ({done.message}): it stays "
                      f"with {source}, running or not; "
                      + ("its fences keep it from running anywhere else" if rec.fenced
                         else "check it there"))
            return
        if not done.ok:
            self._back_to_source(result, rec, target, f"stop on {source} failed "
                                 f"({done.message})", made_copy, hand_back=False)
            return
        rec = stopped_as_found(rec, done.result)
        running = rec.state in ACTIVE_STATES
        if xml is None:  # 1'. an unfenced guest: its XML is in the registry only now
            xml = self._definition(rec.uuid)
            done = (self._step(result, "define", target, "define", {"xml": xml}) if xml
                    else _Outcome(False, f"{source} published no definition of {name}"))
            if not done.ok:
                self._back_to_source(result, rec, target, f"define on {target} failed "
                                     f"({done.message})", False, hand_back=False)
                return
            made_copy = not was_defined
        if running:  # 3. start on the target: its fences are already its own
            done = self._step(result, "start", target, "start")
            if not done.ok:
                self._start_failed(result, rec, target, done, made_copy)
                return
        # 4. undefine on the source
        self._undefine(result, rec, source, follow_cleanup)
        self._forget_copy(rec)
        token = self._token(rec)
        self._end(result, EndState.MOVED,
                  f"{name} {'runs' if running else 'is defined'} on {target}"
                  + (f" (fence token {token})" if token else ""))

    def _live(self, rec: GuestRecord, target: str, result: MigrationResult,
              live: bool = True) -> None:
        """Live migration: a ``receive`` intent on the destination (its fence hook then
        accepts this one incoming migration), then a ``migrate`` intent on the source,
        whose agent runs libvirt's peer-to-peer migration and hands the fences over at
        switchover (the guest is paused on both ends meanwhile). A failure leaves it
        running on the source with its fences (libvirt aborts the job, resumes it there).
        Not ``live`` (mode ``paused``): the same, with the guest suspended on the source
        while all its memory is sent (the intent's ``live: false``)."""
        source, name = rec.host, rec.name
        self._check_ends(source, target, name)
        # the guest's LUNs as the source's record has them: the destination's etcd user
        # may not read another host's records (agents.livemigrate.incoming_guest)
        # the destination accepts it as long as this waits for the source's migrate
        # intent, which may wait behind other intents in the source agent's queue
        migrate_wait = self.intent_timeout + LIVE_TRANSFER_S
        done = self._step(result, "receive", target, "receive", {
            "from": source, "volumes": list(rec.volumes),
            "unidentified": list(rec.unidentified),
            "expect_s": migrate_wait + self.intent_timeout})
        if not done.ok:  # nothing moved: the destination cannot accept it
            self._end(result, EndState.ON_SOURCE, f"{target} cannot receive {name} "
                      f"({done.message}): {name} still runs on {source}")
            return
        params: dict[str, object] = {"to": target}
        if not live:
            params["live"] = False
        if self.bandwidth_mib:
            params["bandwidth_mib"] = self.bandwidth_mib
        done = self._step(result, "migrate", source, "migrate", params, timeout=migrate_wait)
        if done.ok:
            token = self._token(rec)
            self._end(result, EndState.MOVED, f"{name} runs on {target}"
                      + (f" (fence token {token})" if token else ""))
        elif done.lost:
            self._end(result, EndState.UNKNOWN,
                      f"{source} did not finish migrating {name} ({done.message}); "
                      + self._fence_text(rec))
        else:
            holders = set(self._holders(rec).values()) if rec.fenced else {source}
            state = EndState.ON_SOURCE if holders == {source} and "still runs" in \
                done.message else EndState.UNKNOWN
            self._end(result, state, done.message)

    def _start_failed(self, result: MigrationResult, rec: GuestRecord, target: str,
                      done: _Outcome, made_copy: bool) -> None:
        source, name = rec.host, rec.name
        why = f"start on {target} failed ({done.message})"
        if not done.lost:
            self._back_to_source(result, rec, target, why, made_copy, hand_back=True)
            return
        # The target stopped answering: it may have started the guest before it did.
        holders = self._holders(rec)
        if not rec.fenced:
            self._forget_copy(rec)
            self._end(result, EndState.UNKNOWN,
                      f"{why}; {name} has no fence, so it may be running on {target}: not "
                      f"starting it on {source} again; look at {target}")
            return
        if target in holders.values():
            self._end(result, EndState.UNKNOWN,
                      f"{why}; {name} is stopped on {source} and its fence is held by "
                      f"{target}, where it may be running: it starts again once {target}'s "
                      f"agent is back (or after 'gridtool host confirm-dead {target}')")
            return
        self._back_to_source(result, rec, target, why, False, hand_back=False)

    def _back_to_source(self, result: MigrationResult, rec: GuestRecord, target: str,
                        why: str, made_copy: bool, hand_back: bool) -> None:
        """Roll back: the target hands the fences back (its stop), the source starts the
        guest again (if it was running), the target's copy goes."""
        source, name = rec.host, rec.name
        if hand_back:
            back = self._step(result, "rollback", target, "stop",
                              {"timeout": self.shutdown_timeout, "handover_to": source},
                              timeout=self.shutdown_timeout + self.intent_timeout)
            if not back.ok:
                result.warnings.append(f"handing the fences back from {target} failed: "
                                       f"{back.message}")
        if rec.state not in ACTIVE_STATES:
            self._undo_copy(result, rec, target, made_copy)
            self._forget_copy(rec)
            self._end(result, EndState.STOPPED, f"{why}: {name} stays defined on {source}; "
                      + self._fence_text(rec))
            return
        again = self._step(result, "rollback", source, "start")
        if again.ok:
            self._undo_copy(result, rec, target, made_copy)
            self._forget_copy(rec)
            self._end(result, EndState.ON_SOURCE,
                      f"{why}: rolled back, {name} runs on {source} with its fence")
            return
        self._undo_copy(result, rec, target, made_copy)
        self._forget_copy(rec)
        state = EndState.UNKNOWN if again.lost else EndState.STOPPED
        self._end(result, state, f"{why}, and starting it on {source} again failed "
                  f"({again.message}): {name} is stopped; " + self._fence_text(rec))

    def _undefine(self, result: MigrationResult, rec: GuestRecord, host: str,
                  follow: bool) -> None:
        if not follow:
            intent = self.client.submit(host, "undefine", rec.uuid, rec.name, by=self.by)
            self._emit(result, PhaseEvent("undefine", host, "done", f"asked {host} "
                                          f"(intent {intent.id})"))
            return
        done = self._step(result, "undefine", host, "undefine")
        if not done.ok:
            result.warnings.append(f"undefine on {host} failed: {done.message}")

    def _undo_copy(self, result: MigrationResult, rec: GuestRecord, target: str,
                   made_copy: bool) -> None:
        """Undefine the copy this migration defined on the target (best effort)."""
        if made_copy and self._alive(target):
            done = self._step(result, "cleanup", target, "undefine")
            if not done.ok:
                result.warnings.append(f"undefine of the copy on {target} failed: "
                                       f"{done.message}")

    # -- helpers -------------------------------------------------------------

    def _step(self, result: MigrationResult, phase: str, host: str, action: str,
              params: dict[str, Any] | None = None, timeout: float | None = None) -> _Outcome:
        """Submit one intent and follow it; a host that stops answering (or a timeout)
        withdraws it so that it is not carried out later."""
        began = time.monotonic()
        rec_name, uuid = result.guest, result.uuid
        self._emit(result, PhaseEvent(phase, host, "pending"), record=False)
        intent = self.client.submit(host, action, uuid, rec_name, params, by=self.by)

        def progress(i: Intent) -> None:
            if not i.finished:
                self._emit(result, PhaseEvent(phase, host, i.state, i.message,
                                              seconds=time.monotonic() - began), record=False)

        try:
            done = self.client.wait(intent, timeout or self.intent_timeout, on_state=progress,
                                    host_alive=lambda: self._alive(host), raise_failed=False)
            outcome = _Outcome(done.state == "done", done.message,
                               result=done.params.get("result") or {})
        except (OperationFailed, Timeout) as exc:
            self._withdraw(intent)
            outcome = _Outcome(False, str(exc), lost=True)
        self._emit(result, PhaseEvent(phase, host, "done" if outcome.ok else "failed",
                                      outcome.message, time.monotonic() - began))
        return outcome

    def _emit(self, result: MigrationResult, event: PhaseEvent, record: bool = True) -> None:
        if record:
            result.phases.append(event)
        self.on_event(event)

    def _end(self, result: MigrationResult, state: EndState, message: str) -> None:
        result.state, result.message = state, message

    def _alive(self, host: str) -> bool:
        return self.store.get(self.keys.host(host)) is not None

    def _withdraw(self, intent: Intent) -> None:
        """Delete an intent nobody carried out (only if it is still unfinished)."""
        key = self.keys.intent(intent.host, intent.id)
        item = self.store.get(key)
        if item is None:
            return
        try:
            if decode(Intent, key, item.value).finished:
                self.store.delete(key)
                return
        except DecodeError:
            pass
        self.store.txn([Compare(key, "mod", item.mod_revision)], [Delete(key)])

    def _definition(self, uuid: str) -> str | None:
        item = self.store.get(self.keys.domain(uuid))
        if item is None:
            return None
        try:
            return decode(DomainDefinition, item.key, item.value).xml
        except DecodeError:
            return None

    def _forget_copy(self, rec: GuestRecord) -> None:
        """An unfenced guest's XML was in the registry only for the move: remove it."""
        if not rec.fenced:
            self.store.delete(self.keys.domain(rec.uuid))

    def _holders(self, rec: GuestRecord) -> dict[str, str | None]:
        """Volume -> the host holding its fence (None: absent or unreadable)."""
        return {volume: obs.fence.holder if isinstance(obs, Observed) else None
                for volume, obs in read_fences(self.store, self.keys, rec.volumes).items()}

    def _token(self, rec: GuestRecord) -> int:
        return max((obs.mod_revision for obs in
                    read_fences(self.store, self.keys, rec.volumes).values()
                    if obs is not None), default=0)

    def _fence_text(self, rec: GuestRecord) -> str:
        if not rec.fenced:
            return "it has no fence"
        holders = self._holders(rec)
        held = sorted({h for h in holders.values() if h})
        if not held:
            return "its fences are released"
        return f"its fences are held by {', '.join(held)}"
