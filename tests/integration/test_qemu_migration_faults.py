"""Live migrations on real QEMU hosts whose final phase fails (issue 12 item 4): the
guest never runs on two hosts, and the destination's copy never runs without its fences
for longer than the agent's event latency (:data:`EVENT_LATENCY_S`).

A :class:`FenceWatch` samples both daemons and the fence holder throughout. Two faults:

* the source agent's etcd is cut from the first progress report on, so its handover at
  switchover fails with an etcd error while libvirt completes the migration;
* the destination daemon's answers to the source daemon are swallowed from the
  switchover on (a one-way network fault): libvirt's Finish resumes the guest on the
  destination, the source never hears of it, gives up when its keepalive does (~30 s)
  and resumes its own copy — the split brain libvirt warns about.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from agents.libvirt_source import start_event_loop
from gridtool.config import Config
from gridtool.lab import qemu
from gridtool.lab.procs import LabError
from gridtool.placement.shell import EndState, MigrationResult, Migrator, PhaseEvent
from gridtool.registry.model import GuestRecord
from tests.harness import qemu_testbed
from tests.harness.proxy import CuttableProxy, StallingProxy
from tests.harness.testbed import wait_until
from tests.integration.test_qemu import (
    MIGRATION_CAP_MIB,
    holder,
    record_on,
    registered,
    running_guest,
    start_on,
)

pytestmark = pytest.mark.qemu

#: The longest a guest may run where it should not (on a host without its fence, or on
#: two hosts): a lifecycle event's trip to the agent, one fence read and one pause, on a
#: loaded 2-core machine; plus one sampling period of the watch.
EVENT_LATENCY_S = 1.0
#: How long the source agent stays cut off from etcd after libvirt finished the
#: migration: past its etcd call timeout (1 s here), so the handover has failed by then.
CUT_AFTER_S = 3.0
#: The agents resync as rarely as in production: what they do about the guest must come
#: from its events, not from the next resync.
AGENT: dict[str, Any] = {"resync_interval": 30.0}


class FenceWatch:
    """Follows, each on its own thread every ``interval``, whether libvirt says the guest
    runs on each host and who holds its fence: a daemon slow to answer (one tearing a
    migrated domain down) delays only its own timeline. Each host's timeline also takes
    the guest's lifecycle events there (RESUMED: running; SUSPENDED, STOPPED, SHUTDOWN,
    CRASHED: not), stamped as they arrive: a read is blocked while the daemon holds the
    domain's lock (a destroy holds it for the ~2 s qemu takes to exit), so a pause just
    before a destroy can be missed by the reads and seen only when the destroy ends;
    its event is not. A read saying the guest runs is stamped when it began, any other
    when it ended: running stretches are never shortened. On exit the timelines are merged:
    ``longest_overlap`` is the longest time the guest ran on two hosts,
    ``longest_unfenced[host]`` the longest it ran on ``host`` while the fence was someone
    else's (or nobody's). A read that fails says nothing (the last value stands)."""

    def __init__(self, conns: dict[str, libvirt.virConnect], store: Any, cfg: Config,
                 uuid: str, volume: str, interval: float = 0.01) -> None:
        self.conns, self.store, self.cfg = conns, store, cfg
        self.uuid, self.volume, self.interval = uuid, volume, interval
        self.samples = 0
        self.longest_overlap = 0.0
        self.longest_unfenced: dict[str, float] = {}
        # what each timeline showed from when: "fence" -> holder, host -> running there
        self.changes: dict[str, list[tuple[float, object]]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._follow, args=(name, read), daemon=True,
                                          name=f"fence-watch-{name}")
                         for name, read in self._readers().items()]
        self._callbacks: list[tuple[libvirt.virConnect, int]] = []
        self._began = 0.0

    def __enter__(self) -> FenceWatch:
        self._began = time.monotonic()
        for host, conn in self.conns.items():  # needs start_event_loop() before connecting
            self._callbacks.append((conn, conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, host)))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        for conn, callback in self._callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback)
        with self._lock:
            self.changes = {name: _changes(points) for name, points in self.changes.items()}
        self._measure(time.monotonic())

    def running(self) -> list[str]:
        """The hosts on which libvirt says the guest runs now."""
        return [h for h, conn in self.conns.items() if self._runs_on(conn)]

    def report(self) -> str:
        changes = sorted((t - self._began, name, value) for name, points in self.changes.items()
                         for t, value in points)
        return (f"{self.samples} samples; longest overlap {self.longest_overlap:.3f} s, "
                f"longest unfenced {self.longest_unfenced}; changes: "
                + ", ".join(f"{t:.2f} {name}={value}" for t, name, value in changes))

    def _readers(self) -> dict[str, Any]:
        readers: dict[str, Any] = {"fence": lambda: holder(self.store, self.cfg, self.volume)}
        for host, conn in self.conns.items():
            readers[host] = lambda conn=conn: self._runs_on(conn)
        return readers

    def _runs_on(self, conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.lookupByUUIDString(self.uuid).state()[0]
                        == libvirt.VIR_DOMAIN_RUNNING)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            return False

    def _follow(self, name: str, read: Any) -> None:
        last: object = None
        while not self._stop.wait(self.interval):
            began = time.monotonic()
            try:
                value = read()
            except Exception:  # a read that fails says nothing
                continue
            self.samples += 1
            if value != last:  # a guest running: since the read began; else: when it ended
                self._note(name, began if value is True else time.monotonic(), value)
                last = value

    def _event(self, _conn: object, dom: libvirt.virDomain, event: int, _detail: int,
               host: str) -> None:
        if dom.UUIDString() != self.uuid:
            return
        if event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
            self._note(host, time.monotonic(), True)
        elif event in _NOT_RUNNING:
            self._note(host, time.monotonic(), False)

    def _note(self, name: str, when: float, value: object) -> None:
        with self._lock:
            self.changes.setdefault(name, []).append((when, value))

    def _measure(self, end: float) -> None:
        """Sweep the merged timelines: the longest overlap and unfenced stretches."""
        if len(self.changes) < len(self._threads) or not all(self.changes.values()):
            return  # some timeline never got a reading: nothing can be said
        start = max(points[0][0] for points in self.changes.values())  # all known from here
        times = sorted({t for points in self.changes.values() for t, _ in points
                        if t >= start} | {start, end})
        since: dict[str, float] = {}
        for t in times:
            now = {name: _value_at(points, t) for name, points in self.changes.items()}
            running = [h for h in self.conns if now.get(h)]
            conditions = {f"unfenced:{h}" for h in running if h != now.get("fence")}
            if len(running) > 1:
                conditions.add("overlap")
            if t >= end:
                conditions = set()
            for ended in set(since) - conditions:
                length = t - since.pop(ended)
                if ended == "overlap":
                    self.longest_overlap = max(self.longest_overlap, length)
                else:
                    host = ended.split(":", 1)[1]
                    self.longest_unfenced[host] = max(self.longest_unfenced.get(host, 0.0),
                                                      length)
            for begun in conditions - set(since):
                since[begun] = t


def _changes(points: list[tuple[float, object]]) -> list[tuple[float, object]]:
    """A timeline's points in time order, each a change of its value."""
    changes: list[tuple[float, object]] = []
    for point in sorted(points, key=lambda p: p[0]):
        if not changes or changes[-1][1] != point[1]:
            changes.append(point)
    return changes


