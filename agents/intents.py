"""Carry out intents addressed to this host, one at a time, and write the outcome back."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING

import libvirt

from agents import images
from agents.fencer import FenceRefused
from gridtool.cloneplan import ClonePlanError, check_name, golden_path, inside, template_disks
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.fencing import FenceKind
from gridtool.model import DecodeError
from gridtool.records import DomainDefinition, Intent, decode, encode
from gridtool.templates import forget_clone

if TYPE_CHECKING:
    from agents.agent import Agent

log = logging.getLogger("gridtool.agent")

FINISHED_KEEP_S = 600.0  # finished intents nobody collected are removed after this


class IntentFailed(Exception):
    """The intent cannot be carried out; str() is the one-line reason."""


class IntentWorker:
    """A thread that takes intents from a queue and runs them in order."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="intents", daemon=True)

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
            log.warning("event=corrupt_intent host=%s key=%s error=%s", self.agent.host, key,
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
        items, _ = self.agent.store.list(self.agent.keys.intents(self.agent.host))
        now = time.time()
        for item in items:
            try:
                intent = decode(Intent, item.key, item.value)
            except DecodeError:
                continue
            if intent.finished and now - intent.updated > FINISHED_KEEP_S:
                self.agent.store.delete(item.key)
            elif not intent.finished:
                self.offer(item.key, item.value)

    def _loop(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                self._run(key)
            except (RegistryUnavailable, AuthError) as exc:
                log.warning("event=intent_deferred host=%s key=%s error=%s", self.agent.host,
                            key, exc)
            finally:
                with self._lock:
                    self._queued.discard(key)

    def _run(self, key: str) -> None:
        item = self.agent.store.get(key)
        if item is None:
            return  # withdrawn
        intent = decode(Intent, key, item.value)
        if intent.finished:
            return
        self._write(key, intent, "running", "")
        log.info("event=intent_start host=%s id=%s action=%s guest=%s", self.agent.host,
                 intent.id, intent.action, intent.name)
        with self.agent.judged:  # a judgement in progress on this guest finishes first
            self.agent.judged.wait_for(lambda: intent.guest not in self.agent.judging, 10)
            self.agent.busy.add(intent.guest)
        try:
            message = getattr(self, f"_do_{intent.action}")(intent)
            state = "done"
        except IntentFailed as exc:
            state, message = "failed", str(exc)
        except FenceRefused as exc:
            state, message = "failed", f"refused: {exc}"
        except libvirt.libvirtError as exc:
            state, message = "failed", "libvirt: " + " ".join(str(exc).split())
        except AttributeError:
            state, message = "failed", f"unknown action {intent.action!r}"
        finally:
            with self.agent.busy_lock:
                self.agent.busy.discard(intent.guest)
        self._write(key, intent, state, message)
        log.info("event=intent_%s host=%s id=%s action=%s guest=%s message=%s", state,
                 self.agent.host, intent.id, intent.action, intent.name, message)
        self.agent.changes.put(("guest", intent.guest, None))

    def _write(self, key: str, intent: Intent, state: str, message: str) -> None:
        from dataclasses import replace

        self.agent.store.put(key, encode(replace(intent, state=state, message=message,
                                                 updated=time.time())))

    # -- actions -------------------------------------------------------------

    def _domain(self, intent: Intent) -> libvirt.virDomain:
        dom = self.agent.libvirt.domain(intent.guest)
        if dom is not None:
            return dom
        item = self.agent.store.get(self.agent.keys.domain(intent.guest))
        if item is None:
            raise IntentFailed(f"guest {intent.name} is not defined on {self.agent.host} "
                               "and the registry has no definition of it")
        definition = decode(DomainDefinition, item.key, item.value)
        log.info("event=guest_defined host=%s guest=%s from=registry", self.agent.host,
                 intent.name)
        return self.agent.libvirt.define(definition.xml)

    def _record(self, intent: Intent):  # type: ignore[no-untyped-def]
        rec = self.agent.libvirt.guest(intent.guest, self.agent.host)
        if rec is None:
            raise IntentFailed(f"guest {intent.name} vanished from {self.agent.host}")
        return rec

    def _do_start(self, intent: Intent) -> str:
        dom = self._domain(intent)
        rec = self._record(intent)
        token = 0
        if rec.fenced:
            ref = self.agent.fencer.ref(rec)
            if ref.kind is FenceKind.HA and not self.agent.lease.arm():
                raise IntentFailed(f"{self.agent.host}'s lease is not healthy: "
                                   "refusing to take an HA fence")
            token = self.agent.fencer.acquire(ref)
        if dom.isActive():
            return f"{intent.name} already running on {self.agent.host}"
        try:
            dom.create()
        except libvirt.libvirtError:
            if rec.fenced:
                self.agent.fencer.release(self.agent.fencer.ref(rec))
            raise
        suffix = f" (fence token {token})" if token else ""
        return f"{intent.name} started on {self.agent.host}{suffix}"

    def _do_stop(self, intent: Intent) -> str:
        dom = self._domain(intent)
        timeout = float(intent.params.get("timeout", 60))
        target = intent.params.get("handover_to")
        if target:  # cold migration: the destination defines it from the registry's copy
            self._publish_definition(intent, dom)
        how = "was not running"
        if dom.isActive():
            dom.shutdown()
            how = "shut down"
            if not self.agent.libvirt.wait_stopped(dom, timeout):
                dom.destroy()
                how = f"destroyed after {timeout:g} s without shutting down"
        if target:
            return f"{intent.name} {how} on {self.agent.host}" + self._handover(
                intent, str(target), how)
        self._release(intent)
        return f"{intent.name} {how} on {self.agent.host}"

    def _publish_definition(self, intent: Intent, dom: libvirt.virDomain) -> None:
        """Put the guest's inactive XML in ``domains/<uuid>`` (agents keep it only for
        fenced guests; a migrating unfenced guest needs it too)."""
        xml = self.agent.libvirt.inactive_xml(dom)
        self.agent.store.put(self.agent.keys.domain(intent.guest), encode(DomainDefinition(
            intent.guest, intent.name, xml, self.agent.host, time.time())))

    def _handover(self, intent: Intent, target: str, how: str) -> str:
        """The guest is off: pass its fences to ``target`` (one transaction) instead of
        releasing them; if that is refused, release them and fail the intent."""
        rec = self.agent.libvirt.guest(intent.guest, self.agent.host)
        if rec is None or not rec.fenced:
            return ""
        ref = self.agent.fencer.ref(rec)
        try:
            token = self.agent.fencer.handover(ref, target)
        except FenceRefused as exc:
            released = self.agent.fencer.release(ref)
            raise IntentFailed(
                f"{intent.name} {how} on {self.agent.host}, but its fences could not be "
                f"handed to {target} ({exc})"
                + ("; released them" if released else "")) from None
        return f"; fences handed to {target} (token {token})" if token else ""

    def _do_destroy(self, intent: Intent) -> str:
        dom = self._domain(intent)
        if dom.isActive():
            dom.destroy()
        self._release(intent)
        return f"{intent.name} destroyed on {self.agent.host}"

    def _do_restart(self, intent: Intent) -> str:
        self._do_stop(intent)
        return self._do_start(intent).replace("started", "restarted")

    def _do_migrate(self, intent: Intent) -> str:
        """Live-migrate to ``params['to']``, fences handed over at switchover."""
        from agents.livemigrate import live_migrate

        return live_migrate(self, intent)

    def _do_receive(self, intent: Intent) -> str:
        """Accept one incoming live migration of the guest from ``params['from']``."""
        from agents.livemigrate import receive

        return receive(self, intent)

    def _do_refresh(self, intent: Intent) -> str:
        """Settings changed (HA on/off): judge the guest again, re-putting its fences."""
        rec = self._record(intent)
        with self.agent.busy_lock:
            self.agent.busy.discard(intent.guest)
        self.agent.judge(rec, clean_stop=None)
        return f"{intent.name} refreshed on {self.agent.host}"

    def _do_define(self, intent: Intent) -> str:
        xml = intent.params.get("xml")
        if not isinstance(xml, str):
            raise IntentFailed("define needs the domain XML")
        dom = self.agent.libvirt.define(xml)
        return f"{dom.name()} defined on {self.agent.host} as {dom.UUIDString()}"

    def _do_undefine(self, intent: Intent) -> str:
        dom = self._domain(intent)
        if dom.isActive():
            raise IntentFailed(f"{intent.name} is running on {self.agent.host}: stop it first")
        self._release(intent)
        dom.undefine()
        return f"{intent.name} undefined on {self.agent.host}"

    def _release(self, intent: Intent) -> None:
        rec = self.agent.libvirt.guest(intent.guest, self.agent.host)
        if rec is not None and rec.fenced:
            self.agent.fencer.release(self.agent.fencer.ref(rec))

    # -- templates and clones (gridtool.clone) --------------------------------
    # Results the caller needs (XML, image paths, phase timings) go back in
    # ``params["result"]``: the outcome written by ``_write`` carries the params along.

    def _do_template(self, intent: Intent) -> str:
        """Freeze the guest's disks into read-only golden images under images_dir (a
        running guest is paused meanwhile, so the copies are crash-consistent)."""
        name, images_dir = str(intent.params.get("template", "")), self.agent.cfg.images_dir
        dom = self._domain(intent)
        xml = self.agent.libvirt.inactive_xml(dom)
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
        return f"{intent.name}: {len(disks)} disk(s) frozen as template {name} on {self.agent.host}"

    def _do_remove_template(self, intent: Intent) -> str:
        """Delete a template's golden images (the caller checked no clone uses them)."""
        name = str(intent.params.get("template", ""))
        try:
            check_name("template", name)
            gone = images.remove_template(self.agent.cfg.images_dir, name)
        except (ClonePlanError, images.ImageError, OSError) as exc:
            raise IntentFailed(f"template {name}: {exc}") from None
        return f"golden images of {name} " + ("deleted" if gone else "were already gone")

    def _do_clone(self, intent: Intent) -> str:
        """Make a clone: a qcow2 overlay per disk on its golden image, define the rewritten
        XML, start it (unless ``start`` is false). A failure removes what it made."""
        params, host = intent.params, self.agent.host
        xml, overlays = params.get("xml"), params.get("overlays")
        if not isinstance(xml, str) or not isinstance(overlays, dict):
            raise IntentFailed("clone needs the domain XML and the overlays")
        conn = self.agent.libvirt._require()
        leftover = self.agent.libvirt.domain(intent.guest)
        stale = [str(s.get("path")) for s in overlays.values()
                 if isinstance(s, dict) and os.path.lexists(str(s.get("path")))]
        if leftover is not None or stale:  # the UUID is new: only an earlier attempt at
            self._undo_clone(conn, leftover, stale)  # this intent (agent restarted) made them
        timings: dict[str, float] = {}
        params["result"] = {"timings": timings}
        made: list[str] = []
        dom = None
        try:
            began = time.monotonic()
            for spec in overlays.values():
                images.create_overlay(conn, self.agent.cfg.images_dir, str(spec["path"]),
                                      str(spec["backing"]))
                made.append(str(spec["path"]))
            timings["overlay"] = time.monotonic() - began
            began = time.monotonic()
            dom = self.agent.libvirt.define(xml)
            timings["define"] = time.monotonic() - began
            if params.get("start", True):
                began = time.monotonic()
                self._do_start(intent)
                timings["start"] = time.monotonic() - began
        except (images.ImageError, IntentFailed, FenceRefused, libvirt.libvirtError,
                KeyError, TypeError) as exc:
            self._undo_clone(conn, dom, made)
            raise IntentFailed(f"clone {intent.name} on {host}: "
                               + " ".join(str(exc).split())) from None
        return f"{intent.name} cloned on {host}" + (
            " and started" if params.get("start", True) else "")

    def _undo_clone(self, conn: libvirt.virConnect, dom: libvirt.virDomain | None,
                    made: list[str]) -> None:
        """Remove a half-made clone: its definition and the overlays it created."""
        try:
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        except libvirt.libvirtError as exc:
            log.error("event=clone_undo_failed host=%s error=%s", self.agent.host,
                      " ".join(str(exc).split()))
        for path in made:
            try:
                images.delete_overlay(conn, self.agent.cfg.images_dir, path)
            except images.ImageError as exc:
                log.error("event=clone_undo_failed host=%s error=%s", self.agent.host, exc)

    def _do_remove_clone(self, intent: Intent) -> str:
        """Destroy and undefine a clone, delete its overlays, forget its records."""
        images_dir, params = self.agent.cfg.images_dir, intent.params
        clones_dir = os.path.join(images_dir, "clones")
        overlays = {str(p) for p in params.get("overlays") or []}
        conn = self.agent.libvirt._require()
        dom = self.agent.libvirt.domain(intent.guest)
        if dom is not None:
            sources = images.disk_sources(self.agent.libvirt.inactive_xml(dom))
            overlays |= {p for p in sources if inside(p, clones_dir)}
            if dom.isActive():
                dom.destroy()
            self._release(intent)
            if dom.isPersistent():
                dom.undefine()
        try:
            deleted = [p for p in sorted(overlays)
                       if images.delete_overlay(conn, images_dir, p)]
        except images.ImageError as exc:
            raise IntentFailed(str(exc)) from None
        if params.get("template"):  # (pool membership is the caller's: hosts cannot write
            # pools/, and a pool forgets a member at once when it asks for its removal)
            forget_clone(self.agent.store, self.agent.keys, str(params["template"]),
                         intent.guest)
        return (f"{intent.name} removed from {self.agent.host} "
                f"({len(deleted)} overlay(s) deleted)")
