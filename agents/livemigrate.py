"""The source agent's live migration (the ``migrate`` intent), fences handed over at
switchover.

libvirt migrates peer-to-peer to the destination daemon (LIVE | PEER2PEER |
PERSIST_DEST | UNDEFINE_SOURCE, ``migrate_uri tcp://<destination address>``). A watcher
hands every fence to the destination in ONE transaction comparing the holder
(``Fencer.handover``) the moment libvirt pauses the guest on the source for the final
copy: the guest runs nowhere while its fences move (the destination resumes it only
after that copy). The destination's fence hook accepts the incoming guest only after a
``receive`` intent there (:func:`receive`, ``agents.hooksock``), and its agent stops an
incoming copy that runs without its fences at once (``fencing.migration.judge_arrival``).

Every handover outcome is explicit (``fencing.migration.Handover``): done, refused, or
unknown after an etcd or auth error (the transaction may have committed); the watcher
never dies of one. A handover that failed at switchover aborts the libvirt job if it
still can. When libvirt completed the migration anyway, the handover is tried again
until :data:`HANDOVER_PATIENCE_S` runs out (the destination keeps its copy paused
meanwhile).

When ``migrateToURI3`` raises (:class:`_Recovery`), libvirt has already resumed the
source's copy, and the destination's copy may be running too (libvirt warns that a
failed Finish can leave it running there). Before either copy runs with the fences, the
source pauses its own copy (once the switchover was reached), looks at the destination's
copy through the destination's libvirt, reads the fences and asks
``fencing.migration.after_error``; it deals with the destination's copy first, then the
fences, then its own copy. What cannot be checked is left paused, and the intent says so.

UNSAFE is added only for guests whose shared disks are plain files (a local path
standing in for a LUN, as in the lab): libvirt cannot see that such a path is shared;
gridtool's storage rules say it is.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import libvirt

from agents.fencer import FenceRefused
from agents.ports import Domains, FenceHolder, IntentFailed, LeaseView, Receiver
from gridtool import supervise
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.fencing.migration import (
    Copy,
    DestAct,
    FenceAct,
    Fences,
    Handover,
    Resolution,
    SourceAct,
    Where,
    after_error,
    fences_at,
    pause_source_first,
)
from gridtool.fencing.rules import (
    FenceKind,
    GuestRef,
    Observation,
    Observed,
    Refusal,
    expect_window,
    plan_handover,
)
from gridtool.fencing.shell import run_plan
from gridtool.placement.shell import job_progress
from gridtool.registry.fleet import Registry
from gridtool.registry.keys import Keys
from gridtool.registry.model import GuestRecord, HostRecord
from gridtool.registry.records import Intent, encode
from gridtool.registry.store import Store

BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
PROGRESS_EVERY_S = 0.25
SWITCH_POLL_S = 0.01
#: After the switchover, the source's copy is looked at on each of its lifecycle events
#: and at least this often (should an event be lost).
GUARD_POLL_S = 0.1
#: How long a handover in flight (one etcd call is bounded by the store's timeout) is
#: waited for once libvirt returned; after that its outcome counts as unknown.
HANDOVER_WAIT_S = 30.0
#: After libvirt completed a migration whose handover failed with an etcd or auth error:
#: how long the handover is tried again (the destination keeps its copy paused meanwhile).
HANDOVER_PATIENCE_S = 60.0
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 2.0
#: How long the fences are read again (etcd away) before they count as unknown.
FENCE_READ_PATIENCE_S = 15.0
#: Each call to the destination's libvirt (connect included) must answer within this.
REMOTE_TIMEOUT_S = 10.0

log = logging.getLogger("gridtool.agent")

T = TypeVar("T")
Connect = Callable[[str], libvirt.virConnect]


class LiveMigrator:
    """The source's side of live migrations from ``host``: its libvirt (``domains``), its
    fencer and lease, the store the intent's progress is written to, and ``connect``,
    which opens another host's libvirt (the destination's, after a failed migration)."""

    def __init__(self, *, host: str, store: Store, keys: Keys, domains: Domains,
                 fencer: FenceHolder, lease: LeaseView, connect: Connect = libvirt.open
                 ) -> None:
        self.host, self.store, self.keys = host, store, keys
        self.domains, self.fencer, self.lease = domains, fencer, lease
        self.connect = connect

    def migrate(self, intent: Intent, record: Callable[[], GuestRecord]) -> str:
        """Carry out one ``migrate`` intent (``record()`` reads the guest's record); the
        one-line outcome (raises IntentFailed to fail it)."""
        target = str(intent.params.get("to") or "")
        if not target or target == self.host:
            raise IntentFailed(f"live migration of {intent.name} needs another destination "
                               "host")
        dom = self.domains.domain(intent.guest)
        if dom is None or not dom.isActive():
            raise IntentFailed(f"{intent.name} is not running on {self.host}: nothing to "
                               "live-migrate (use a cold migration)")
        rec = record()
        ref = self.fencer.ref(rec) if rec.fenced else None
        was_running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        if ref is not None:
            self.fencer.acquire(ref)  # ours already: confirms it before anything moves
        dest = Registry(self.store, self.keys).get_host(target)
        dest_uri, address = reach(dest)
        live = intent.params.get("live") is not False  # False: suspended while sent
        flags = migration_flags(dest.hypervisor, rec, live)
        began = time.monotonic()
        reporter = _Progress(self.store, self.keys.intent(intent.host, intent.id), intent, dom)
        switch = _Switchover(self, ref, target, dom)
        reporter.start()
        if dest.hypervisor != "xen":  # libxl's "paused (migrating)" is not Xen's state
            switch.start()
        params: dict[str, object] = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{address}"}
        bandwidth = int(intent.params.get("bandwidth_mib") or 0)
        if bandwidth > 0:  # MiB/s, libvirt's unit
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth
        try:
            dom.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as exc:
            returned = time.monotonic()
            switch.stop()  # a handover in flight ends first
            reporter.stop()
            why = " ".join(str(exc).split())
            return _Recovery(self, intent.name, switch, dom, dest_uri, returned,
                             was_running).resolve(why)
        transfer = time.monotonic() - began
        reporter.stop()
        switch.finish(HANDOVER_PATIENCE_S)  # hand over now unless the watcher already did
        if ref is not None and switch.outcome is not Handover.DONE:
            raise IntentFailed(f"{intent.name} moved to {target}, but its fences could not "
                               f"be handed over ({switch.error}): "
                               + self._pause_remote(dest_uri, intent) + "; " + switch.where())
        resumed = ""
        if flags & libvirt.VIR_MIGRATE_PAUSED and was_running:
            resumed = self._resume_remote(dest_uri, intent, target)
        return (f"{intent.name} {'live-' if live else 'non-live '}migrated from {self.host} "
                f"to {target} in "
                f"{transfer:.2f} s" + (switch.summary() if ref is not None else "") + resumed)

    def _resume_remote(self, dest_uri: str, intent: Intent, target: str) -> str:
        """libxl's migration arrived paused (``VIR_MIGRATE_PAUSED``) and its fences are
        the destination's now: resume it there. IntentFailed when that fails (the guest
        is paused on ``target`` with its fences: ``virsh resume`` there)."""
        remote = RemoteCopy(self.connect, dest_uri, intent.guest)
        try:
            if not remote.resume():
                raise IntentFailed(f"{intent.name} moved to {target} with its fences, but "
                                   f"resuming it there failed ({remote.error}): it is paused "
                                   f"on {target}")
        finally:
            remote.close()
        return f"; resumed on {target} after the handover"

    def _pause_remote(self, dest_uri: str, intent: Intent) -> str:
        """The destination's copy must not run without its fences: pause it there (its
        agent does too, if it is alive). What became of it, for the message."""
        remote = RemoteCopy(self.connect, dest_uri, intent.guest)
        try:
            if remote.suspend():
                return "it is paused there"
            return f"pausing it there failed ({remote.error})"
        finally:
            remote.close()


class _Switchover:
    """Hands the fences to the destination at switchover: the moment libvirt pauses the
    guest on the source for the final copy (paused, reason "migration"). It runs nowhere
    then: the destination resumes it only after that copy. ``outcome`` says what became
    of the handover (``Handover``); a failed one aborts the libvirt job if it still can.
    """

    def __init__(self, side: LiveMigrator, ref: GuestRef | None, target: str,
                 source: libvirt.virDomain) -> None:
        self.side, self.ref, self.target, self.source = side, ref, target, source
        self.token, self.handover_s = 0, 0.0
        self.outcome = Handover.NOT_TRIED
        self.error = ""  # the last failure, one line
        self.first_error = ""  # the first failure (kept when a retry succeeds)
        self.retried = False
        self.in_flight = False  # a handover still running when libvirt was done waiting
        self._began = 0.0  # when the first handover attempt began
        # the source's copy, resumed by libvirt after the switchover: when it was heard
        # (or seen) running and when the guard paused it (0.0: not paused by the guard)
        self.resumed_at = self.paused_at = 0.0
        self._heard_at = 0.0
        self._done = threading.Lock()
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread = supervise.thread(self._watch, "switchover", logger=log)

    def start(self) -> None:
        if self.ref is not None:
            self._thread.start()

    def stop(self) -> None:
        """Stop watching; a handover in flight is waited for (at most HANDOVER_WAIT_S)."""
        self._stop.set()
        self._woken.set()
        if self._thread.is_alive():
            self._thread.join(timeout=HANDOVER_WAIT_S)
        if self._thread.is_alive():  # stuck in etcd: whatever it does is unknown
            self.in_flight = True
            self.outcome, self.error = Handover.UNKNOWN, "the handover did not return"

    def finish(self, patience: float) -> None:
        """libvirt completed the migration: hand over now unless the watcher did; after an
        etcd or auth error try again, backing off, until ``patience`` runs out."""
        self.stop()
        deadline = time.monotonic() + patience
        delay = RETRY_FIRST_S
        while not self.in_flight:
            self._hand_over("libvirt-return")
            if self.outcome is not Handover.UNKNOWN or time.monotonic() + delay > deadline:
                return
            time.sleep(delay)  # etcd is away: nothing to wait on but the clock
            delay = min(RETRY_MAX_S, delay * 2)

    def _watch(self) -> None:
        try:
            with self.side.domains.listening(self.source.UUIDString(), self._heard):
                if self._until_switchover():
                    self._guard_source()
        except Exception as exc:  # never die silently, nor pass for "not reached"
            log.exception("event=live_switchover_error guest=%s", self._name)
            if self.outcome is Handover.NOT_TRIED:
                self.outcome = Handover.UNKNOWN
                self.error = f"the switchover watcher failed ({type(exc).__name__}: {exc})"

    def _heard(self, event: int) -> None:
        """A lifecycle event of the source's copy (on libvirt's event loop): look now."""
        if event in (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_STARTED):
            self._heard_at = self._heard_at or time.monotonic()
        self._woken.set()

    def _until_switchover(self) -> bool:
        """Wait for the switchover and hand the fences over there (aborting the job if
        that failed); False when stopped before it."""
        while not self._stop.wait(SWITCH_POLL_S):
            with contextlib.suppress(libvirt.libvirtError):
                state, reason = self.source.state()
                if (state == libvirt.VIR_DOMAIN_PAUSED
                        and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION):
                    self._hand_over("source-paused")
                    if self.outcome is not Handover.DONE:
                        self._abort()
                    return True
        return False

    def _guard_source(self) -> None:
        """From the switchover until libvirt returns, the source's copy must not run: the
        fences may be the destination's (``pause_source_first``). libvirt resumes it
        when the migration fails (``qemuMigrationSrcRestoreDomainState``; no flag stops
        that), seconds before ``migrateToURI3`` returns on a loaded host: pause it the
        moment its RESUMED event arrives (or a poll sees it running), with no etcd
        read on the way. The recovery then decides whether it runs again."""
        if not pause_source_first(self.outcome):
            return
        self._woken.set()  # resumed before the listener heard it? look once now
        while True:
            self._woken.wait(GUARD_POLL_S)
            self._woken.clear()
            stopping = self._stop.is_set()  # libvirt returned: one last look
            self._pause_if_running()
            if stopping:
                return

    def _pause_if_running(self) -> None:
        try:
            running = self.source.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        except libvirt.libvirtError:
            return  # gone (migrated) or unreadable: the recovery looks again
        if not running:
            return
        seen, self._heard_at = self._heard_at or time.monotonic(), 0.0
        try:
            self.source.suspend()
        except libvirt.libvirtError as exc:  # the recovery pauses or destroys it
            log.warning("event=live_source_guard_failed guest=%s error=%s", self._name,
                        " ".join(str(exc).split()))
            return
        paused_at = time.monotonic()
        if not self.paused_at:
            self.resumed_at, self.paused_at = seen, paused_at
        log.warning("event=live_source_paused guest=%s after_ms=%.1f by=guard",
                    self._name, (paused_at - seen) * 1000)

    @property
    def _name(self) -> str:
        return self.ref.name if self.ref is not None else "?"

    def _abort(self) -> None:
        """The fences did not move: stop libvirt from resuming the destination's copy, if
        the final copy is still under way (too late is harmless: see ``finish``)."""
        try:
            self.source.abortJob()
            log.warning("event=live_migration_aborted guest=%s to=%s handover=%s error=%s",
                        self._name, self.target, self.outcome.value, self.error)
        except libvirt.libvirtError as exc:
            log.warning("event=live_abort_too_late guest=%s to=%s error=%s", self._name,
                        self.target, " ".join(str(exc).split()))

    def _hand_over(self, by: str) -> None:
        """Pass every fence to the destination (one transaction comparing the holder), or
        record why not in ``outcome`` and ``error``; never raises."""
        with self._done:
            if self.ref is None or self.outcome in (Handover.DONE, Handover.REFUSED):
                return
            retry = self.outcome is Handover.UNKNOWN
            self._began = self._began or time.monotonic()
            try:
                self.token = self._attempt(self.ref)
                self.outcome = Handover.DONE
            except FenceRefused as exc:
                self.outcome, self.error = Handover.REFUSED, str(exc)
            except (RegistryUnavailable, AuthError) as exc:
                self.outcome, self.error = Handover.UNKNOWN, " ".join(str(exc).split())
            except Exception as exc:  # a bug must not pass for "not handed over"
                log.exception("event=live_handover_error guest=%s", self.ref.name)
                self.outcome, self.error = Handover.UNKNOWN, f"{type(exc).__name__}: {exc}"
            self.retried = self.retried or retry
            if self.outcome is Handover.DONE:
                self.handover_s = time.monotonic() - self._began
                log.info("event=live_switchover guest=%s to=%s handover_ms=%.1f token=%s "
                         "by=%s retried=%s", self.ref.name, self.target,
                         self.handover_s * 1000, self.token, by, "yes" if retry else "no")
                return
            self.first_error = self.first_error or self.error
            log.warning("event=live_handover_failed guest=%s to=%s outcome=%s by=%s error=%s",
                        self.ref.name, self.target, self.outcome.value, by, self.error)

    def _attempt(self, ref: GuestRef) -> int:
        """One handover; the fencing token. FenceRefused when it cannot be done, unless
        the destination holds the fences already (an earlier try committed after all)."""
        fencer = self.side.fencer
        try:
            token = fencer.handover(ref, self.target)
            if token:
                return token
            refusal = FenceRefused(Refusal(ref.uuid, ref.volumes[0], None,
                                           f"{self.side.host} no longer holds the fences "
                                           f"of {ref.name}"))
        except FenceRefused as exc:
            refusal = exc
        observed = fencer.observe(ref.volumes)
        if fences_at(self.side.host, self.target, ref, observed) is Fences.DEST:
            return _token(observed)
        raise refusal

    def summary(self) -> str:
        """How the fences moved, for the intent's outcome (they did)."""
        if not self.retried:
            return (f"; fences handed to {self.target} in {self.handover_s * 1000:.0f} ms at "
                    f"switchover (token {self.token})")
        return (f"; fences handed to {self.target} {self.handover_s:.1f} s after the "
                f"switchover (the first try failed: {self.first_error}), token {self.token}; "
                f"{self.target} does not run it without them")

    def where(self) -> str:
        """Where the fences are, for a failure message."""
        if self.ref is None:
            return "it has no fences"
        try:
            observed = self.side.fencer.observe(self.ref.volumes)
        except (RegistryUnavailable, AuthError) as exc:
            return f"its fences could not be read ({' '.join(str(exc).split())})"
        return _fence_text(observed)


