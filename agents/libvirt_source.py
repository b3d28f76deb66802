"""The libvirt adapter: one connection, lifecycle events, and records built from domains."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt

from agents.readiness import ReadinessWatcher
from gridtool import supervise
from gridtool.domains.devices import parse_local_domain
from gridtool.domains.storage import SharedStorageRules
from gridtool.domains.xen import is_dom0, split_listing
from gridtool.domains.xml import (
    INTRUDER_NS,
    INTRUDER_PREFIX,
    DomainXMLError,
    intruder_mark,
)
from gridtool.registry.model import GUEST_STATES, GuestRecord

log = logging.getLogger("gridtool.agent")

_event_loop_started = False
_event_loop_lock = threading.Lock()


def start_event_loop() -> None:
    """Register libvirt's default event loop (before any connection opens) and run it."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        supervise.start(run, "libvirt-events", logger=log)
        _event_loop_started = True


def _silence_libvirt_errors() -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


_UNCLEAN_STOPS = {libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED}


def stop_was_clean(event: int, detail: int) -> bool | None:
    """For a stop event: True after shutdown/destroy/save, False after a crash; else None."""
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return False
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        return detail not in _UNCLEAN_STOPS
    return None


_CLEAN_SHUTOFFS = {libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED,
                   libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED, libvirt.VIR_DOMAIN_SHUTOFF_SAVED,
                   libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT}
_UNCLEAN_SHUTOFFS = {libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED,
                     libvirt.VIR_DOMAIN_SHUTOFF_DAEMON}


def shutoff_was_clean(state: int, reason: int) -> bool | None:
    """For a domain's state and its reason (``virDomainGetState``): True when it is shut
    off by a shutdown, destroy, save or migration, False after a crash or failure (or
    killed by the daemon); None when that is not known (not shut off, or reason unknown:
    libvirtd restarted since)."""
    if state != libvirt.VIR_DOMAIN_SHUTOFF:
        return None
    if reason in _CLEAN_SHUTOFFS:
        return True
    return False if reason in _UNCLEAN_SHUTOFFS else None


#: The client's keepalive to libvirtd (interval s, missed answers): a daemon that stops
#: answering for 180 s is taken for gone. Not less: libvirtd's libxl driver handles
#: libxl's events on the daemon's event loop, which waits for libxl's context while a
#: domain is created, and answers no keepalive meanwhile (seen in a TCG dom0: with
#: (5, 3) the connection was dropped 20 s into a start, and the start failed with it).
KEEPALIVE = (5, 36)


def _guests(domains: list[libvirt.virDomain]) -> list[libvirt.virDomain]:
    """``domains`` without Xen's Domain-0 (:func:`gridtool.domains.xen.is_dom0`)."""
    return [d for d in domains if not is_dom0(d.ID(), d.name())]