_NOT_RUNNING = (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_STOPPED,
                libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_CRASHED)


def _value_at(points: list[tuple[float, object]], t: float) -> object:
    """A timeline's value at ``t`` (None before its first point)."""
    value = None
    for when, v in points:
        if when > t:
            break
        value = v
    return value


@contextlib.contextmanager
def two_hosts(tmp_path: Path, cfg: Config, hv1: dict[str, Any],
              stall_hv2: bool = False
              ) -> Iterator[tuple[qemu_testbed.QemuHosts, StallingProxy | None]]:
    """hv1 and hv2 with agents (hv1's with these settings, hv2's with :data:`AGENT`'s).
    With ``stall_hv2``,
    hv2's agent reaches its daemon through a :class:`StallingProxy` and names the proxy as
    its libvirt URI, so other hosts' daemons reach hv2's through it too. Every process is
    stopped after."""
    why = qemu.unavailable()
    if why:
        pytest.skip(f"QEMU cannot run here: {why}")
    hosts = qemu_testbed.QemuHosts(tmp_path, cfg)
    proxy = None
    try:
        for name in ("hv1", "hv2"):
            hosts.add(name)
        hosts.start_agent("hv1", **hv1)
        with pytest.MonkeyPatch.context() as env:
            if stall_hv2:
                proxy = StallingProxy(f"127.0.0.1:{hosts.hosts['hv2'].port}")
                env.setenv("GRIDTOOL_LIBVIRT_URI",  # the environment beats the file
                           f"qemu+tcp://127.0.0.1:{proxy.port}/system")
            hosts.start_agent("hv2", **AGENT)
        yield hosts, proxy
    finally:
        hosts.close()
        if proxy is not None:
            proxy.close()


