"""The source agent's live migration (the ``migrate`` intent), fences handed over at
switchover.

libvirt migrates peer-to-peer to the destination daemon (LIVE | PEER2PEER |
PERSIST_DEST | UNDEFINE_SOURCE, ``migrate_uri tcp://<destination address>``). A watcher
hands every fence to the destination in ONE transaction comparing the holder
(``Fencer.handover``) the moment libvirt pauses the guest on the source for the final
copy: the guest runs nowhere while its fences move (the destination resumes it only
after that copy). The destination's fence hook accepts the incoming guest only after a
``receive`` intent there (:func:`receive`, ``agents.hooksock``).

Failures: libvirt aborts a failed migration (destination hook refusal, destination
death, network cut) and the guest keeps running here; if that happens after the
switchover, the fences are taken back (compare-and-swap against the revision the
handover wrote) before the intent fails.

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
from urllib.parse import urlsplit

import libvirt

from agents.fencer import FenceRefused
from agents.ports import Domains, FenceHolder, IntentFailed, LeaseView, Receiver
from gridtool import supervise
from gridtool.fencing.rules import GuestRef, Observed, Refusal, plan_handover
from gridtool.fencing.shell import run_plan
from gridtool.placement.shell import job_progress
from gridtool.registry.fleet import Registry
from gridtool.registry.keys import Keys
from gridtool.registry.model import GuestRecord
from gridtool.registry.records import Intent, encode
from gridtool.registry.store import Store

BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
PROGRESS_EVERY_S = 0.25
SWITCH_POLL_S = 0.01

log = logging.getLogger("gridtool.agent")


class LiveMigrator:
    """The source's side of live migrations from ``host``: its libvirt (``domains``), its
    fencer and lease, and the store the intent's progress is written to."""

    def __init__(self, *, host: str, store: Store, keys: Keys, domains: Domains,
                 fencer: FenceHolder, lease: LeaseView) -> None:
        self.host, self.store, self.keys = host, store, keys
        self.domains, self.fencer, self.lease = domains, fencer, lease

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
        if ref is not None:
            self.fencer.acquire(ref)  # ours already: confirms it before anything moves
        dest_uri = Registry(self.store, self.keys).get_host(target).libvirt_uri
        address = urlsplit(dest_uri).hostname or target
        flags = BASE_FLAGS | (libvirt.VIR_MIGRATE_UNSAFE if unsafe_disks(rec) else 0)
        began = time.monotonic()
        reporter = _Progress(self.store, self.keys.intent(intent.host, intent.id), intent, dom)
        switch = _Switchover(self, ref, target, dom)
        reporter.start()
        switch.start()
        params: dict[str, object] = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{address}"}
        bandwidth = int(intent.params.get("bandwidth_mib") or 0)
        if bandwidth > 0:  # MiB/s, libvirt's unit
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth
        try:
            dom.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as exc:
            switch.stop()
            reporter.stop()
            why = " ".join(str(exc).split())
            if not _active(dom):
                raise IntentFailed(f"live migration of {intent.name} to {target} ended with "
                                   f"an error ({why}): it is NOT running on {self.host}; "
                                   + switch.where()) from None
            back = switch.take_back()  # libvirt resumed it here: its fences come back
            raise IntentFailed(f"live migration of {intent.name} to {target} failed ({why}):"
                               f" it still runs on {self.host}"
                               + (" with its fences" if ref is not None and back else "")
                               + ("" if back else "; " + switch.where())) from None
        transfer = time.monotonic() - began
        reporter.stop()
        switch.finish()  # libvirt is done: hand over now unless the watcher already did
        if switch.error:
            raise IntentFailed(f"{intent.name} runs on {target}, but its fences could not "
                               f"be handed over ({switch.error}): {target}'s agent takes "
                               f"them when {self.host} releases them")
        fence = (f"; fences handed to {target} in {switch.handover_s * 1000:.0f} ms at "
                 f"switchover (token {switch.token})" if ref is not None else "")
        return (f"{intent.name} live-migrated from {self.host} to {target} in "
                f"{transfer:.2f} s{fence}")


