"""Carry out intents addressed to this host, one at a time, and write the outcome back."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import libvirt

from agents import images
from agents.claims import GuestClaims
from agents.faults import NO_FAULTS, Faults
from agents.fencer import FenceRefused
from agents.livemigrate import LiveMigrator, incoming_guest, receive
from agents.ports import Domains, FenceHolder, IntentFailed, LeaseView, Receiver
from agents.readiness import console_file, console_size, wait_console_output
from agents.savedimage import check_saved_image
from agents.storagereg import NO_REGISTRAR, Registrar, RegistrationFailed
from gridtool import supervise
from gridtool.clock import SYSTEM, Clock
from gridtool.clone.rules import (
    ClonePlanError,
    check_name,
    golden_path,
    inside,
    template_disks,
)
from gridtool.clone.templates import forget_clone
from gridtool.errors import AuthError, LeaseGone, RegistryUnavailable
from gridtool.fencing.rules import FenceKind, GuestRef
from gridtool.registry import model
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError, GuestRecord
from gridtool.registry.records import DomainDefinition, Intent, IntentAction, decode, encode
from gridtool.registry.store import Store

log = logging.getLogger("gridtool.agent")

FINISHED_KEEP_S = 600.0  # finished intents nobody collected are removed after this
CLAIM_WAIT_S = 10.0  # a judgement of the guest in progress finishes first (at most this)

__all__ = ["IntentFailed", "IntentWorker"]


class IntentWorker:
    """A thread that takes intents for ``host`` from a queue and runs them in order.

    Collaborators: the ``store`` and ``keys`` the intents live in, the host's libvirt
    (``domains``), its ``fencer`` and ``lease``, the guest ``claims`` shared with the
    agent, ``images_dir`` for templates and clones, ``on_change(uuid)`` to have a guest
    looked at again, ``judge(record)`` to judge one now, the fence ``hook`` (None
    when the host has none) for ``receive``, the ``clock`` it reads the time from, the
    ``registrar`` that registers the host's PR key on a guest's LUNs before it runs here
    (``agents.storagereg``), and the test-only ``faults`` (``agents.faults``).
    The simulator runs it without its thread: :meth:`handle` per queued key.
    """

    def __init__(self, *, host: str, store: Store, keys: Keys, domains: Domains,
                 fencer: FenceHolder, lease: LeaseView, claims: GuestClaims,
                 images_dir: str, on_change: Callable[[str], None],
                 judge: Callable[[GuestRecord], None], hook: Receiver | None = None,
                 clock: Clock = SYSTEM, faults: Faults = NO_FAULTS,
                 registrar: Registrar = NO_REGISTRAR) -> None:
        self.host, self.store, self.keys = host, store, keys
        self.domains, self.fencer, self.lease, self.claims = domains, fencer, lease, claims
        self.images_dir, self.on_change, self.judge, self.hook = (images_dir, on_change,
                                                                   judge, hook)
        self.clock = clock
        self.faults = faults
        self.registrar = registrar
        self.live = LiveMigrator(host=host, store=store, keys=keys, domains=domains,
                                 fencer=fencer, lease=lease)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread = supervise.thread(self._loop, "intents", logger=log)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)

    def offer(self, key: str, raw: bytes) -> None:
        """A watched intent key changed: queue it if it still has to be done."""
        try:
            intent = decode(Intent, key, raw)
        except DecodeError as exc:
            log.warning("event=corrupt_intent host=%s key=%s error=%s", self.host, key,
                        exc.reason)
            return
        if intent.finished:
            return
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self.queue.put(key)

    def catch_up(self) -> None:
        """On resync: queue unfinished intents the watch may have missed; drop stale ones."""
        items, _ = self.store.list(self.keys.intents(self.host))
        now = self.clock.wall()
        for item in items:
            try:
                intent = decode(Intent, item.key, item.value)
            except DecodeError:
                continue
            if intent.finished and now - intent.updated > FINISHED_KEEP_S:
                self.store.delete(item.key)
            elif not intent.finished:
                self.offer(item.key, item.value)

    def _loop(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            self.handle(key)

    def handle(self, key: str) -> None:
        """Carry out the intent at ``key`` now (what the thread does with each queued key);
        registry trouble leaves it for a later offer or catch-up."""
        try:
            self._run(key)
        except (RegistryUnavailable, AuthError) as exc:
            log.warning("event=intent_deferred host=%s key=%s error=%s", self.host, key, exc)
        finally:
            with self._lock:
                self._queued.discard(key)

    def _run(self, key: str) -> None:
        item = self.store.get(key)
        if item is None:
            return  # withdrawn
        intent = decode(Intent, key, item.value)
        if intent.finished:
            return
        self._write(key, intent, "running", "")
        log.info("event=intent_start host=%s id=%s action=%s guest=%s", self.host,
                 intent.id, intent.action, intent.name)
        handler = HANDLERS.get(intent.action) if isinstance(intent.action, IntentAction) \
            else None
        if handler is None:
            state, message = "failed", f"unknown action {intent.action!r}"
        else:
            state, message = self._carry_out(handler, intent)
        self._write(key, intent, state, message)
        log.info("event=intent_%s host=%s id=%s action=%s guest=%s message=%s", state,
                 self.host, intent.id, intent.action, intent.name, message)
        self.on_change(intent.guest)

    def _carry_out(self, handler: Handler, intent: Intent) -> tuple[str, str]:
        """Run ``handler`` (with the guest busy unless it judges it itself): the state and
        message to write. Registry trouble propagates (the intent is retried later); any
        other error fails the intent with what it was."""
        if handler.claims:  # a judgement in progress on this guest finishes first
            self.claims.enter(intent.guest, CLAIM_WAIT_S)
        try:
            return "done", handler.run(self, intent)
        except IntentFailed as exc:
            return "failed", str(exc)
        except FenceRefused as exc:
            return "failed", f"refused: {exc}"
        except libvirt.libvirtError as exc:
            return "failed", "libvirt: " + " ".join(str(exc).split())
        except (RegistryUnavailable, AuthError):
            raise
        except Exception as exc:
            log.exception("event=intent_error host=%s id=%s action=%s guest=%s", self.host,
                          intent.id, intent.action, intent.name)
            return "failed", f"{intent.action} failed on {self.host}: " \
                f"{type(exc).__name__}: {exc}"
        finally:
            if handler.claims:
                self.claims.leave(intent.guest)

    def _write(self, key: str, intent: Intent, state: str, message: str) -> None:
        self.store.put(key, encode(replace(intent, state=state, message=message,
                                                 updated=self.clock.wall())))

    # -- actions -------------------------------------------------------------

    def _domain(self, intent: Intent) -> libvirt.virDomain:
        dom = self.domains.domain(intent.guest)
        if dom is not None:
            return dom
        item = self.store.get(self.keys.domain(intent.guest))
        if item is None:
            raise IntentFailed(f"guest {intent.name} is not defined on {self.host} "
                               "and the registry has no definition of it")
        definition = decode(DomainDefinition, item.key, item.value)
        log.info("event=guest_defined host=%s guest=%s from=registry", self.host,
                 intent.name)
        return self.domains.define(definition.xml)

    def _record(self, intent: Intent) -> GuestRecord:
        rec = self.domains.guest(intent.guest, self.host)
        if rec is None:
            raise IntentFailed(f"guest {intent.name} vanished from {self.host}")
        return rec

    def _ref(self, rec: GuestRecord) -> GuestRef | None:
        """The fencing view of ``rec`` (one read of its settings), None when unfenced."""
        return self.fencer.ref(rec) if rec.fenced else None

    def _take_fences(self, rec: GuestRecord, ref: GuestRef | None = None,
                     ) -> tuple[GuestRef | None, int]:
        """Acquire (or find this host holding) a fenced guest's fences before it runs:
        its ref (``ref``: as read already) and the fencing token ((None, 0) for an
        unfenced guest)."""
        ref = ref or self._ref(rec)
        if ref is None:
            return None, 0
        if ref.kind is FenceKind.HA and not self.lease.arm():
            if self.lease.lost.is_set():  # in flight until the resync after registering
                raise LeaseGone(f"{self.host}'s lease is lost: the start waits for "
                                "the fresh one")
            why = (f"its watchdog does not work ({self.lease.watchdog_problem})"
                   if self.lease.watchdog_problem else "its lease is not healthy")
            raise IntentFailed(f"{self.host} refuses to take an HA fence: {why}")
        return ref, self.fencer.acquire(ref)

    def _saved_image(self, intent: Intent, dom: libvirt.virDomain, ref: GuestRef | None,
                     doing: str) -> str:
        """Discard a stale managed save image before a start (it then boots afresh);
        IntentFailed when one cannot be judged. The reason an image was discarded."""
        verdict = check_saved_image(self.host, self.fencer, dom, ref)
        if not verdict.ok and not verdict.discard:
            raise IntentFailed(f"{intent.name} not {doing} on {self.host}: {verdict.reason}")
        return verdict.reason

    def _do_start(self, intent: Intent) -> str:
        dom = self._domain(intent)
        rec = self._record(intent)
        ref = self._ref(rec)  # read once: a start is a handful of round trips in series
        discarded = self._saved_image(intent, dom, ref, "started")
        ref, token = self._take_fences(rec, ref)
        if dom.isActive():
            return f"{intent.name} already running on {self.host}"
        if ref is not None:
            self._register(intent, ref)
        if self.faults.delay_before_create:  # test-only: a start racing the deadline
            time.sleep(self.faults.delay_before_create)
        ha = ref is not None and ref.kind is FenceKind.HA
        if ref is not None and ha:
            self._lease_allows_start(intent, ref)  # (passed: the deadline is >= 0.5 s away)
        with self.lease.creating(intent.guest) if ha else contextlib.nullcontext():
            began = self.clock.monotonic()
            try:
                dom.create()
            except libvirt.libvirtError:
                if rec.fenced:
                    self.fencer.release(self.fencer.ref(rec))
                raise
        log.info("event=guest_created host=%s guest=%s create_s=%.3f", self.host, intent.name,
                 self.clock.monotonic() - began)  # (what START_BUDGET_S is measured by)
        suffix = f" (fence token {token})" if token else ""
        if discarded:
            suffix += f"; booted afresh: its saved image was discarded ({discarded})"
        return f"{intent.name} started on {self.host}{suffix}"

    def _register(self, intent: Intent, ref: GuestRef) -> None:
        """Register the host's PR key on the guest's LUNs before it starts; fail closed
        (its fences given back) when a LUN refuses."""
        try:
            self.registrar.register(intent.name, ref.volumes)
        except RegistrationFailed as exc:
            with contextlib.suppress(RegistryUnavailable, AuthError):
                self.fencer.release(ref)
            raise IntentFailed(f"{intent.name} not started on {self.host}: {exc}") from None

    def _leave(self, name: str, volumes: tuple[str, ...]) -> None:
        """``name`` left for another host: unregister from the LUNs no guest here uses
        (what fails is logged: the guest's move succeeded)."""
        if not self.registrar.active:
            return
        with contextlib.suppress(RegistryUnavailable, AuthError):
            self.registrar.leave(name, volumes, set(self.fencer.refresh_held()))

    def _lease_allows_start(self, intent: Intent, ref: GuestRef) -> None:
        """The lease clock's last word before an HA guest's ``create()``: IntentFailed
        (its fences given back, if etcd answers) when the self-fence deadline is too
        near for the start to finish before it."""
        why = self.lease.why_not_start()
        if not why:
            return
        log.warning("event=start_refused host=%s guest=%s uuid=%s reason=%s", self.host,
                    intent.name, intent.guest, why)
        with contextlib.suppress(RegistryUnavailable, AuthError):  # (they die with the lease)
            self.fencer.release(ref)
        raise IntentFailed(f"{intent.name} not started on {self.host}: {why}")

    def _do_stop(self, intent: Intent) -> str:
        """Shut the guest down (destroyed after ``timeout``); with ``handover_to`` (a cold
        migration) hand its fences over. ``params["result"]["was_running"]`` says whether
        it ran: the migration starts it on the destination by that, not by a registry
        record that may be a moment behind."""
        dom = self._domain(intent)
        timeout = float(intent.params.get("timeout", 60))
        target = intent.params.get("handover_to")
        if target:  # cold migration: the destination defines it from the registry's copy
            self._publish_definition(intent, dom)
        how = "was not running"
        running = bool(dom.isActive())
        intent.params["result"] = {"was_running": running}
        if running:
            dom.shutdown()
            how = "shut down"
            if not self.domains.wait_stopped(dom, timeout):
                dom.destroy()
                how = f"destroyed after {timeout:g} s without shutting down"
        if target:
            return f"{intent.name} {how} on {self.host}" + self._handover(
                intent, str(target), how)
        self._release(intent)
        return f"{intent.name} {how} on {self.host}"

    def _publish_definition(self, intent: Intent, dom: libvirt.virDomain) -> None:
        """Put the guest's inactive XML in ``domains/<uuid>`` (agents keep it only for
        fenced guests; a migrating unfenced guest needs it too)."""
        xml = self.domains.inactive_xml(dom)
        self.store.put(self.keys.domain(intent.guest), encode(DomainDefinition(
            intent.guest, intent.name, xml, self.host, self.clock.wall())))

    def _handover(self, intent: Intent, target: str, how: str) -> str:
        """The guest is off: pass its fences to ``target`` (one transaction) instead of
        releasing them; if that is refused, release them and fail the intent."""
        rec = self.domains.guest(intent.guest, self.host)
        if rec is None or not rec.fenced:
            return ""
        ref = self.fencer.ref(rec)
        try:
            token = self.fencer.handover(ref, target)
        except FenceRefused as exc:
            released = self.fencer.release(ref)
            raise IntentFailed(
                f"{intent.name} {how} on {self.host}, but its fences could not be "
                f"handed to {target} ({exc})"
                + ("; released them" if released else "")) from None
        self._leave(intent.name, ref.volumes)
        return f"; fences handed to {target} (token {token})" if token else ""

    def _do_destroy(self, intent: Intent) -> str:
        dom = self._domain(intent)
        if dom.isActive():
            dom.destroy()
        self._release(intent)
        return f"{intent.name} destroyed on {self.host}"

    def _do_restart(self, intent: Intent) -> str:
        self._do_stop(intent)
        return self._do_start(intent).replace("started", "restarted")

    def _do_migrate(self, intent: Intent) -> str:
        """Live-migrate to ``params['to']``, fences handed over at switchover."""
        rec = self.domains.guest(intent.guest, self.host)
        outcome = self.live.migrate(intent, lambda: self._record(intent))
        if rec is not None and rec.fenced:  # (still held after a failure: kept)
            self._leave(intent.name, rec.volumes)
        return outcome

    def _do_receive(self, intent: Intent) -> str:
        """Accept one incoming live migration of the guest from ``params['from']``; the
        guest's LUNs come with the intent (:func:`incoming_guest`)."""
        source = str(intent.params.get("from") or "")
        guest = incoming_guest(intent)
        if self.registrar.active and self.hook is not None and source:  # before the switchover
            if guest is None:  # ordered by an older CLI: the source's record says
                item = self.store.get(self.keys.guest(source, intent.guest))
                if item is None:
                    raise IntentFailed(f"{self.host} will not receive {intent.name}: "
                                       f"{source} has no record of it, so its LUNs are "
                                       "unknown")
                rec = model.decode(GuestRecord, item.key, item.value)
                guest = GuestRef(intent.guest, rec.name, FenceKind.PINNED, rec.volumes,
                                 unidentified=rec.unidentified)
            try:
                self.registrar.register(intent.name, guest.volumes)
            except RegistrationFailed as exc:
                raise IntentFailed(f"{self.host} will not receive {intent.name}: {exc}") from None
        return receive(self.hook, self.host, intent, guest)

    def _do_refresh(self, intent: Intent) -> str:
        """Settings changed (HA on/off): judge the guest again, re-putting its fences."""
        self.judge(self._record(intent))
        return f"{intent.name} refreshed on {self.host}"

    def _do_define(self, intent: Intent) -> str:
        xml = intent.params.get("xml")
        if not isinstance(xml, str):
            raise IntentFailed("define needs the domain XML")
        dom = self.domains.define(xml)
        return f"{dom.name()} defined on {self.host} as {dom.UUIDString()}"

    def _do_undefine(self, intent: Intent) -> str:
        dom = self._domain(intent)
        if dom.isActive():
            raise IntentFailed(f"{intent.name} is running on {self.host}: stop it first")
        self._release(intent)
        dom.undefine()
        return f"{intent.name} undefined on {self.host}"

    def _release(self, intent: Intent) -> None:
        rec = self.domains.guest(intent.guest, self.host)
        if rec is not None and rec.fenced:
            self.fencer.release(self.fencer.ref(rec))

    # -- templates and clones (gridtool.clone.shell) --------------------------------
    # Results the caller needs (XML, image paths, phase timings) go back in
    # ``params["result"]``: the outcome written by ``_write`` carries the params along.

    def _do_template(self, intent: Intent) -> str:
        """Freeze the guest's disks into read-only golden images under images_dir (a
        running guest is paused meanwhile, so the copies are crash-consistent)."""
        name, images_dir = str(intent.params.get("template", "")), self.images_dir
        dom = self._domain(intent)
        xml = self.domains.inactive_xml(dom)
        try:
            disks = template_disks(xml)
            check_name("template", name)
        except ClonePlanError as exc:
            raise IntentFailed(str(exc)) from None
        folder = images.template_dir(images_dir, name)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir()  # exclusive: golden images are written once
        except FileExistsError:
            raise IntentFailed(f"golden images of template {name} already exist in "
                               f"{folder}") from None
        except OSError as exc:
            raise IntentFailed(f"cannot create {folder}: {exc.strerror}") from None
        copying = any(d.source and os.path.exists(d.source) for d in disks)
        paused = copying and dom.info()[0] == libvirt.VIR_DOMAIN_RUNNING
        golden: dict[str, str] = {}
        try:
            if paused:
                dom.suspend()
            for disk in disks:
                golden[disk.target] = golden_path(images_dir, name, disk.target)
                images.freeze(images_dir, golden[disk.target], disk.source)
        except (images.ImageError, libvirt.libvirtError) as exc:
            images.remove_template(images_dir, name)
            raise IntentFailed(f"template {name}: " + " ".join(str(exc).split())) from None
        finally:
            if paused:
                dom.resume()
        intent.params["result"] = {"xml": xml, "images": golden, "images_dir": images_dir,
                                   "disks": [d.target for d in disks]}
        return f"{intent.name}: {len(disks)} disk(s) frozen as template {name} on {self.host}"

    def _do_remove_template(self, intent: Intent) -> str:
        """Delete a template's golden images (the caller checked no clone uses them)."""
        name = str(intent.params.get("template", ""))
        try:
            check_name("template", name)
            gone = images.remove_template(self.images_dir, name)
        except (ClonePlanError, images.ImageError, OSError) as exc:
            raise IntentFailed(f"template {name}: {exc}") from None
        return f"golden images of {name} " + ("deleted" if gone else "were already gone")

    def _do_clone(self, intent: Intent) -> str:
        """Make a clone: a qcow2 overlay per disk on its golden image, define the rewritten
        XML, start it (unless ``start`` is false). A failure removes what it made."""
        params, host = intent.params, self.host
        xml, overlays = params.get("xml"), params.get("overlays")
        if not isinstance(xml, str) or not isinstance(overlays, dict):
            raise IntentFailed("clone needs the domain XML and the overlays")
        conn = self.domains.connection()
        leftover = self.domains.domain(intent.guest)
        stale = [str(s.get("path")) for s in overlays.values()
                 if isinstance(s, dict) and os.path.lexists(str(s.get("path")))]
        if leftover is not None or stale:  # the UUID is new: only an earlier attempt at
            self._undo_clone(conn, leftover, stale)  # this intent (agent restarted) made them
        timings: dict[str, float] = {}
        params["result"] = {"timings": timings}
        made: list[str] = []
        dom = None
        try:
            began = self.clock.monotonic()
            for spec in overlays.values():
                images.create_overlay(conn, self.images_dir, str(spec["path"]),
                                      str(spec["backing"]))
                made.append(str(spec["path"]))
            timings["overlay"] = self.clock.monotonic() - began
            began = self.clock.monotonic()
            dom = self.domains.define(xml)
            timings["define"] = self.clock.monotonic() - began
            if params.get("start", True):
                began = self.clock.monotonic()
                self._do_start(intent)
                timings["start"] = self.clock.monotonic() - began
        except (images.ImageError, IntentFailed, FenceRefused, libvirt.libvirtError,
                KeyError, TypeError) as exc:
            self._undo_clone(conn, dom, made)
            raise IntentFailed(f"clone {intent.name} on {host}: "
                               + " ".join(str(exc).split())) from None
        return f"{intent.name} cloned on {host}" + (
            " and started" if params.get("start", True) else "")

    # -- warm pool workers (gridtool.pools.keeper) ---------------------------------

    def _do_sleep(self, intent: Intent) -> str:
        """Put a booted warm worker to sleep: ``hibernate`` (managed save: memory to a
        file, the domain off; its fences kept, so that a wake can tell the image is not
        stale) or ``pause`` (suspended, RAM and fences held). Already asleep so: done (a
        manager that failed over may ask twice)."""
        mode = str(intent.params.get("mode", ""))
        dom = self._domain(intent)
        if (mode == "hibernate" and not dom.isActive() and dom.hasManagedSaveImage(0)) or (
                mode == "pause" and dom.isActive()
                and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED):
            return f"{intent.name} already asleep ({mode}) on {self.host}"
        if not dom.isActive():
            raise IntentFailed(f"{intent.name} is not running on {self.host}")
        began = self.clock.monotonic()
        if mode == "pause":
            dom.suspend()
        elif mode == "hibernate":
            dom.managedSave(0)  # its fences stay: they vouch for the image (fencing.saved)
        else:
            raise IntentFailed(f"unknown warm mode {mode!r}")
        intent.params["result"] = {"timings": {"sleep": self.clock.monotonic() - began}}
        return f"{intent.name} asleep ({mode}) on {self.host}"

    def _do_wake(self, intent: Intent) -> str:
        """Wake a warm worker: resume a paused one (its fences checked first), or start
        a hibernated one, which restores its managed save image through the fences and
        the hook like any start; refused when the image is stale (discarded here:
        :mod:`gridtool.fencing.saved`) or gone. With ``alive_timeout`` > 0 and a serial
        file, done only once the guest writes to its console after the wake
        (``timings.alive``)."""
        dom = self._domain(intent)
        path = console_file(self.domains.inactive_xml(dom))
        before = console_size(path) if path else -1
        timings: dict[str, float] = {}
        intent.params["result"] = {"timings": timings}
        began = self.clock.monotonic()
        if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            self._take_fences(self._record(intent))
            dom.resume()
            how = "resumed"
        elif not dom.isActive():
            stale = self._saved_image(intent, dom, self._ref(self._record(intent)), "woken")
            if stale:  # never restored; the pool replaces it
                raise IntentFailed(f"{intent.name} not woken on {self.host}: {stale}; its "
                                   "saved image was discarded")
            if not dom.hasManagedSaveImage(0):  # discarded as stale earlier, or lost
                raise IntentFailed(f"{intent.name} not woken on {self.host}: it has no "
                                   "saved image (a stale one is discarded: see the "
                                   "agent's stale_image_discarded event)")
            self._do_start(intent)
            how = "restored from its managed save"
        else:
            how = "already running"
        timings["wake"] = self.clock.monotonic() - began
        timeout = float(intent.params.get("alive_timeout", 0) or 0)
        if path and timeout > 0:
            alive = wait_console_output(path, before, timeout)
            if alive is None:
                raise IntentFailed(f"{intent.name} {how} on {self.host} but wrote nothing "
                                   f"to its console within {timeout:g} s")
            timings["alive"] = self.clock.monotonic() - began
        return f"{intent.name} {how} on {self.host}"

    def _undo_clone(self, conn: libvirt.virConnect, dom: libvirt.virDomain | None,
                    made: list[str]) -> None:
        """Remove a half-made clone: its definition and the overlays it created."""
        try:
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        except libvirt.libvirtError as exc:
            log.error("event=clone_undo_failed host=%s error=%s", self.host,
                      " ".join(str(exc).split()))
        for path in made:
            try:
                images.delete_overlay(conn, self.images_dir, path)
            except images.ImageError as exc:
                log.error("event=clone_undo_failed host=%s error=%s", self.host, exc)

    def _do_remove_clone(self, intent: Intent) -> str:
        """Destroy and undefine a clone, delete its overlays, forget its records."""
        images_dir, params = self.images_dir, intent.params
        clones_dir = os.path.join(images_dir, "clones")
        if self.faults.delay_before_remove:  # test-only: a slow removal
            time.sleep(self.faults.delay_before_remove)
        overlays = {str(p) for p in params.get("overlays") or []}
        conn = self.domains.connection()
        dom = self.domains.domain(intent.guest)
        if dom is not None:
            sources = images.disk_sources(self.domains.inactive_xml(dom))
            overlays |= {p for p in sources if inside(p, clones_dir)}
            if dom.isActive():
                dom.destroy()
            self._release(intent)
            if dom.isPersistent():  # with a warm worker's managed save image, if any
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        try:
            deleted = [p for p in sorted(overlays)
                       if images.delete_overlay(conn, images_dir, p)]
        except images.ImageError as exc:
            raise IntentFailed(str(exc)) from None
        if params.get("template"):  # (pool membership is the caller's: hosts cannot write
            # pools/, and a pool forgets a member at once when it asks for its removal)
            forget_clone(self.store, self.keys, str(params["template"]),
                         intent.guest, settings=False)  # (nor settings/: the caller's)
        return (f"{intent.name} removed from {self.host} "
                f"({len(deleted)} overlay(s) deleted)")


@dataclass(frozen=True)
class Handler:
    """How the worker carries out one action: ``run(worker, intent)`` returns the outcome
    line; ``claims``: the guest is busy meanwhile (refresh judges it itself instead)."""

    run: Callable[[IntentWorker, Intent], str]
    claims: bool = True


HANDLERS: dict[IntentAction, Handler] = {
    IntentAction.START: Handler(IntentWorker._do_start),
    IntentAction.STOP: Handler(IntentWorker._do_stop),
    IntentAction.DESTROY: Handler(IntentWorker._do_destroy),
    IntentAction.RESTART: Handler(IntentWorker._do_restart),
    IntentAction.DEFINE: Handler(IntentWorker._do_define),
    IntentAction.UNDEFINE: Handler(IntentWorker._do_undefine),
    IntentAction.REFRESH: Handler(IntentWorker._do_refresh, claims=False),
    IntentAction.MIGRATE: Handler(IntentWorker._do_migrate),
    IntentAction.RECEIVE: Handler(IntentWorker._do_receive),
    IntentAction.TEMPLATE: Handler(IntentWorker._do_template),
    IntentAction.REMOVE_TEMPLATE: Handler(IntentWorker._do_remove_template),
    IntentAction.CLONE: Handler(IntentWorker._do_clone),
    IntentAction.REMOVE_CLONE: Handler(IntentWorker._do_remove_clone),
    IntentAction.SLEEP: Handler(IntentWorker._do_sleep),
    IntentAction.WAKE: Handler(IntentWorker._do_wake),
}