def _fence_text(observed: dict[str, Observation]) -> str:
    """Who holds the fences, for messages."""
    holders = {o.fence.holder for o in observed.values() if isinstance(o, Observed)}
    return f"its fences are held by {', '.join(sorted(holders)) or 'nobody'}"


def _token(observed: dict[str, Observation]) -> int:
    return max((o.mod_revision for o in observed.values() if isinstance(o, Observed)),
               default=0)


class _Recovery:
    """After ``migrateToURI3`` raised: find out where the guest runs before either copy
    runs with its fences (``fencing.migration.after_error``), and carry it out."""

    def __init__(self, side: LiveMigrator, name: str, switch: _Switchover,
                 dom: libvirt.virDomain, dest_uri: str, returned: float,
                 was_running: bool) -> None:
        self.side, self.name, self.switch, self.dom = side, name, switch, dom
        self.was_running = was_running  # before the migration: it may run again after
        self.target, self.ref = switch.target, switch.ref
        self.remote = RemoteCopy(side.connect, dest_uri, dom.UUIDString())
        # when libvirt resumed the source's copy: heard by the switchover's guard, which
        # paused it at once, else no later than when libvirt gave up (``returned``)
        self.resumed_at = switch.resumed_at or returned
        self.paused = bool(switch.paused_at)  # the guard or this recovery paused it
        self.paused_at = switch.paused_at or returned
        self.notes: list[str] = []
        self.observed: dict[str, Observation] | None = None

    def resolve(self, why: str) -> str:
        """Decide and act; the success line when the guest lives on the destination after
        all, else IntentFailed saying exactly where it is."""
        host, target, name = self.side.host, self.target, self.name
        if self.ref is None:  # no fences: libvirt's word is all there is
            if not _active(self.dom):
                raise IntentFailed(f"live migration of {name} to {target} ended with an "
                                   f"error ({why}): it is NOT running on {host}; it has no "
                                   "fences")
            raise IntentFailed(f"live migration of {name} to {target} failed ({why}): it "
                               f"still runs on {host}")
        try:
            res = self._decide()
            res = self._carry_out(res)
        finally:
            self.remote.close()
        log.warning("event=live_migration_failed guest=%s to=%s handover=%s where=%s "
                    "source=%s dest=%s fences=%s reason=%s notes=%s", name, target,
                    self.switch.outcome.value, res.where.value, res.source.value,
                    res.dest.value, res.fences.value, res.reason, "; ".join(self.notes))
        detail = res.reason + "".join(f"; {n}" for n in self.notes)
        if res.where is Where.DEST:
            return (f"{name} live-migrated from {host} to {target}, although libvirt "
                    f"reported an error ({why}): {detail}")
        if res.where is Where.SOURCE:
            raise IntentFailed(f"live migration of {name} to {target} failed ({why}): it "
                               f"still runs on {host} with its fences ({detail})")
        raise IntentFailed(f"live migration of {name} to {target} failed ({why}): {detail};"
                           f" {self.switch.where()}")

    def _decide(self) -> Resolution:
        handover = self.switch.outcome
        if _active(self.dom) and pause_source_first(handover):
            self._stop_source(destroy=False)
        source = _source_copy(self.dom)
        dest = self.remote.look()
        if dest is Copy.UNREACHABLE:
            self.notes.append(f"{self.target}'s libvirt could not be asked "
                              f"({self.remote.error})")
        fences = self._read_fences()
        res = after_error(handover, source, dest, fences, (self.side.host, self.target))
        log.info("event=live_migration_recovery guest=%s handover=%s source=%s dest=%s "
                 "fences=%s decision=%s/%s/%s", self.name, handover.value, source.value,
                 dest.value, fences.value, res.dest.value, res.fences.value,
                 res.source.value)
        return res

    def _read_fences(self) -> Fences:
        """Where the fences are; read again while etcd is away, up to
        FENCE_READ_PATIENCE_S. A handover that never returned makes them unknown."""
        assert self.ref is not None
        deadline = time.monotonic() + FENCE_READ_PATIENCE_S
        delay = RETRY_FIRST_S
        while not self.switch.in_flight:
            try:
                self.observed = self.side.fencer.observe(self.ref.volumes)
                return fences_at(self.side.host, self.target, self.ref, self.observed)
            except (RegistryUnavailable, AuthError) as exc:
                if time.monotonic() + delay > deadline:
                    self.notes.append(f"etcd: {' '.join(str(exc).split())}")
                    break
            time.sleep(delay)  # etcd is away: nothing to wait on but the clock
            delay = min(RETRY_MAX_S, delay * 2)
        return Fences.UNKNOWN

    def _carry_out(self, res: Resolution) -> Resolution:
        """The destination's copy first, then the fences, then the source's copy; a step
        that fails leaves the source's copy paused (the resolution says so)."""
        failed = self._destination(res.dest) or self._fences(res.fences)
        if failed:
            res = replace(res, source=SourceAct.PAUSE if _active(self.dom)
                          else SourceAct.NONE, where=Where.UNKNOWN,
                          reason=f"{failed}: paused on {self.side.host}")
        self._source(res.source)
        return res

    def _destination(self, act: DestAct) -> str:
        """Destroy or pause the destination's copy and check it worked; '' or why not."""
        if act is DestAct.NONE:
            return ""
        done = self.remote.destroy() if act is DestAct.DESTROY else self.remote.suspend()
        done_text = "destroyed" if act is DestAct.DESTROY else "paused"
        if not done:
            return f"{self.target}'s copy could not be {done_text} ({self.remote.error})"
        self.notes.append(f"{self.target}'s copy {done_text}")
        return ""

    def _fences(self, act: FenceAct) -> str:
        """Take the fences back from the destination (compared against the revision
        they were seen at) or acquire them; '' or why not."""
        assert self.ref is not None
        if act is FenceAct.KEEP:
            return ""
        side, fencer = self.side, self.side.fencer
        if self.ref.kind is FenceKind.HA and not side.lease.arm():
            return f"{side.host}'s lease is not healthy: its HA fences cannot be taken back"
        try:
            if act is FenceAct.TAKE_BACK and self.observed is not None:
                plan = plan_handover(self.target, side.host, self.ref, self.observed,
                                     time.time())
                if not isinstance(plan, Refusal) and run_plan(side.store, side.keys, plan,
                                                              side.lease.lease):
                    fencer.refresh_held()
                    log.warning("event=live_fence_taken_back guest=%s from=%s", self.name,
                                self.target)
                    return ""
            fencer.acquire(self.ref)  # changed meanwhile (released?): take them afresh
            return ""
        except FenceRefused as exc:
            return f"its fences could not be taken back ({exc})"
        except (RegistryUnavailable, AuthError) as exc:
            return f"its fences could not be taken back ({' '.join(str(exc).split())})"

    def _source(self, act: SourceAct) -> None:
        if act is SourceAct.RUN and self.was_running and _source_copy(self.dom) is Copy.PAUSED:
            try:  # paused by this recovery, or left paused by libvirt's failed resume
                self.dom.resume()
                self.notes.append(f"it was paused for {self._paused_ms():.0f} ms while "
                                  f"{self.target} was checked" if self.paused else
                                  "resumed (libvirt had left it paused)")
            except libvirt.libvirtError as exc:
                self.notes.append(f"resuming it failed ({' '.join(str(exc).split())}): "
                                  "it is paused")
        elif act is SourceAct.PAUSE and not self.paused and _active(self.dom):
            self._stop_source(destroy=False)
        elif act is SourceAct.DESTROY:
            self._stop_source(destroy=True)

    def _stop_source(self, destroy: bool) -> None:
        """Pause (or destroy) the source's copy; a copy that cannot be paused is
        destroyed: it must not run on while the destination's might."""
        try:
            if destroy:
                self.dom.destroy()
                self.notes.append(f"its copy on {self.side.host} was destroyed" + (
                    f" (resumed by libvirt, paused after {self._paused_ms():.0f} ms)"
                    if self.paused else ""))
                return
            state, _reason = self.dom.state()
            if state != libvirt.VIR_DOMAIN_PAUSED:
                self.dom.suspend()
                self.paused = True
                self.paused_at = time.monotonic()
                log.warning("event=live_source_paused guest=%s after_ms=%.1f by=recovery",
                            self.name, self._paused_ms())
        except libvirt.libvirtError as exc:
            why = " ".join(str(exc).split())
            if destroy:
                self.notes.append(f"destroying its copy on {self.side.host} failed ({why})")
                return
            self.notes.append(f"pausing it on {self.side.host} failed ({why})")
            self._stop_source(destroy=True)

    def _paused_ms(self) -> float:
        """How long the source's copy ran after libvirt resumed it, until it was paused."""
        return (self.paused_at - self.resumed_at) * 1000