class LibvirtSource:
    """A libvirt connection that reports lifecycle events and describes domains."""

    def __init__(self, uri: str, rules: SharedStorageRules,
                 on_change: Callable[[str, bool | None], None],
                 on_close: Callable[[], None], run_dir: str = "/run/libvirt") -> None:
        self.uri = uri
        self.run_dir = Path(run_dir)
        self._rules = rules
        self._on_change = on_change
        self._on_close = on_close
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self._listeners: dict[str, list[Callable[[int], None]]] = {}
        self._listeners_lock = threading.Lock()
        self._left: list[libvirt.virConnect] = []  # see abandon()
        self.readiness: ReadinessWatcher | None = None  # stamps ready_at when set

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> None:
        """Open the connection and subscribe to lifecycle and device-added events (a
        shared disk hot-plugged into a running guest must be fenced at once: libvirt's
        hook never hears of it)."""
        start_event_loop()
        _silence_libvirt_errors()
        self._left = []  # connections left behind earlier: freed here, on the main loop
        conn = libvirt.open(self.uri)
        # Local drivers have no keepalive; they cannot lose the daemon silently.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(*KEEPALIVE)
        conn.registerCloseCallback(self._closed, None)
        self._callback_ids = [
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        self._lifecycle, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                                        self._device_added, None)]
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            for callback in self._callback_ids:
                conn.domainEventDeregisterAny(callback)
            self._callback_ids = []
            conn.unregisterCloseCallback()
            conn.close()
        except libvirt.libvirtError:
            pass  # already broken; nothing left to release

    @contextlib.contextmanager
    def listening(self, uuid: str, heard: Callable[[int], None]) -> Iterator[None]:
        """Within the block, ``heard(event)`` is called on libvirt's event loop with each
        lifecycle event of ``uuid`` as it arrives (it must not block: set a flag)."""
        with self._listeners_lock:
            self._listeners.setdefault(uuid, []).append(heard)
        try:
            yield
        finally:
            with self._listeners_lock:
                listeners = self._listeners.get(uuid, [])
                listeners.remove(heard)
                if not listeners:
                    self._listeners.pop(uuid, None)

    def abandon(self) -> None:
        """Drop the connection after an error, without closing it: another thread (the
        intent worker, the hook server, a call that does not return: ``agents.bounded``)
        may be in a call on it, and a close under that call crashed the agent (SIGSEGV,
        seen in a dom0 when libvirt dropped the connection mid-start). Its close callback
        goes (client-side only: it never clears a newer connection); the object is kept
        until the next ``connect()`` and libvirt closes it once the last call lets go."""
        conn, self._conn = self._conn, None
        self._callback_ids = []
        if conn is not None:
            self._left.append(conn)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()

    def _lifecycle(self, _conn: object, dom: libvirt.virDomain, event: int, detail: int,
                   _opaque: object) -> None:
        uuid = dom.UUIDString()
        with self._listeners_lock:
            listeners = list(self._listeners.get(uuid, ()))
        for heard in listeners:  # first: a guest that must not run is acted on at once
            heard(event)
        self._on_change(uuid, stop_was_clean(event, detail))

    def _device_added(self, _conn: object, dom: libvirt.virDomain, _alias: str,
                      _opaque: object) -> None:
        self._on_change(dom.UUIDString(), None)  # judged again: a new disk may be shared

    def _closed(self, _conn: object, reason: int, _opaque: object) -> None:
        log.warning("event=libvirt_closed uri=%s reason=%s", self.uri, reason)
        if self._conn is not None:  # not freed here, inside libvirt's own callback
            self._left.append(self._conn)
        self._conn = None
        self._on_close()

    def _require(self) -> libvirt.virConnect:
        if self._conn is None:
            raise libvirt.libvirtError("not connected to libvirt")
        return self._conn

    def connection(self) -> libvirt.virConnect:
        """The open connection; libvirtError when not connected."""
        return self._require()

    # -- descriptions --------------------------------------------------------

    def node(self) -> dict:
        """Hypervisor type, CPUs, total and free memory (MiB), how many guests libvirt has
        and how many of them run (``host list`` shows these without reading guests)."""
        conn = self._require()
        info = conn.getInfo()
        hypervisor = conn.getType().lower()
        if hypervisor == "test":  # the test driver reports a fixed, meaningless free memory
            used_kib = sum(d.info()[1] for d in conn.listAllDomains(
                libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            free_mib = int(info[1]) - used_kib // 1024
        else:
            free_mib = conn.getFreeMemory() // (1024 * 1024)
        running = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
        guests = _guests(running)
        dom0 = len(running) - len(guests)  # Domain-0 always runs
        return {"hypervisor": hypervisor, "cpus": int(info[2]), "memory_mib": int(info[1]),
                "free_memory_mib": int(free_mib),
                "guests": conn.numOfDomains() - dom0 + conn.numOfDefinedDomains(),
                "running_guests": len(guests)}

    def guests(self, host: str) -> dict[str, GuestRecord]:
        """Every domain libvirt knows (running or defined), by uuid; never Xen's
        Domain-0 (the host itself, which libvirt's libxl driver lists)."""
        records = {}
        for dom in _guests(self._require().listAllDomains(0)):
            rec = self._describe(dom, host)
            if rec is not None:
                records[rec.uuid] = rec
        if self.readiness is not None:
            self.readiness.retain(set(records))
        return records

    def guest(self, uuid: str, host: str) -> GuestRecord | None:
        """The domain with ``uuid``, or None when libvirt no longer has it."""
        try:
            dom = self._require().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                if self.readiness is not None:
                    self.readiness.forget(uuid)
                return None
            raise
        return self._describe(dom, host)

    def shutoff_clean(self, uuid: str) -> bool | None:
        """Whether the domain with ``uuid`` was shut off cleanly, by libvirt's reason for
        its state (:func:`shutoff_was_clean`); None when gone or not known."""
        try:
            state, reason = self._require().lookupByUUIDString(uuid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return shutoff_was_clean(state, reason)

    def _describe(self, dom: libvirt.virDomain, host: str) -> GuestRecord | None:
        try:
            state, max_kib, _mem, vcpus, _cpu = dom.info()
            xml = dom.XMLDesc(0)
            persistent = bool(dom.isPersistent())
            autostart = bool(dom.autostart()) if persistent else False
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # vanished while we looked
            raise
        try:
            spec = parse_local_domain(xml, self._rules)
            disks, intruder = spec.disks, spec.intruder
            for problem in spec.unidentified:  # it takes no fence and may not start
                log.warning("event=unidentified_disk guest=%s error=%s", dom.name(), problem)
        except DomainXMLError as exc:
            log.warning("event=bad_domain_xml guest=%s error=%s", dom.name(), exc)
            disks, intruder = (), False
        rec = GuestRecord(
            uuid=dom.UUIDString(), name=dom.name(), host=host,
            state=GUEST_STATES[state] if 0 <= state < 8 else "unknown",
            vcpus=int(vcpus), memory_mib=int(max_kib) // 1024, updated_at=time.time(),
            disks=disks, persistent=persistent, autostart=autostart, intruder=intruder,
        )
        return self.readiness.observe(rec, xml) if self.readiness is not None else rec

    # -- actions -------------------------------------------------------------

    def domain(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self._require().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def active(self) -> set[str]:
        """The UUIDs of the guests libvirt lists active (running, paused, ...)."""
        return self._uuids(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)

    def listing(self) -> tuple[set[str], set[str]]:
        """The UUIDs of the guests libvirt lists active, and of those it has but not active
        (shut off, or still being started or received), from ONE listing: each domain's
        id comes with it (no further call), so a guest whose start ends meanwhile is in
        one set or the other, never in neither (two listings, active then inactive, missed
        a PV start ending between them: a false "behind libvirt's back" on Xen)."""
        return split_listing((d.UUIDString(), d.ID())
                             for d in _guests(self._require().listAllDomains(0)))

    def _uuids(self, flags: int) -> set[str]:
        return {d.UUIDString() for d in _guests(self._require().listAllDomains(flags))}

    def qemu_pid(self, name: str) -> int | None:
        """The process id of guest ``name``'s QEMU on this machine, or None when none is
        known: libvirt's QEMU driver writes it to ``<run_dir>/qemu/<name>.pid``; it
        counts only while that process is alive and is QEMU started for this guest (its
        command line names ``guest=<name>``), so a stale file or a reused pid is never
        killed. Other drivers (the test driver, Xen) have no such file."""
        try:
            pid = int((self.run_dir / "qemu" / f"{name}.pid").read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        wanted = f"guest={name}".encode()
        named = any(a == wanted or a.startswith(wanted + b",") for a in argv)
        return pid if pid > 0 and named and b"qemu" in argv[0] else None

    def mark_intruder(self, dom: libvirt.virDomain, holder: str) -> None:
        """Mark this run of ``dom`` an intruder in its live definition's metadata (see
        ``gridtool.domains.xml.INTRUDER_NS``): gone when it is shut off, kept by libvirt
        across agent and daemon restarts."""
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, intruder_mark(holder, time.time()),
                        INTRUDER_PREFIX, INTRUDER_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def define(self, xml: str) -> libvirt.virDomain:
        return self._require().defineXML(xml)

    def inactive_xml(self, dom: libvirt.virDomain) -> str:
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def wait_stopped(self, dom: libvirt.virDomain, timeout: float) -> bool:
        """Poll until the domain is off; False if still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        while dom.isActive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True