class _Switchover:
    """Hands the fences to the destination at switchover: the moment libvirt pauses the
    guest on the source for the final copy (paused, reason "migration"). It runs nowhere
    then: the destination resumes it only after that copy. If the migration fails after
    all, libvirt resumes it here and :meth:`take_back` returns the fences (compared
    against the very revision the handover wrote)."""

    def __init__(self, side: LiveMigrator, ref: GuestRef | None, target: str,
                 source: libvirt.virDomain) -> None:
        self.side, self.ref, self.target, self.source = side, ref, target, source
        self.token, self.handover_s = 0, 0.0
        self.error = ""
        self.handed = False
        self._done = threading.Lock()
        self._stop = threading.Event()
        self._thread = supervise.thread(self._watch, "switchover", logger=log)

    def start(self) -> None:
        if self.ref is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def finish(self) -> None:
        self.stop()
        self._hand_over("libvirt-return")

    def _watch(self) -> None:
        while not self._stop.wait(SWITCH_POLL_S):
            with contextlib.suppress(libvirt.libvirtError):
                state, reason = self.source.state()
                if (state == libvirt.VIR_DOMAIN_PAUSED
                        and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION):
                    self._hand_over("source-paused")
                    return

    def _hand_over(self, by: str) -> None:
        """Pass every fence to the destination (one transaction comparing the holder)."""
        with self._done:
            if self.ref is None or self.handed or self.error:
                return
            began = time.monotonic()
            try:
                self.token = self.side.fencer.handover(self.ref, self.target)
            except FenceRefused as exc:
                self.error = str(exc)
                return
            self.handed = True
            self.handover_s = time.monotonic() - began
            log.info("event=live_switchover guest=%s to=%s handover_ms=%.1f token=%s by=%s",
                     self.ref.name, self.target, self.handover_s * 1000, self.token, by)

    def take_back(self) -> bool:
        """The migration failed and the guest runs here again: take back the fences the
        handover gave away, if nobody touched them since. True when this host holds them."""
        with self._done:
            if self.ref is None:
                return True
            if not self.handed:
                return not self.error
            side, fencer = self.side, self.side.fencer
            observed = fencer.observe(self.ref.volumes)
            plan = plan_handover(self.target, side.host, self.ref, observed, time.time())
            ok = not isinstance(plan, Refusal) and all(
                s.mod_revision == self.token for s in plan.steps) and run_plan(
                side.store, side.keys, plan, side.lease.lease)
            if ok:
                fencer.refresh_held()
            else:  # the destination released them already (its guest died): take them anew
                try:
                    fencer.acquire(self.ref)
                except FenceRefused:
                    return False
            self.handed = False
            log.warning("event=live_fence_taken_back guest=%s from=%s", self.ref.name,
                        self.target)
            return True

    def where(self) -> str:
        """Where the fences are, for a failure message."""
        if self.ref is None:
            return "it has no fences"
        holders = {o.fence.holder for o in self.side.fencer.observe(self.ref.volumes).values()
                   if isinstance(o, Observed)}
        return f"its fences are held by {', '.join(sorted(holders)) or 'nobody'}"


def receive(hook: Receiver | None, host: str, intent: Intent) -> str:
    """The destination's side: let the fence hook accept ONE incoming migration of the
    guest from ``params['from']`` (which must hold its fences) within a minute."""
    source = str(intent.params.get("from") or "")
    if hook is None:
        raise IntentFailed(f"{host} has no fence hook (setting 'hook_socket'): it "
                           f"cannot check an incoming live migration of {intent.name}")
    if not source or source == host:
        raise IntentFailed(f"receiving {intent.name} needs the source host")
    hook.expect(intent.guest, source)
    return f"{host} expects {intent.name} from {source}"


def unsafe_disks(rec: GuestRecord) -> bool:
    """True when a shared disk is a plain file (libvirt cannot tell it is shared)."""
    return any(d.shared and d.kind == "file" for d in rec.disks)


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


class _Progress:
    """Writes the libvirt job's memory progress into the intent at ``key`` while it runs."""

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
        last = ""
        while not self._stop.wait(PROGRESS_EVERY_S):
            with contextlib.suppress(libvirt.libvirtError):
                stats = self.dom.jobStats()
                total = int(stats.get("memory_total", 0))
                if not total:
                    continue
                text = job_progress(int(stats.get("memory_remaining", total)), total)
                if text != last:
                    with contextlib.suppress(Exception):
                        self.store.put(self.key, encode(replace(
                            self.intent, state="running", message=text, updated=time.time())))
                    last = text