class RemoteCopy:
    """The guest's copy on another host, through that host's libvirt (its host record's
    URI); every call, connecting included, answers within REMOTE_TIMEOUT_S or counts as
    unreachable. ``error`` is the last failure."""

    def __init__(self, connect: Connect, uri: str, uuid: str,
                 timeout: float = REMOTE_TIMEOUT_S) -> None:
        self.connect, self.uri, self.uuid, self.timeout = connect, uri, uuid, timeout
        self.error = ""
        self._conn: libvirt.virConnect | None = None

    def look(self) -> Copy:
        """The copy's state (``Copy.UNREACHABLE`` when it cannot be told)."""
        return self._call(lambda: copy_of(self._domain()), Copy.UNREACHABLE)

    def destroy(self) -> bool:
        """Destroy the copy; True once it is not running (or was not there)."""
        def run() -> bool:
            dom = self._domain()
            if dom is not None and dom.isActive():
                dom.destroy()
            return copy_of(self._domain()) is Copy.ABSENT
        return self._call(run, False)

    def resume(self) -> bool:
        """Resume a paused copy; True once it runs."""
        def run() -> bool:
            dom = self._domain()
            if dom is not None and copy_of(dom) is Copy.PAUSED:
                dom.resume()
            return copy_of(self._domain()) is Copy.RUNNING
        return self._call(run, False)

    def suspend(self) -> bool:
        """Pause the copy; True once it is not running."""
        def run() -> bool:
            dom = self._domain()
            if dom is not None and copy_of(dom) is Copy.RUNNING:
                dom.suspend()
            return copy_of(self._domain()) is not Copy.RUNNING
        return self._call(run, False)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                _bounded(conn.close, self.timeout)

    def _domain(self) -> libvirt.virDomain | None:
        if self._conn is None:
            self._conn = self.connect(self.uri)
        try:
            return self._conn.lookupByUUIDString(self.uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _call(self, fn: Callable[[], T], failed: T) -> T:
        try:
            return _bounded(fn, self.timeout)
        except (libvirt.libvirtError, TimeoutError) as exc:
            self.error = " ".join(str(exc).split())
            return failed


def _bounded(fn: Callable[[], T], timeout: float) -> T:
    """``fn()`` on a helper thread; TimeoutError when it does not return in ``timeout``
    seconds (the thread is left to finish on its own: libvirt calls cannot be cut)."""
    results: list[T] = []
    errors: list[Exception] = []

    def run() -> None:
        try:
            results.append(fn())
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="remote-libvirt", daemon=True)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    if not results:
        raise TimeoutError(f"no answer within {timeout:g} s")
    return results[0]


