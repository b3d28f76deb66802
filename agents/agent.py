"""The agent: mirror one host's libvirt into the registry, under the host's lease, and
enforce its fences.

Threads: libvirt's event loop (pushes changed guests onto a queue); the lease
keepalive and its guard (``agents.lease``: self-fence at the deadline); the intent
worker (carries out what the CLI and the manager ask of this host, one at a time: the
slow starts, stops and migrations); and the main loop here, which owns record writes:
full resync on start, on reconnect and every ``resync_interval``, one record write per
lifecycle event in between, and the fence judgement of every fenced guest it sees. Its
libvirt calls go through ``agents.bounded`` (a deadline each; the loop keeps turning,
and petting systemd's watchdog, while a call waits behind a slow start).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import libvirt

from agents.bounded import BoundedCalls, LibvirtStalled
from agents.claims import GuestClaims
from agents.faults import Faults
from agents.fencer import Fencer, FenceRefused
from agents.heartbeat import Heartbeat
from agents.hooksock import HookServer
from agents.identity import HostNameTaken, Registration, admit, read_identity
from agents.intents import IntentWorker
from agents.lease import HostLease, Watchdog
from agents.libvirt_source import LibvirtSource
from agents.readiness import ReadinessWatcher
from agents.savedimage import check_saved_image
from agents.selffence import SelfFence
from agents.settings import HostSettings
from agents.storagereg import Registrar, port_opener
from agents.xenwatch import XenWatch, XlError
from gridtool import __version__, supervise
from gridtool.backoff import Backoff
from gridtool.config import Config
from gridtool.domains import xen
from gridtool.domains.devices import parse_local_domain
from gridtool.domains.xml import DomainXMLError
from gridtool.errors import AuthError, LeaseGone, RegistryUnavailable
from gridtool.fencing.etcdversions import FIXED_VERSIONS, revokes_leases_early
from gridtool.fencing.rules import (
    Act,
    FenceKind,
    GuestRef,
    IntruderPolicy,
    Judgement,
    LeaseClock,
    Observation,
    Observed,
    judge_running,
    judge_stopped,
)
from gridtool.registry.fleet import Registry
from gridtool.registry.model import ACTIVE_STATES, GuestRecord, HostRecord
from gridtool.registry.records import DomainDefinition, Violation, decode, encode
from gridtool.registry.store import Event, Store, Watch
from gridtool.registry.sync import plan_sync
from gridtool.sdnotify import Notifier

log = logging.getLogger("gridtool.agent")

_RESYNC = ("resync", "", None)
_HOST = ("host", "", None)  # the host record changed (its watchdog began or stopped working)
_SETTINGS = ("settings", "", None)  # the host's settings in the registry changed
_XEN = ("xen", "", None)  # a new probe of Xen's own domain list (agents.xenwatch)
REGISTER_ATTEMPTS = 5  # registrations racing with another agent's before a backoff
#: A clean stop without a watchdog waits this long for its HA guests to be confirmed gone
#: (a SIGKILLed QEMU goes in milliseconds; libvirt's destroy alone may take 10 s).
STOP_SELF_FENCE_S = 15.0


class Agent:
    """One host's agent. ``run()`` blocks until ``stop()``.

    Under systemd (``Type=notify``) it tells ``notifier`` READY once the first resync is
    done and pets the unit's watchdog on every turn of the main loop: a main loop stuck
    (in a libvirt call that never returns, say) stops petting and systemd restarts it."""

    def __init__(self, cfg: Config, store: Store, notifier: Notifier | None = None) -> None:
        cfg.require("host", "libvirt_uri")
        self.settings = HostSettings(cfg, store)
        cfg = self.settings.initial()  # the registry's host settings over agent.conf
        self.cfg = cfg
        self.host: str = cfg.host  # type: ignore[assignment]  # cfg.require() checked it is set
        self.identity = read_identity(cfg.machine_id_file)  # ConfigError: refuse to start
        self.keys = cfg.keys
        self.registry = Registry(store, cfg.keys)
        self.store = store
        self.changes: queue.Queue[tuple[str, str, bool | None]] = queue.Queue()
        self.faults = Faults.parse(cfg.fault_points)  # ConfigError: refuse to start
        self.libvirt = LibvirtSource(
            cfg.libvirt_uri or "", cfg.shared_rules,
            on_change=self._lifecycle_event,
            on_close=lambda: self.changes.put(_RESYNC), run_dir=cfg.libvirt_run_dir)
        watchdog = Watchdog(
            cfg.watchdog, cfg.watchdog_timeout, cfg.watchdog_kind,
            limit=LeaseClock.start(cfg.ttl, 0.0).max_watchdog_timeout,
            on_change=lambda: self.changes.put(_HOST)) if cfg.watchdog else None
        # The watchdog is first tended once the fences this host holds are known: right
        # after resuming a predecessor's lease (its last pet must not run out during a
        # slow first resync), else once the first resync has judged every guest.
        self.lease = HostLease(store, cfg.ttl, self.host,
                               lambda in_doubt: self.self_fencer.step(in_doubt), watchdog,
                               has_ha_guests=lambda: bool(self.fencer.ha_guests()),
                               may_pet=lambda: self._fences_known,
                               came_up=lambda uuid: self.self_fencer.came_up(uuid))
        self.fencer = Fencer(store, cfg.keys, self.host, lambda: self.lease.lease)
        self.heartbeat = Heartbeat(store, cfg.keys, self.host, self._beat_lease)
        self.self_fencer = SelfFence(self.host, self.fencer, self.libvirt,
                                     pid_of=self.libvirt.qemu_pid,
                                     destroy_fails=self.faults.self_fence_destroy_fails,
                                     slow_destroy=self.faults.self_fence_slow_destroy)
        # guests an intent or the fence hook works on, and guests judge() acts on
        self.claims = GuestClaims()
        self.hook_server: HookServer | None = None
        if cfg.hook_socket:  # the libvirt fence hook asks us here
            self.hook_server = HookServer(
                cfg.hook_socket, host=self.host, rules=cfg.shared_rules, fencer=self.fencer,
                claims=self.claims, domains=self.libvirt, on_change=self._look_again,
                policy=IntruderPolicy(cfg.intruder_policy), report=self._report_arrival,
                lease=self.lease, registry_silence=store.unanswered_for)
        self.intents = IntentWorker(
            host=self.host, store=store, keys=cfg.keys, domains=self.libvirt,
            fencer=self.fencer, lease=self.lease, claims=self.claims,
            images_dir=cfg.images_dir, on_change=self._look_again,
            judge=lambda rec: self.judge(rec, clean_stop=None), hook=self.hook_server,
            faults=self.faults, registrar=Registrar(self.host, port_opener(cfg)))
        self.readiness = ReadinessWatcher(self._look_again)
        self.libvirt.readiness = self.readiness
        # On a Xen dom0: Xen's own domain list beside libvirt's (xl behind libvirt's back,
        # the toolstack's health)
        self.xen = XenWatch.for_uri(cfg.libvirt_uri or "", lambda: self.changes.put(_XEN),
                                    active=self._libvirt_active)
        self._xen_before: tuple[xen.XenDomain, ...] = ()
        self._xen_seen: set[tuple[int, str]] = set()  # xl-made domains already judged
        self.unhealthy = ""  # why the hypervisor cannot be trusted to list its guests
        self.stalled = ""  # a main-loop libvirt call with no answer by its deadline
        self._node: dict | None = None  # libvirt's node info, last read
        self.notifier = notifier or Notifier()
        self.calls = BoundedCalls(tick=self.notifier.pet, on_stall=self._libvirt_stalled,
                                  on_answer=self._libvirt_answered)
        self.started_at = time.time()
        self._stopping = threading.Event()
        self._next_resync = 0.0
        self._libvirt_backoff = Backoff()
        self._registry_backoff = Backoff()
        self._registry_ok = True
        self._xml_written: dict[str, str] = {}
        # The first resync adopts fenced guests that ran before this agent started
        # (installing gridtool on a running host); later ones without a fence are violations.
        self._adopting = True
        self._fences_known = False  # the watchdog may be tended (see _register, resync)
        self._etcd_checked = False  # early-revocation versions logged (once, at start)
        self._intent_watch: Watch | None = None
        self._refused: HostNameTaken | None = None  # the host name is another machine's

    # -- lifecycle -----------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self.changes.put(_RESYNC)  # wake the main loop

    def run(self) -> None:
        log.info("event=agent_start host=%s uri=%s endpoints=%s ttl=%s version=%s",
                 self.host, self.cfg.libvirt_uri, ",".join(self.cfg.endpoints),
                 self.cfg.ttl, __version__)
        if self.faults.any:
            log.warning("event=fault_points host=%s faults=%s note=test only",
                        self.host, ",".join(self.cfg.fault_points))
        self.lease.start()
        self.heartbeat.start()
        self.intents.start()
        self.readiness.start()
        if self.xen is not None:
            self.xen.start()
        if self.hook_server is not None:
            self.hook_server.start()
        if self.cfg.manager:
            from gridtool.fencing.storagefence import from_config
            from gridtool.ha.manager import Manager

            manager = Manager(self.cfg, self.store, self.host,
                              storage_fencer=from_config(self.cfg))
            supervise.start(manager.run, "manager", (self._stopping,), logger=log)
        self.calls.owner = threading.current_thread()
        while not self._stopping.is_set():
            self.notifier.pet()  # each turn of this loop, never from another thread
            try:
                self._step()
                self._set_registry_ok(True)
            except (RegistryUnavailable, AuthError) as exc:
                if isinstance(exc, LeaseGone):
                    self.lease.lost.set()  # register again under a fresh lease
                self._set_registry_ok(False, str(exc))
                self._stopping.wait(self._registry_backoff.next())
            except LibvirtStalled:  # reported; a fresh connection, the old one left behind
                self.libvirt.abandon()
                self._publish_stalled()
            except libvirt.libvirtError as exc:  # e.g. libvirtd died in a resync: reconnect
                log.warning("event=libvirt_error host=%s error=%s", self.host, _one_line(exc))
                self.libvirt.abandon()
            except HostNameTaken as exc:
                log.error("event=host_name_taken host=%s machine=%s reason=%s", self.host,
                          self.identity.machine, exc)
                self._refused = exc
                break
        self._shutdown()
        if self._refused is not None:
            raise self._refused  # gridtool-agent exits with its one line

    def _beat_lease(self) -> int | None:
        """The lease the heartbeat goes under: only a healthy, registered one."""
        lost = self.lease.lost.is_set() or not self.lease.healthy()
        return None if lost else self.lease.lease

    def _shutdown(self) -> None:
        self.notifier.stopping(f"stopping {self.host}")
        self.heartbeat.stop()
        self.intents.stop()
        self.readiness.stop()
        if self.xen is not None:
            self.xen.stop()
        if self.hook_server is not None:
            self.hook_server.stop()
        if self._intent_watch is not None:
            self._intent_watch.cancel()
        self.settings.cancel()
        ha = self.fencer.ha_guests()
        if self._refused is not None:
            # Not this machine's host name: touch no lease, and leave the watchdog as it
            # is (this machine's own agent may have left it armed under another name).
            self.lease.keep()
        elif ha and self.lease.has_watchdog and self.lease.arm():
            # HA guests keep running after the agent exits; revoking the lease would drop
            # their fences and the manager would start them elsewhere. Keep the lease (a
            # restarted agent resumes it) and leave the watchdog armed: if no agent pets
            # it in time, the host resets before the fences can vanish.
            log.warning("event=agent_stop_lease_kept host=%s ha_guests=%d lease=%x "
                        "note=restart the agent within the watchdog timeout or the host "
                        "resets; drain the host first to stop it for good", self.host,
                        len(ha), self.lease.lease or 0)
            self.lease.keep()
        else:
            if ha:  # nothing would stop them once the lease lapses: stop them now
                reason = ("lease not healthy" if self.lease.has_watchdog else
                          "watchdog does not work" if self.lease.watchdog_problem else
                          "no watchdog configured")
                log.warning("event=agent_stop_self_fence host=%s ha_guests=%d reason=%s",
                            self.host, len(ha), reason)
                if not self.self_fence():
                    log.error("event=agent_stop_self_fence_incomplete host=%s note=an HA guest "
                              "was not confirmed gone", self.host)
            self.lease.revoke()
        self.libvirt.close()
        self.store.close()
        log.info("event=agent_stop host=%s", self.host)

    def _set_registry_ok(self, ok: bool, error: str = "") -> None:
        if ok and not self._registry_ok:
            log.info("event=registry_back host=%s", self.host)
            self._registry_backoff.reset()
            self._next_resync = 0.0  # whatever we missed, repair it now
        elif not ok and self._registry_ok:
            log.warning("event=registry_lost host=%s error=%s", self.host, _one_line(error))
        self._registry_ok = ok

    # -- main loop -----------------------------------------------------------

    def _step(self) -> None:
        if not self.libvirt.connected and not self._connect_libvirt():
            return
        if self.lease.lease is None or self.lease.lost.is_set():
            self._register()
        if self._intent_watch is None:
            self._intent_watch = self.store.watch_prefix(
                self.keys.intents(self.host), self._intent_event)
        self.settings.watch(lambda: self.changes.put(_SETTINGS))
        now = time.monotonic()
        if now >= self._next_resync:
            self.resync()
            self._next_resync = now + self.cfg.resync_interval
            self.notifier.ready(f"{self.host}: registered and resynced")
        self._drain_changes(timeout=max(0.0, min(0.5, self._next_resync - time.monotonic())))

    def _lifecycle_event(self, uuid: str, clean: bool | None) -> None:
        """libvirt's event loop saw ``uuid`` change: queue it for the main loop, and have
        the hook server judge it at once if it is arriving by a live migration."""
        self.changes.put(("guest", uuid, clean))
        if self.hook_server is not None:
            self.hook_server.wake(uuid)

    def _look_again(self, uuid: str) -> None:
        """Have the main loop read ``uuid`` from libvirt again (and judge it)."""
        self.changes.put(("guest", uuid, None))

    def _intent_event(self, ev: Event) -> None:
        if ev.kind == "put":
            self.intents.offer(ev.key, ev.value)
        elif ev.kind == "reset":
            self._next_resync = 0.0

    def _libvirt_stalled(self, why: str) -> None:
        log.error("event=host_health host=%s healthy=no reason=%s", self.host, why)
        self.stalled = why

    def _libvirt_answered(self) -> None:
        if self.stalled:
            log.info("event=host_health host=%s healthy=yes reason=libvirt answers",
                     self.host)
            self.stalled = ""
            self.changes.put(_HOST)

    def _publish_stalled(self) -> None:
        """Write the host record as unhealthy now, with the node info last read (libvirt
        is not asked again)."""
        if self._node is not None and self.lease.lease and not self.lease.lost.is_set():
            self.publish_host()

    def _connect_libvirt(self) -> bool:
        try:
            self.calls("connect", self.libvirt.connect)
        except libvirt.libvirtError as exc:
            delay = self._libvirt_backoff.next()
            log.warning("event=libvirt_unreachable host=%s uri=%s retry_in=%.1fs error=%s",
                        self.host, self.cfg.libvirt_uri, delay, _one_line(exc))
            self._stopping.wait(delay)
            return False
        log.info("event=libvirt_connected host=%s uri=%s", self.host, self.cfg.libvirt_uri)
        self._libvirt_backoff.reset()
        self._next_resync = 0.0
        return True

    def _register(self) -> None:
        """Publish the host record under a lease: on start-up the previous agent's lease
        if etcd still has it (a restart keeps every fence in place), else a fresh one.
        First of all, the host name must be this machine's (``agents.identity.admit``:
        HostNameTaken when not); the record and the name's claim are written in one
        transaction that fails if another agent registered since the check."""
        registration = admit(self.store, self.keys, self.host, self.identity, time.time())
        lease = self._resumable_lease()
        resumed = lease is not None and self.lease.resume(lease)
        if not resumed:
            lease = self.lease.grant()
        if resumed:
            # The predecessor's fences are still ours and its watchdog may be armed: tend
            # it now, not after the first resync (slow on a loaded host). Under a fresh
            # lease the old fences are gone: the watchdog waits until the first resync
            # has judged every guest still running here.
            self.fencer.refresh_held()
            self._fences_known = True
            self.lease.tend_watchdog()
        for _ in range(REGISTER_ATTEMPTS):  # alive again: its confirm-dead mark goes too
            if self.publish_host(registration):
                break
            registration = admit(self.store, self.keys, self.host, self.identity, time.time())
        else:
            self.lease.lost.set()  # register again (after the main loop's backoff)
            raise RegistryUnavailable(f"the registration of {self.host} kept racing with "
                                      "another agent's: trying again")
        self._next_resync = 0.0
        log.info("event=host_registered host=%s lease=%x ttl=%s resumed=%s", self.host,
                 self.lease.lease, self.cfg.ttl, "yes" if resumed else "no")
        if not self._etcd_checked:
            self._etcd_checked = True
            self._warn_early_revocation()

    def _warn_early_revocation(self) -> None:
        """Log once which etcd members run a version that can revoke leases early: the
        timed self-fence of this host's HA guests assumes they never do."""
        for status in self.store.status():
            if status.healthy and revokes_leases_early(status.version):
                log.warning("event=etcd_early_revocation host=%s endpoint=%s version=%s "
                            "fixed_in=%s issues=etcd#15247,etcd#12528", self.host,
                            status.endpoint, status.version, FIXED_VERSIONS)

    def _resumable_lease(self) -> int | None:
        """The lease of this host's record, when this agent has not held a lease yet."""
        if self.lease.clock is not None:
            return None  # lost while we ran: the fences may have moved on, start afresh
        item = self.store.get(self.keys.host(self.host))
        return item.lease if item is not None and item.lease else None

    def publish_host(self, registration: Registration | None = None) -> bool:
        """Write the host record under the lease (with ``registration``'s claim and
        compares when registering: False when they failed and nothing was written)."""
        if not self.stalled or self._node is None:
            self._node = self.calls("node", self.libvirt.node)
        node = self._node
        record = HostRecord(
            name=self.host, libvirt_uri=self.cfg.libvirt_uri or "", agent_version=__version__,
            reported_at=time.time(), labels=self.cfg.labels, started_at=self.started_at,
            storage=self.cfg.storage, watchdog=self.lease.has_watchdog,
            watchdog_timeout=self.lease.watchdog_timeout, machine_id=self.identity.machine,
            instance=self.identity.instance, unhealthy=self.unhealthy or self.stalled,
            migration_address=self.cfg.migration_address or "", **node)
        if registration is None:
            return self.registry.put_host(record, self.lease.lease)
        return self.registry.put_host(record, self.lease.lease, registration.guard,
                                      (registration.claim,))

    def resync(self) -> None:
        """Make the registry match libvirt exactly, and judge every fenced guest."""
        try:
            observed = self.calls("list", self.libvirt.guests, self.host)
        except LibvirtStalled:
            raise
        except libvirt.libvirtError as exc:
            log.warning("event=libvirt_error host=%s error=%s", self.host, _one_line(exc))
            self.libvirt.abandon()
            return
        self.fencer.refresh_held()
        for rec in observed.values():  # stopped ones judged first (see _write_guest)
            if rec.state not in ACTIVE_STATES:
                self.judge(rec, clean_stop=None)
        observed = {u: self._with_token(r) for u, r in observed.items()}
        stored, errors = self.registry.guests_of(self.host)
        for err in errors:
            log.warning("event=corrupt_record host=%s key=%s", self.host, err.key)
        bad_uuids = {e.key.rsplit("/", 1)[-1] for e in errors}
        plan = plan_sync(observed, stored)
        deletes = tuple(sorted(set(plan.deletes) | (bad_uuids - set(observed))))
        if self.unhealthy or self.stalled:  # keep what was last seen
            deletes = ()
        self.registry.write_guests(plan.puts + tuple(
            observed[u] for u in sorted(bad_uuids & set(observed))), deletes, self.host, stored)
        if self._adopting:  # once a start: records written before the guest index get theirs
            self.registry.index_guests(tuple(observed.values()))
        for rec in plan.puts:
            log.info("event=guest_synced host=%s guest=%s uuid=%s state=%s",
                     self.host, rec.name, rec.uuid, rec.state)
        for uuid in deletes:
            log.info("event=guest_removed host=%s uuid=%s", self.host, uuid)
        for rec in observed.values():
            if rec.state in ACTIVE_STATES:
                self.judge(rec, clean_stop=None)
            self._publish_definition(rec)
        self._adopting = False
        self._fences_known = True  # every guest judged: the guard may tend the watchdog
        self._release_orphans(observed)
        self.publish_host()
        self.intents.catch_up()
        if self.xen is not None:
            self.xen.wake()  # and compare libvirt's list with Xen's now

    def _xen_probed(self) -> bool:
        """Judge Xen's latest domain list (:class:`agents.xenwatch.XenWatch`): the host's
        health, then each domain Xen runs behind libvirt's back. True when the health
        changed (the host record is written again)."""
        probe = self.xen.latest if self.xen is not None else None
        if probe is None or not self.libvirt.connected:
            return False
        unhealthy = xen.health(probe.error)
        changed = unhealthy != self.unhealthy
        if changed:
            (log.error if unhealthy else log.info)(
                "event=host_health host=%s healthy=%s reason=%s", self.host,
                "no" if unhealthy else "yes", unhealthy or "-")
            self.unhealthy = unhealthy
        if probe.error is None and probe.libvirt_active is not None:
            unknown = xen.unknown_domains(probe.domains, probe.libvirt_active,
                                          self._xen_before)
            self._xen_before = probe.domains
            for dom in unknown:
                if (dom.domid, dom.uuid) not in self._xen_seen and \
                        not self.claims.busy(dom.uuid):
                    self._judge_xl_domain(dom, dom.uuid in probe.libvirt_inactive)
            self._xen_seen &= {(d.domid, d.uuid) for d in probe.domains}
        return changed

    def _libvirt_active(self) -> tuple[set[str], set[str]] | None:
        """libvirt's active guests and its other defined ones, for the Xen watch's thread
        (None: libvirt did not answer)."""
        try:
            if not self.libvirt.connected:
                return None
            return self.libvirt.listing()
        except libvirt.libvirtError:
            return None

    def _judge_xl_domain(self, seen: xen.XenDomain, libvirt_defines: bool) -> None:
        """A domain libvirt does not count active runs here (``xl create``, or libvirt's
        own start still under way when libvirt ``defines`` it): report it, and destroy it
        with ``xl destroy`` when another host holds one of its fences."""
        assert self.xen is not None
        try:
            dom = self.xen.details(seen)
        except XlError as exc:
            log.warning("event=xl_error host=%s domid=%d error=%s", self.host, seen.domid, exc)
            return  # judged at the next probe
        if dom is None:
            return  # gone meanwhile
        try:
            disks = parse_local_domain(xen.domain_xml(dom), self.cfg.shared_rules).disks
        except DomainXMLError as exc:
            log.warning("event=bad_domain_xml guest=%s error=%s", dom.name, exc)
            disks = ()
        rec = xen.as_record(dom, self.host, disks, time.time())
        holders = {v: (o.fence.holder if isinstance(o, Observed) else
                       "an unreadable fence record" if o is not None else None)
                   for v, o in self.fencer.observe(rec.volumes).items()}
        action, why = xen.judge_unknown(self.host, rec, holders, libvirt_defines)
        self._xen_seen.add((dom.domid, dom.uuid))
        if action == "log":
            log.warning("event=xl_domain host=%s guest=%s uuid=%s domid=%d message=%s",
                        self.host, dom.name, dom.uuid, dom.domid, why)
            return
        if action == "destroy":
            try:
                self.xen.destroy(dom.domid)
            except XlError as exc:
                self._xen_seen.discard((dom.domid, dom.uuid))  # try again next probe
                log.error("event=intruder_stop_failed host=%s guest=%s error=%s",
                          self.host, dom.name, exc)
        self.report_violation(rec, why, action)

    def _with_token(self, rec: GuestRecord) -> GuestRecord:
        token = self.fencer.tokens.get(rec.uuid, 0) if rec.fenced else 0
        return replace(rec, fence_token=token) if token != rec.fence_token else rec

    def _drain_changes(self, timeout: float) -> None:
        try:
            first = self.changes.get(timeout=timeout)
        except queue.Empty:
            return
        pending: dict[str, bool | None] = {}
        host_changed = False
        item: tuple[str, str, bool | None] | None = first
        while item is not None:  # coalesce a burst of events into one write per guest
            kind, uuid, clean = item
            if kind == "resync":
                self._next_resync = 0.0
            elif kind == "host":
                host_changed = True
            elif kind == "xen":
                host_changed |= self._xen_probed()
            elif kind == "settings":
                if (live := self.settings.refresh(self.cfg)) is not None:
                    self.cfg = live
                    host_changed = True
            elif uuid not in pending or clean is not None:
                pending[uuid] = clean
            try:
                item = self.changes.get_nowait()
            except queue.Empty:
                item = None
        for uuid, clean in sorted(pending.items()):
            self._write_guest(uuid, clean)
        if (pending or host_changed) and self.libvirt.connected and self.lease.lease:
            self.publish_host()  # free memory follows the guests

    def _write_guest(self, uuid: str, clean: bool | None) -> None:
        if not self.libvirt.connected:
            return
        try:
            rec = self.calls("read", self.libvirt.guest, uuid, self.host)
        except LibvirtStalled:
            raise
        except libvirt.libvirtError as exc:
            log.warning("event=libvirt_error host=%s uuid=%s error=%s", self.host, uuid,
                        _one_line(exc))
            self._next_resync = 0.0
            return
        if rec is None:
            self.registry.delete_guest(self.host, uuid)
            log.info("event=guest_removed host=%s uuid=%s", self.host, uuid)
            return
        # a stopped guest is judged first, so that a clean stop's fences are gone before
        # the registry shows it stopped: a stopped record beside a held fence reads as a
        # crash to the manager, which restarts a pinned guest in place
        stopped = rec.state not in ACTIVE_STATES
        if stopped:
            self.judge(rec, clean)
        rec = self._with_token(rec)
        self.registry.put_guest(rec)
        log.info("event=guest_changed host=%s guest=%s uuid=%s state=%s",
                 self.host, rec.name, rec.uuid, rec.state)
        if not stopped:
            self.judge(rec, clean)
        self._publish_definition(rec)

    # -- fencing -------------------------------------------------------------

    def judge(self, rec: GuestRecord, clean_stop: bool | None) -> None:
        """Apply the fencing rule to one guest seen on this host.

        ``rec`` may be a resync's snapshot: the guest is claimed (no intent acts on it
        meanwhile), its kind and fences are read from the registry, and only then its
        state from libvirt, right before deciding. A registry read can take seconds (a
        partition that heals); a self-fence does not wait for the claim and may destroy
        the guest meanwhile: judged on an older libvirt read, a guest no longer running
        was taken for an intruder. Whether a stop was clean (``clean_stop``) comes from its
        lifecycle event, else from libvirt's reason for the shutoff state (a resync, or an
        event older than the state read).
        """
        if not rec.fenced or self.self_fencer.covers(rec.uuid):
            return  # (a guest the self-fence pursues takes no fence)
        with self._claimed(rec.uuid) as claimed:
            if not claimed:
                return
            ref = self.fencer.ref(rec)
            observed = self.fencer.observe(ref.volumes)
            fresh = self.calls("read", self.libvirt.guest, rec.uuid, self.host)
            if fresh is None or not fresh.fenced:
                return
            if fresh.volumes != ref.volumes:  # redefined meanwhile: judge it afresh
                self._look_again(rec.uuid)
                return
            clean = clean_stop if fresh.state == rec.state else None
            if clean is None and fresh.state not in ACTIVE_STATES:  # libvirt's reason
                clean = self.calls("read", self.libvirt.shutoff_clean, rec.uuid)
            self._judge(fresh, self.fencer.ref(fresh, ref.kind), observed, clean)

    @contextlib.contextmanager
    def _claimed(self, uuid: str) -> Iterator[bool]:
        """Claim ``uuid`` for a fencing decision (``GuestClaims.judging``): False (skip
        it) while an intent or the hook works on it. libvirt errors end it quietly."""
        with self.claims.judging(uuid) as claimed:
            try:
                yield claimed
            except LibvirtStalled:
                raise  # the main loop leaves the connection behind
            except libvirt.libvirtError as exc:
                log.warning("event=libvirt_error host=%s uuid=%s error=%s", self.host, uuid,
                            _one_line(exc))

    def _judge(self, rec: GuestRecord, ref: GuestRef, observed: dict[str, Observation],
               clean_stop: bool | None) -> None:
        if rec.state in ACTIVE_STATES:
            policy = IntruderPolicy(self.cfg.intruder_policy)
            paused = rec.state == "paused"
            verdict = judge_running(self.host, ref, observed, policy, paused)
            if verdict.act is Act.ACQUIRE:
                if self._adopting:  # running before this agent ever ran here: adopt it
                    log.info("event=fence_adopt host=%s guest=%s", self.host, rec.name)
                else:
                    self.report_violation(rec, verdict.report, "take")
                try:
                    if ref.kind is FenceKind.HA:
                        self.lease.arm()  # a crash from now on must reset the host
                    self.fencer.acquire(ref)
                    return
                except FenceRefused:
                    verdict = judge_running(self.host, ref, self.fencer.observe(ref.volumes),
                                            policy, paused)
            if verdict.act in (Act.PAUSE, Act.DESTROY):
                self._stop_intruder(rec, verdict)
                self.report_violation(rec, verdict.report, verdict.act.value)
            elif rec.uuid in self.fencer.stale or any(
                    o.fence.kind is not ref.kind for o in observed.values()
                    if isinstance(o, Observed)):
                # HA switched on or off, or bound to a lease we no longer keep alive:
                # re-put with (or without) our lease
                self.fencer.acquire(ref)
            return
        dom = self.calls("lookup", self.libvirt.domain, rec.uuid)
        saved = dom is not None and self.calls(
            "saved image", check_saved_image, self.host, self.fencer, dom, ref).ok \
            and bool(self.calls("saved image", dom.hasManagedSaveImage, 0))
        verdict = judge_stopped(self.host, ref, observed, clean_stop=bool(clean_stop),
                                saved=saved)
        if verdict.act is Act.RELEASE:
            self.fencer.release(ref)

    def _stop_intruder(self, rec: GuestRecord, verdict: Judgement) -> None:
        """Destroy, or mark (when the rule says so) and pause, an intruder; a marked copy
        found running again is reported as resumed."""
        dom = self.calls("lookup", self.libvirt.domain, rec.uuid)
        if dom is None:
            return
        if verdict.resumed:
            log.error("event=intruder_resumed host=%s guest=%s uuid=%s action=%s", self.host,
                      rec.name, rec.uuid, verdict.act.value)
        if verdict.mark:  # before the pause: a paused intruder is never left unmarked
            try:
                self.calls("mark", self.libvirt.mark_intruder, dom,
                           self._foreign_holder(rec))
                log.warning("event=intruder_marked host=%s guest=%s uuid=%s", self.host,
                            rec.name, rec.uuid)
                self._look_again(rec.uuid)  # its record shows the mark
            except libvirt.libvirtError as exc:
                log.error("event=intruder_mark_failed host=%s guest=%s error=%s", self.host,
                          rec.name, _one_line(exc))
        try:
            if verdict.act is Act.DESTROY:
                self.calls("destroy", dom.destroy)
            elif self.calls("info", dom.info)[0] != libvirt.VIR_DOMAIN_PAUSED:
                self.calls("suspend", dom.suspend)
        except LibvirtStalled:
            raise
        except libvirt.libvirtError as exc:
            log.error("event=intruder_stop_failed host=%s guest=%s error=%s", self.host,
                      rec.name, _one_line(exc))

    def _foreign_holder(self, rec: GuestRecord) -> str:
        """Another host holding a fence of ``rec`` (a fresh read), or ''."""
        observed = self.fencer.observe(rec.volumes)
        holders = [o.fence.holder for o in observed.values()
                   if isinstance(o, Observed) and o.fence.holder != self.host]
        return holders[0] if holders else ""

    def report_violation(self, rec: GuestRecord, message: str, action: str) -> None:
        log.error("event=fence_violation host=%s guest=%s uuid=%s action=%s message=%s",
                  self.host, rec.name, rec.uuid, action, message)
        volume = rec.volumes[0] if rec.volumes else ""
        self.store.put(self.keys.violation(self.host, rec.uuid), encode(Violation(
            self.host, rec.uuid, rec.name, volume, self._foreign_holder(rec),
            action, time.time(), message)))

    def _report_arrival(self, uuid: str, message: str, action: str) -> None:
        """The hook server stopped an arriving guest that ran without its fences."""
        rec = self.libvirt.guest(uuid, self.host)
        if rec is not None:
            self.report_violation(rec, message, action)

    def _release_orphans(self, observed: dict[str, GuestRecord]) -> None:
        """Fences this host holds for guests it no longer has (undefined while down)."""
        for fence in list(self.fencer.held.values()):
            if fence.guest in observed:
                continue
            with self._claimed(fence.guest) as claimed:  # busy: an intent defines it now
                if claimed and self.calls("lookup", self.libvirt.domain,
                                          fence.guest) is None:  # still gone
                    self.fencer.release(GuestRef(fence.guest, fence.guest_name, fence.kind,
                                                 (fence.volume,)))

    def self_fence(self) -> bool:
        """Kill every HA fenced guest here now (``agents.selffence``) and wait until
        libvirt confirms each gone, at most :data:`STOP_SELF_FENCE_S`: a clean stop with
        no watchdog to leave in charge. False when one did not die in time.

        Pinned guests are left running: nobody may take their fences without an
        operator's ``host confirm-dead``.
        """
        return self.self_fencer.finish(STOP_SELF_FENCE_S)

    def _publish_definition(self, rec: GuestRecord) -> None:
        """Keep a fenced guest's XML in the registry so another host can take it over."""
        if not rec.fenced or not rec.persistent:
            return
        dom = self.calls("lookup", self.libvirt.domain, rec.uuid)
        if dom is None:
            return
        xml = self.calls("definition", self.libvirt.inactive_xml, dom)
        if self._xml_written.get(rec.uuid) == xml:
            return
        key = self.keys.domain(rec.uuid)
        item = self.store.get(key)
        if item is not None:
            try:
                if decode(DomainDefinition, key, item.value).xml == xml:
                    self._xml_written[rec.uuid] = xml
                    return
            except ValueError:
                pass  # corrupt: overwrite it
        self.store.put(key, encode(DomainDefinition(rec.uuid, rec.name, xml, self.host,
                                                    time.time())))
        self._xml_written[rec.uuid] = xml


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())
