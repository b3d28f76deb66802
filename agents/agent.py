"""The agent: mirror one host's libvirt into the registry, under the host's lease.

Threads: libvirt's event loop (pushes changed uuids onto a queue), the lease
keepalive (every TTL/3), and the main loop here, which owns every registry write:
full resync on start, on reconnect and every ``resync_interval``, and one record
write per lifecycle event in between.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import libvirt

from agents.libvirt_source import LibvirtSource
from gridtool import __version__
from gridtool.config import Config
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.model import HostRecord
from gridtool.registry import Registry
from gridtool.store import Store
from gridtool.sync import plan_sync

log = logging.getLogger("gridtool.agent")

_RESYNC = "*resync*"


@dataclass
class Backoff:
    """Exponential backoff between reconnect attempts."""

    first: float = 0.2
    limit: float = 5.0
    current: float = field(default=0.0, init=False)

    def next(self) -> float:
        self.current = min(self.limit, self.current * 2 if self.current else self.first)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class Agent:
    """One host's agent. ``run()`` blocks until ``stop()``."""

    def __init__(self, cfg: Config, store: Store) -> None:
        cfg.require("host", "libvirt_uri")
        self.cfg = cfg
        self.host: str = cfg.host  # type: ignore[assignment]
        self.registry = Registry(store, cfg.keys)
        self.store = store
        self.changes: queue.Queue[str] = queue.Queue()
        self.libvirt = LibvirtSource(cfg.libvirt_uri or "", cfg.shared_rules,
                                     on_change=self.changes.put, on_close=self._libvirt_lost)
        self.lease: int | None = None
        self.started_at = time.time()
        self._stopping = threading.Event()
        self._lease_lost = threading.Event()
        self._next_resync = 0.0
        self._libvirt_backoff = Backoff()
        self._registry_backoff = Backoff()
        self._registry_ok = True

    # -- lifecycle -----------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self.changes.put(_RESYNC)  # wake the main loop

    def run(self) -> None:
        log.info("event=agent_start host=%s uri=%s endpoints=%s ttl=%s version=%s",
                 self.host, self.cfg.libvirt_uri, ",".join(self.cfg.endpoints),
                 self.cfg.ttl, __version__)
        keepalive = threading.Thread(target=self._keepalive_loop, name="lease", daemon=True)
        keepalive.start()
        while not self._stopping.is_set():
            try:
                self._step()
                self._set_registry_ok(True)
            except (RegistryUnavailable, AuthError) as exc:
                self._set_registry_ok(False, str(exc))
                self._stopping.wait(self._registry_backoff.next())
        self._shutdown()

    def _shutdown(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                self.store.revoke_lease(lease)
            except (RegistryUnavailable, AuthError) as exc:
                log.warning("event=lease_revoke_failed host=%s error=%s", self.host, exc)
        self.libvirt.close()
        self.store.close()
        log.info("event=agent_stop host=%s", self.host)

    def _set_registry_ok(self, ok: bool, error: str = "") -> None:
        if ok and not self._registry_ok:
            log.info("event=registry_back host=%s", self.host)
            self._registry_backoff.reset()
            self._next_resync = 0.0  # whatever we missed, repair it now
        elif not ok and self._registry_ok:
            log.warning("event=registry_lost host=%s error=%s", self.host, error)
        self._registry_ok = ok

    # -- main loop -----------------------------------------------------------

    def _step(self) -> None:
        if not self.libvirt.connected and not self._connect_libvirt():
            return
        if self.lease is None or self._lease_lost.is_set():
            self._register()
        now = time.monotonic()
        if now >= self._next_resync:
            self.resync()
            self._next_resync = now + self.cfg.resync_interval
        self._drain_changes(timeout=max(0.0, min(1.0, self._next_resync - time.monotonic())))

    def _connect_libvirt(self) -> bool:
        try:
            self.libvirt.connect()
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

    def _libvirt_lost(self) -> None:
        self.changes.put(_RESYNC)

    def _register(self) -> None:
        """Take a fresh lease and publish the host record under it."""
        self._lease_lost.clear()
        self.lease = self.store.grant_lease(self.cfg.ttl)
        self.publish_host()
        self._next_resync = 0.0
        log.info("event=host_registered host=%s lease=%x ttl=%s", self.host, self.lease,
                 self.cfg.ttl)

    def publish_host(self) -> None:
        node = self.libvirt.node()
        self.registry.put_host(HostRecord(
            name=self.host, libvirt_uri=self.cfg.libvirt_uri or "", agent_version=__version__,
            reported_at=time.time(), labels=self.cfg.labels, started_at=self.started_at,
            storage=self.cfg.storage, **node,
        ), lease=self.lease)

    def resync(self) -> None:
        """Make the registry's records of this host's guests match libvirt exactly."""
        try:
            observed = self.libvirt.guests(self.host)
        except libvirt.libvirtError as exc:
            log.warning("event=libvirt_error host=%s error=%s", self.host, _one_line(exc))
            self.libvirt.close()
            return
        stored, errors = self.registry.guests_of(self.host)
        for err in errors:
            log.warning("event=corrupt_record host=%s key=%s", self.host, err.key)
        bad_uuids = {e.key.rsplit("/", 1)[-1] for e in errors}
        plan = plan_sync(observed, stored)
        deletes = tuple(sorted(set(plan.deletes) | (bad_uuids - set(observed))))
        self.registry.write_guests(plan.puts + tuple(
            observed[u] for u in sorted(bad_uuids & set(observed))), deletes, self.host)
        for rec in plan.puts:
            log.info("event=guest_synced host=%s guest=%s uuid=%s state=%s",
                     self.host, rec.name, rec.uuid, rec.state)
        for uuid in deletes:
            log.info("event=guest_removed host=%s uuid=%s", self.host, uuid)
        self.publish_host()

    def _drain_changes(self, timeout: float) -> None:
        try:
            first = self.changes.get(timeout=timeout)
        except queue.Empty:
            return
        pending = {first}
        while True:  # coalesce a burst of events into one write per guest
            try:
                pending.add(self.changes.get_nowait())
            except queue.Empty:
                break
        if _RESYNC in pending:
            self._next_resync = 0.0
            pending.discard(_RESYNC)
        for uuid in sorted(pending):
            self._write_guest(uuid)
        if pending and self.libvirt.connected:
            self.publish_host()  # free memory follows the guests

    def _write_guest(self, uuid: str) -> None:
        if not self.libvirt.connected:
            return
        try:
            rec = self.libvirt.guest(uuid, self.host)
        except libvirt.libvirtError as exc:
            log.warning("event=libvirt_error host=%s uuid=%s error=%s", self.host, uuid,
                        _one_line(exc))
            self._next_resync = 0.0
            return
        if rec is None:
            self.registry.delete_guest(self.host, uuid)
            log.info("event=guest_removed host=%s uuid=%s", self.host, uuid)
        else:
            self.registry.put_guest(rec)
            log.info("event=guest_changed host=%s guest=%s uuid=%s state=%s",
                     self.host, rec.name, rec.uuid, rec.state)

    # -- lease keepalive -----------------------------------------------------

    def _keepalive_loop(self) -> None:
        period = self.cfg.ttl / 3
        while not self._stopping.wait(period):
            lease = self.lease
            if lease is None or self._lease_lost.is_set():
                continue
            try:
                remaining = self.store.keepalive(lease)
            except (RegistryUnavailable, AuthError) as exc:
                log.warning("event=keepalive_failed host=%s error=%s", self.host, _one_line(exc))
                continue
            if remaining <= 0:
                log.warning("event=lease_expired host=%s lease=%x", self.host, lease)
                self._lease_lost.set()
                self.changes.put(_RESYNC)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