def _source_copy(dom: libvirt.virDomain) -> Copy:
    """The source's own copy: running, paused (for whatever reason) or gone."""
    try:
        copy = copy_of(dom)
    except libvirt.libvirtError:
        return Copy.RUNNING  # cannot tell: assume the worst
    return Copy.PAUSED if copy is Copy.INCOMING else copy


def copy_of(dom: libvirt.virDomain | None) -> Copy:
    """What a libvirt domain is, as a copy of a migrating guest: paused for an incoming
    migration (or starting up) it never ran; paused otherwise it may have."""
    if dom is None:
        return Copy.ABSENT
    try:
        state, reason = dom.state()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return Copy.ABSENT
        raise
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
        return Copy.ABSENT
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return Copy.INCOMING if reason in (libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                                           libvirt.VIR_DOMAIN_PAUSED_STARTING_UP) \
            else Copy.PAUSED
    return Copy.RUNNING


def incoming_guest(intent: Intent) -> GuestRef | None:
    """The guest a ``receive`` intent is about, as the migration read it from the
    source's record (``params['volumes']`` and ``['unidentified']``; the destination's
    etcd user may not read another host's records); None from a CLI that sent neither."""
    volumes, unidentified = intent.params.get("volumes"), intent.params.get("unidentified")
    if not isinstance(volumes, list):
        return None
    return GuestRef(intent.guest, intent.name, FenceKind.PINNED,  # kind: not asked
                    tuple(str(v) for v in volumes),
                    unidentified=tuple(str(u) for u in unidentified or ()))


