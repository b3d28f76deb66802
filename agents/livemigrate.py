"""The source agent's live migration (the ``migrate`` intent), fences handed over at
switchover.

libvirt migrates peer-to-peer to the destination daemon (LIVE | PEER2PEER |
PERSIST_DEST | UNDEFINE_SOURCE | PAUSED, ``migrate_uri tcp://<destination address>``).
With PAUSED the guest arrives paused: a watcher sees the destination finish the incoming
migration (paused, reason "user", the source paused too) and only then hands every fence
to the destination in ONE transaction comparing the holder (``Fencer.handover``) and
resumes the guest there. The guest runs nowhere while its fences move, and it resumes
without waiting for libvirt's confirm phase (the source's qemu teardown). The
destination's fence hook accepts the incoming guest only after a ``receive`` intent
there (:func:`receive`, ``agents.hooksock``).

Failures: libvirt aborts a failed migration (destination hook refusal, destination
death, network cut) with the guest still running here, and the fences never moved. A
refused handover after a completed transfer leaves the guest paused on the destination
(it runs nowhere) and says so.

UNSAFE is added only for guests whose shared disks are plain files (a local path
standing in for a LUN, as in the lab): libvirt cannot see that such a path is shared;
gridtool's storage rules say it is.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import libvirt

from agents.fencer import FenceRefused
from gridtool.migration import job_progress
from gridtool.records import Intent, encode

if TYPE_CHECKING:
    from agents.intents import IntentWorker

BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
              | libvirt.VIR_MIGRATE_PAUSED)
PROGRESS_EVERY_S = 0.25
SWITCH_POLL_S = 0.01

log = logging.getLogger("gridtool.agent")


def live_migrate(worker: IntentWorker, intent: Intent) -> str:
    """Carry out one ``migrate`` intent; the one-line outcome (raises to fail it)."""
    from agents.intents import IntentFailed

    agent = worker.agent
    target = str(intent.params.get("to") or "")
    if not target or target == agent.host:
        raise IntentFailed(f"live migration of {intent.name} needs another destination host")
    dom = agent.libvirt.domain(intent.guest)
    if dom is None or not dom.isActive():
        raise IntentFailed(f"{intent.name} is not running on {agent.host}: nothing to "
                           "live-migrate (use a cold migration)")
    rec = worker._record(intent)
    ref = agent.fencer.ref(rec) if rec.fenced else None
    if ref is not None:
        agent.fencer.acquire(ref)  # ours already: confirms it before anything moves
    dest_uri = agent.registry.get_host(target).libvirt_uri
    address = urlsplit(dest_uri).hostname or target
    flags = BASE_FLAGS | (libvirt.VIR_MIGRATE_UNSAFE if unsafe_disks(rec) else 0)
    began = time.monotonic()
    reporter = _Progress(worker, intent, dom)
    switch = _Switchover(agent.fencer, ref, target, dest_uri, intent.guest, dom)
    reporter.start()
    switch.start()
    try:
        dom.migrateToURI3(dest_uri, {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{address}"}, flags)
    except libvirt.libvirtError as exc:
        switch.stop()
        reporter.stop()
        why = " ".join(str(exc).split())
        if switch.resumed:  # committed on the destination before the source's confirm failed
            raise IntentFailed(f"{intent.name} runs on {target} but libvirt reported an "
                               f"error after the switchover ({why})") from None
        here = "still runs" if _active(dom) else "is NOT running"
        raise IntentFailed(f"live migration of {intent.name} to {target} failed ({why}): "
                           f"it {here} on {agent.host}"
                           + (" with its fences" if ref is not None else "")) from None
    transfer = time.monotonic() - began
    reporter.stop()
    switch.finish()  # libvirt is done: switch over now unless the watcher already did
    if switch.error:
        raise IntentFailed(f"{intent.name} was transferred to {target} but its fences could "
                           f"not be handed over ({switch.error}): it stays PAUSED on "
                           f"{target} and runs nowhere")
    fence = (f"; fences handed to {target} in {switch.handover_s * 1000:.0f} ms "
             f"(token {switch.token})" if ref is not None else "")
    return (f"{intent.name} live-migrated from {agent.host} to {target} in {transfer:.2f} s"
            f"{fence}; switched over (handover + resume) in {switch.paused_s * 1000:.0f} ms")


class _Switchover:
    """Hands the fences over and resumes the guest on the destination as soon as the
    destination has finished the incoming migration (paused there, reason "user", while
    the source is paused too): the guest runs nowhere while the fences move. Without
    this, libvirt would only return after the source's qemu is gone (seconds later)."""

    def __init__(self, fencer, ref, target: str, uri: str, uuid: str,  # type: ignore[no-untyped-def]
                 source: libvirt.virDomain) -> None:
        self.fencer, self.ref, self.target, self.uri, self.uuid = fencer, ref, target, uri, uuid
        self.source = source
        self.token, self.handover_s, self.paused_s = 0, 0.0, 0.0
        self.error = ""
        self.resumed = False
        self._done = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="switchover", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def finish(self) -> None:
        self.stop()
        self._switch(committed=True)

    def _watch(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return  # finish() switches over once libvirt returns
        try:
            while not self._stop.wait(SWITCH_POLL_S):
                with contextlib.suppress(libvirt.libvirtError):
                    state, reason = conn.lookupByUUIDString(self.uuid).state()
                    if (state == libvirt.VIR_DOMAIN_PAUSED
                            and reason == libvirt.VIR_DOMAIN_PAUSED_USER
                            and self.source.state()[0] != libvirt.VIR_DOMAIN_RUNNING):
                        self._switch(committed=False, conn=conn)
                        return
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _switch(self, committed: bool, conn: libvirt.virConnect | None = None) -> None:
        """Hand the fences over (one transaction), then resume on the destination."""
        with self._done:
            if self.resumed or self.error:
                return
            began = time.monotonic()
            if self.ref is not None:
                try:
                    self.token = self.fencer.handover(self.ref, self.target)
                except FenceRefused as exc:
                    self.error = str(exc)
                    return
                self.handover_s = time.monotonic() - began
            own = conn is None
            conn = conn or libvirt.open(self.uri)
            try:
                dom = conn.lookupByUUIDString(self.uuid)
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
            finally:
                if own:
                    conn.close()
            self.resumed = True
            self.paused_s = time.monotonic() - began
            log.info("event=live_switchover guest=%s to=%s handover_ms=%.1f resume_ms=%.1f "
                     "by=%s", self.uuid, self.target, self.handover_s * 1000,
                     self.paused_s * 1000, "libvirt-return" if committed else "watch")


def receive(worker: IntentWorker, intent: Intent) -> str:
    """The destination's side: let the fence hook accept ONE incoming migration of the
    guest from ``params['from']`` (which must hold its fences) within a minute."""
    from agents.intents import IntentFailed

    agent = worker.agent
    source = str(intent.params.get("from") or "")
    server = getattr(agent, "hook_server", None)
    if server is None:
        raise IntentFailed(f"{agent.host} has no fence hook (setting 'hook_socket'): it "
                           f"cannot check an incoming live migration of {intent.name}")
    if not source or source == agent.host:
        raise IntentFailed(f"receiving {intent.name} needs the source host")
    server.expect(intent.guest, source)
    return f"{agent.host} expects {intent.name} from {source}"


def unsafe_disks(rec) -> bool:  # type: ignore[no-untyped-def]
    """True when a shared disk is a plain file (libvirt cannot tell it is shared)."""
    return any(d.shared and d.kind == "file" for d in rec.disks)


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


class _Progress:
    """Writes the libvirt job's memory progress into the intent while it runs."""

    def __init__(self, worker: IntentWorker, intent: Intent, dom: libvirt.virDomain) -> None:
        self.worker, self.intent, self.dom = worker, intent, dom
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="migrate-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        from dataclasses import replace

        store, keys = self.worker.agent.store, self.worker.agent.keys
        key = keys.intent(self.intent.host, self.intent.id)
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
                        store.put(key, encode(replace(self.intent, state="running",
                                                      message=text, updated=time.time())))
                    last = text