def settled_on(watch: FenceWatch, store: Any, cfg: Config, volume: str, host: str,
               timeout: float = 30.0) -> bool:
    """The guest comes to run on ``host`` alone, which holds its fence (False: not within
    ``timeout``)."""
    try:
        wait_until(lambda: watch.running() == [host] and holder(store, cfg, volume) == host,
                   timeout, what=f"g1 running on {host} alone with its fence")
    except LabError:
        return False
    return True


class Migration:
    """A live migration run on a thread (the test injects faults meanwhile)."""

    def __init__(self, store: Any, cfg: Config, rec: GuestRecord, target: str,
                 on_event: Any = None) -> None:
        self.result: MigrationResult | None = None
        migrator = Migrator(store, cfg.keys, on_event=on_event,
                            bandwidth_mib=MIGRATION_CAP_MIB)  # ~2 s: faults land mid-way
        self._thread = threading.Thread(
            target=lambda: setattr(self, "result", migrator.migrate(rec, target, "live")),
            name="migration", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> MigrationResult:
        self._thread.join(timeout)
        assert self.result is not None, f"the migration did not end within {timeout} s"
        return self.result


def running_shared_guest(hosts: qemu_testbed.QemuHosts, store: Any, registry: Any,
                         cfg: Config) -> tuple[libvirt.virDomain, GuestRecord]:
    """g1 started through gridtool on hv1, on a raw ``<shareable/>`` disk: the lab's hosts
    share one kernel, whose QEMU image locks would keep a second copy from running (on two
    real hosts a shared LUN has no such lock; shareable disks are not locked)."""
    wait_until(lambda: registered(registry, ("hv1", "hv2")), 20, what="both hosts registered")
    disk = hosts.shared / "g1.raw"
    disk.write_bytes(b"")
    os.truncate(disk, 64 << 20)
    xml = qemu.guest_xml("g1", hosts.image, disk, hosts.serial_log("g1"))
    xml = xml.replace("<driver name='qemu' type='qcow2'/>", "<driver name='qemu' type='raw'/>")
    xml = xml.replace("<target dev='vda' bus='virtio'/>",
                      "<target dev='vda' bus='virtio'/><shareable/>")
    dom = hosts.conn("hv1").defineXML(xml)
    start_on(store, cfg, "hv1", dom)
    hosts.wait_ready("g1", 60)
    rec = wait_until(lambda: (r := record_on(registry, "hv1", dom.UUIDString())) is not None
                     and r.state == "running" and r, 20, what="g1 reported running")
    assert isinstance(rec, GuestRecord) and rec.fenced
    return dom, rec


def phase_message(result: MigrationResult, phase: str) -> str:
    """What the agent said about one phase of a migration."""
    return next(p.message for p in result.phases if p.phase == phase)


def gone_from(conn: libvirt.virConnect, uuid: str) -> bool:
    try:
        return not conn.lookupByUUIDString(uuid).isActive()
    except libvirt.libvirtError as exc:
        return exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def test_a_handover_failing_with_an_etcd_error_never_lets_the_destination_run_unfenced(
        tmp_path: Path, store: Any, registry: Any, cfg: Config) -> None:
    start_event_loop()  # before any connection opens: the watch hears libvirt's events
    proxy = CuttableProxy(cfg.endpoints[0])
    cut = threading.Event()

    def cut_at_first_progress(ev: PhaseEvent) -> None:  # the source agent holds its fence
        if ev.phase == "migrate" and "% of memory sent" in ev.message and not cut.is_set():
            proxy.cut()  # and knows where to migrate by now: cut it off etcd
            cut.set()

    # hv1's lease outlives the cut (which lasts as long as libvirt's migration under
    # TCG, plus CUT_AFTER_S: 9.5 s at load 18 outlived a 10 s TTL); its etcd calls give
    # up after 1 s
    hv1 = {**AGENT, "endpoints": (proxy.endpoint,), "ttl": 30, "timeout": 1.0}
    try:
        with two_hosts(tmp_path, cfg, hv1) as (hosts, _):
            dom, rec = running_guest(hosts, store, registry, cfg)
            uuid, volume = dom.UUIDString(), rec.volumes[0]
            with FenceWatch(hosts.conns, store, cfg, uuid, volume) as watch:
                migration = Migration(store, cfg, rec, "hv2", cut_at_first_progress)
                wait_until(cut.is_set, 60, what="the first progress report")
                wait_until(lambda: gone_from(hosts.conn("hv1"), uuid), 60,
                           what="libvirt to finish the migration")
                time.sleep(CUT_AFTER_S)  # the fault's length: the handover has failed
                proxy.heal()
                result = migration.join(120)
                settled = settled_on(watch, store, cfg, volume, "hv2")
            print(watch.report(), "\n", phase_message(result, "migrate"))
            assert watch.longest_overlap == 0.0, watch.report()
            assert watch.longest_unfenced.get("hv2", 0.0) <= EVENT_LATENCY_S, watch.report()
            assert settled, watch.report()
            assert result.state is EndState.MOVED, result.message
            assert "after the switchover (the first try failed: no etcd endpoint answered" \
                in phase_message(result, "migrate")
            log = hosts.agent_log("hv1")
            assert "event=live_handover_failed" in log and "outcome=unknown" in log
            assert "Traceback" not in log, "no thread died of the etcd error"
            assert "event=incoming_paused" in hosts.agent_log("hv2")
            assert "event=incoming_resumed" in hosts.agent_log("hv2")
    finally:
        proxy.close()


def test_a_lost_finish_reply_leaves_the_guest_on_one_host(
        tmp_path: Path, store: Any, registry: Any, cfg: Config) -> None:
    start_event_loop()  # this process hears libvirt's events: the switchover is one
    stalled = threading.Event()
    with two_hosts(tmp_path, cfg, AGENT, stall_hv2=True) as (hosts, proxy):
        assert proxy is not None
        dom, rec = running_shared_guest(hosts, store, registry, cfg)
        uuid, volume = dom.UUIDString(), rec.volumes[0]

        def at_switchover(_conn: object, d: libvirt.virDomain, event: int, detail: int,
                          _opaque: object) -> None:
            if (d.UUIDString() == uuid and event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED
                    and detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED):
                proxy.stall()  # hv2's daemon resumes the guest; hv1's never hears of it
                stalled.set()

        events = libvirt.open(hosts.hosts["hv1"].libvirt_uri)
        callback = events.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, at_switchover, None)
        try:
            with FenceWatch(hosts.conns, store, cfg, uuid, volume) as watch:
                proxy.watch()  # the source daemon's migration connection, made from now on
                migration = Migration(store, cfg, rec, "hv2")
                wait_until(stalled.is_set, 60, what="the switchover")
                result = migration.join(180)  # hv1's daemon gives up with its keepalive
                settled = settled_on(watch, store, cfg, volume, "hv2")
        finally:
            events.domainEventDeregisterAny(callback)
            events.close()
        print(watch.report(), "\n", phase_message(result, "migrate"))
        assert watch.longest_overlap <= EVENT_LATENCY_S, watch.report()
        assert max(watch.longest_unfenced.values(), default=0.0) <= EVENT_LATENCY_S, \
            watch.report()
        assert settled, watch.report()
        assert result.state is EndState.MOVED, result.message
        assert "although libvirt reported an error" in phase_message(result, "migrate")
        assert "event=live_source_paused guest=g1" in hosts.agent_log("hv1")
        assert "by=guard" in hosts.agent_log("hv1"), "paused on its event, not after libvirt"