def receive(hook: Receiver | None, host: str, intent: Intent,
            guest: GuestRef | None = None) -> str:
    """The destination's side: let the fence hook accept ONE incoming migration of the
    guest from ``params['from']`` (which must hold its fences) within the intent's
    ``expect_s`` (:func:`expect_window`: as long as the CLI waits for the source). ``guest``
    (:func:`incoming_guest`) names the guest and its LUNs to the hook when libvirt passes
    no domain XML (libxl's ``migrate begin``)."""
    source = str(intent.params.get("from") or "")
    if hook is None:
        raise IntentFailed(f"{host} has no fence hook (setting 'hook_socket'): it "
                           f"cannot check an incoming live migration of {intent.name}")
    if not source or source == host:
        raise IntentFailed(f"receiving {intent.name} needs the source host")
    within = expect_window(intent.params)
    hook.expect(intent.guest, source, guest, within)
    return f"{host} expects {intent.name} from {source} for {within:.0f} s"


def unsafe_disks(rec: GuestRecord) -> bool:
    """True when a shared disk is a plain file (libvirt cannot tell it is shared)."""
    return any(d.shared and d.kind == "file" for d in rec.disks)


def migration_flags(hypervisor: str, rec: GuestRecord, live: bool = True) -> int:
    """libvirt's flags for migrating ``rec`` with its memory to a ``hypervisor`` host:
    live, or not (``live`` False: the guest is suspended while all its memory is sent,
    libxl's non-live save, which needs no log-dirty mode).

    QEMU: UNSAFE for plain-file shared disks (above); the switchover is the source's
    pause for the final copy (``_Switchover``). Xen (libxl): libvirt's libxl driver says
    the source is ``paused (migrating)`` from the start of the migration while Xen still
    runs it (seen on real dom0s), so no switchover is watched there; it resumes the
    destination's copy in its Finish phase, before ``migrateToURI3`` returns; with PAUSED
    it stays paused there until the source agent has handed the fences over (once libvirt
    returned) and resumes it. libxl knows no UNSAFE (it refuses flags outside its own set).
    """
    base = BASE_FLAGS if live else BASE_FLAGS & ~libvirt.VIR_MIGRATE_LIVE
    if hypervisor == "xen":
        return base | libvirt.VIR_MIGRATE_PAUSED
    return base | (libvirt.VIR_MIGRATE_UNSAFE if unsafe_disks(rec) else 0)


def reach(dest: HostRecord) -> tuple[str, str]:
    """The destination's libvirt URI as the source reaches it, and the address its
    migration stream goes to: its ``migration_address`` in place of its URI's host when
    it has one (its URI may name an address only its own side reaches, as the Xen lab's
    forwarded loopback ports do)."""
    parts = urlsplit(dest.libvirt_uri)
    address = dest.migration_address or parts.hostname or dest.name
    if not dest.migration_address or not parts.hostname:
        return dest.libvirt_uri, address
    netloc = address + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc)), address


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


class _Progress:
    """Writes the libvirt job's memory progress into the intent at ``key`` while it runs;
    nothing it meets ends its thread silently."""

    def __init__(self, store: Store, key: str, intent: Intent, dom: libvirt.virDomain) -> None:
        self.store, self.key, self.intent, self.dom = store, key, intent, dom
        self._stop = threading.Event()
        self._thread = supervise.thread(self._run, "migrate-progress", logger=log)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        last, failing = "", False
        while not self._stop.wait(PROGRESS_EVERY_S):
            try:
                stats = self.dom.jobStats()
                total = int(stats.get("memory_total", 0))
                if not total:
                    continue
                text = job_progress(int(stats.get("memory_remaining", total)), total)
                if text != last:
                    self.store.put(self.key, encode(replace(
                        self.intent, state="running", message=text, updated=time.time())))
                    last, failing = text, False
            except libvirt.libvirtError:
                continue  # the job is ending
            except Exception as exc:  # etcd away, or worse: progress is optional
                if not failing:
                    log.warning("event=live_progress_error intent=%s error=%s",
                                self.intent.id, " ".join(str(exc).split()))
                failing = True
