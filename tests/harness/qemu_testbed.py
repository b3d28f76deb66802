"""The QEMU test bed: real QEMU lab hosts (:class:`gridtool.lab.qemu.QemuHost`) for tests
and benchmarks, readers of a guest's serial console (its ready marker and its
``GRIDTOOL-HEARTBEAT <n>`` lines every 100 ms), and :func:`bare_guest`: the lab guest run
straight by QEMU, with no libvirt, hook or agent (a host nobody fences)."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt

from gridtool.config import Config
from gridtool.lab import diskcheck, initiator
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.hosts import watchdog_timeout_for
from gridtool.lab.procs import cmdline, free_port, kill_now
from gridtool.lab.qemu import (
    DATA_DISK_MIB,
    DATA_SERIAL,
    HEARTBEAT,
    KERNEL_CMDLINE,
    QEMU,
    READY,
    GuestImage,
    LunSource,
    QemuHost,
    guest_image,
    guest_xml,
    lun_source,
    make_data_disk,
    make_disk,
)
from gridtool.lab.watchdog import WatchdogEmulator
from tests.harness.testbed import LabHosts, wait_until


def heartbeats(log: Path) -> list[tuple[float, int]]:
    """Heartbeat counters seen in a serial log, in order (time is not known: 0.0)."""
    try:
        text = log.read_bytes().decode(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        if line.startswith(HEARTBEAT):
            with contextlib.suppress(ValueError, IndexError):
                out.append((0.0, int(line.split()[1])))
    return out


class HeartbeatWatcher:
    """Follows a serial log, stamping each new heartbeat line with the host's clock (the
    largest gap between two consecutive heartbeats is the downtime the guest saw) and each
    ready marker by the guest's UUID (clones of one template share a log)."""

    def __init__(self, log: Path, every: float = 0.01) -> None:
        self.log, self.every = log, every
        self.seen: list[tuple[float, int]] = []  # (time.monotonic(), counter)
        self.ready: dict[str, float] = {}  # guest uuid -> when its ready marker appeared
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def __enter__(self) -> HeartbeatWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        offset, rest = 0, b""
        while not self._stop.wait(self.every):
            try:
                with self.log.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            offset += len(data)
            now = time.monotonic()
            *lines, rest = (rest + data).split(b"\n")
            for line in lines:
                if line.startswith(HEARTBEAT.encode()):
                    with contextlib.suppress(ValueError, IndexError):
                        self.seen.append((now, int(line.split()[1])))
                elif line.startswith(READY.encode()):
                    words = line.decode(errors="replace").split()
                    self.ready.setdefault(words[1].lower() if len(words) > 1 else "", now)

    @property
    def last(self) -> int:
        return self.seen[-1][1] if self.seen else 0

    def consecutive(self) -> bool:
        """Every counter is the previous one plus one (the guest never restarted)."""
        counters = [c for _, c in self.seen]
        return all(b == a + 1 for a, b in itertools.pairwise(counters))

    def max_gap(self, since: float = 0.0) -> float:
        """The longest time between two heartbeats seen after ``since`` (monotonic)."""
        times = [t for t, _ in self.seen if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def last_heartbeat(log: Path) -> int:
    """The newest heartbeat counter in a serial log (0: none yet)."""
    beats = heartbeats(log)
    return beats[-1][1] if beats else 0


def data_boots(log: Path) -> list[str]:
    """Boot ids the guest announced on its serial log when it began writing its data disk
    (``GRIDTOOL-DATA DEV SLOT BOOT``), in order."""
    try:
        lines = log.read_bytes().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [w[3] for w in (ln.split() for ln in lines)
            if len(w) == 4 and w[0] == "GRIDTOOL-DATA"]


def records_on(disk: Path, boot: str | None = None) -> int:
    """How many valid records (of ``boot``, or of any) a data disk holds now."""
    records, _ = diskcheck.scan(diskcheck.slots_of(disk))
    return sum(1 for r in records if boot is None or r.boot == boot)


def is_ready(log: Path) -> bool:
    try:
        return READY.encode() in log.read_bytes()
    except OSError:
        return False


@contextlib.contextmanager
def bare_guest(image: GuestImage, uuid: str, data_disk: Path,
               serial_log: Path) -> Iterator[subprocess.Popen]:
    """The lab guest with ``data_disk`` run straight by QEMU (no libvirt, no fence hook, no
    agent), as a host that nobody fences would; killed on exit."""
    proc = subprocess.Popen(
        [QEMU, "-machine", "pc", "-accel", image.accel, "-m", "128", "-nographic",
         "-no-reboot", "-nodefaults", "-uuid", uuid, "-serial", f"file:{serial_log}",
         "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
         "-append", KERNEL_CMDLINE,
         "-drive", f"file={data_disk},format=raw,if=none,id=data,cache=none,file.locking=off",
         "-device", f"virtio-blk-pci,drive=data,serial={DATA_SERIAL},share-rw=on"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


class QemuHosts:
    """Real QEMU hosts for tests and benchmarks: namespaced daemons, a shared disk dir,
    agents as real processes; with ``luns`` also the lab's iSCSI target (tgtd) with that
    many LUNs and one initiator per host (:meth:`lun`); ``close()`` stops every guest,
    agent, daemon, initiator and the target. Each host gets the lab's power fence agent
    unless not ``power_fence``."""

    def __init__(self, base: Path, cfg: Config, cache: Path | None = None,
                 luns: int = 0, power_fence: bool = True) -> None:
        self.base = base
        self.cfg = cfg
        self.image = guest_image(cache)
        self.target: lab_iscsi.IscsiTarget | None = None
        self.initiators: dict[str, subprocess.Popen] = {}
        if luns:
            base.mkdir(parents=True, exist_ok=True)
            self.target = lab_iscsi.create(base, ["hv1", "hv2", "hv3"], luns=luns,
                                           size_mb=DATA_DISK_MIB)
            lab_iscsi.start(self.target)
        self.shared = base / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.serial = base / "serial"
        self.serial.mkdir(parents=True, exist_ok=True)
        self._bed = LabHosts(base, cfg, power_fence)  # agents, connections, clean-up
        self.hosts: dict[str, QemuHost] = self._bed.hosts  # type: ignore[assignment]

    def add(self, name: str) -> QemuHost:
        host = QemuHost(name, str(self.base / name), port=free_port(),
                        shared_dir=str(self.shared))
        self.hosts[name] = host
        if self.target is not None:
            host.luns_dir, host.initiator_dir = str(self.base / "luns"), str(
                self.base / "initiators" / name)
            self.initiators[name] = initiator.start(
                Path(host.initiator_dir), name, self.target.initiators[name],
                [self.target.url(n) for n in self.target.lun_numbers()])
        host.start_libvirtd()
        conn = libvirt.open(host.libvirt_uri)
        self._bed.conns[name] = conn
        with contextlib.suppress(libvirt.libvirtError):  # probe QEMU now, not at first use
            conn.getDomainCapabilities(QEMU, "x86_64", "pc", self.image.domain_type)
        return host

    def conn(self, name: str):  # type: ignore[no-untyped-def]
        return self._bed.conns[name]

    @property
    def watchdogs(self) -> dict:
        """Host name -> its :class:`WatchdogEmulator` (agents started with ``watchdog``)."""
        return self._bed.watchdogs

    @property
    def conns(self) -> dict:
        """Host name -> its libvirt connection (for :class:`DoubleRunChecker`)."""
        return self._bed.conns

    @property
    def agents(self) -> dict[str, subprocess.Popen]:
        return self._bed.agents

    def start_agent(self, name: str, watchdog: bool = False,
                    **settings: object) -> subprocess.Popen:
        """Start ``name``'s agent; with ``watchdog``, as on the test-driver lab, a killed
        or hung agent "resets" the host (:class:`WatchdogEmulator`):
        the agent and every QEMU process of the host are SIGKILLed at once (a power loss:
        a ``virDomainDestroy`` per guest can take seconds on a loaded machine, long past
        the lease), then the emulator has libvirt destroy what is left."""
        if watchdog and name not in self._bed.watchdogs:
            host = self.hosts[name]
            ttl = int(settings.get("ttl", self.cfg.ttl))  # type: ignore[call-overload]
            self._bed.watchdogs[name] = WatchdogEmulator(
                host.watchdog, watchdog_timeout_for(ttl), host.libvirt_uri, name,
                on_reset=self._power_loss).start()
        return self._bed.start_agent(name, watchdog=watchdog, **settings)

    def power_off(self, name: str) -> None:
        """Power ``name`` off: its agent and every guest of it die at once, no clean-up."""
        self._power_loss(name)

    def _power_loss(self, name: str) -> None:
        """The host's agent, its initiator and all its QEMU processes die at once."""
        self._bed._power_loss(name)
        if name in self.initiators:
            kill_now(self.initiators[name].pid, initiator.MARKER)
        for pidfile in Path(self.hosts[name].dir, "run", "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if "qemu-system" in cmdline(pid):
                    os.kill(pid, 9)

    def stop_agent(self, name: str, kill: bool = False) -> None:
        self._bed.stop_agent(name, kill)

    def restart_libvirtd(self, name: str) -> None:
        """Restart ``name``'s libvirtd alone (its guests' QEMU processes run on), then
        reopen this test bed's connection to it."""
        self.hosts[name].restart_libvirtd()
        old, self._bed.conns[name] = self._bed.conns[name], libvirt.open(
            self.hosts[name].libvirt_uri)
        with contextlib.suppress(libvirt.libvirtError):
            old.close()

    def agent_log(self, name: str) -> str:
        return self._bed.agent_log(name)

    def lun(self, number: int) -> LunSource:
        """LUN ``number`` of the target as the hosts' guests name it."""
        assert self.target is not None, "a test bed with luns"
        return lun_source(self.target.iqn, number, self.base / "luns")

    def define(self, host: str, name: str, memory_mib: int = 128,  # type: ignore[no-untyped-def]
               data: bool = False, lun: int = 0):
        """Define (not start) a fenced guest on ``host``: its disk is in the shared dir; with
        ``data`` a raw data disk (:meth:`data_disk`) it writes its records to; with ``lun``
        that LUN, through the host's initiator, is its data disk."""
        disk: Path | LunSource = self.data_disk(name) if data else self.shared / f"{name}.qcow2"
        if lun:
            disk = self.lun(lun)
        elif not disk.exists():
            (make_data_disk if data else make_disk)(disk)
        return self.conn(host).defineXML(guest_xml(name, self.image, disk,
                                                   self.serial_log(name), memory_mib,
                                                   data=data))

    def data_disk(self, name: str) -> Path:
        """Where guest ``name``'s data disk is (read it with :mod:`gridtool.lab.diskcheck`)."""
        return self.shared / f"{name}.img"

    def serial_log(self, name: str) -> Path:
        return self.serial / f"{name}.log"

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        wait_until(lambda: is_ready(self.serial_log(name)), timeout,
                   what=f"{name}'s ready marker on its serial console")

    def close(self) -> None:
        for dog in self._bed.watchdogs.values():
            dog.stop()
        for name in list(self._bed.agents):
            self._bed.stop_agent(name)
        for conn in self._bed.conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        self._bed.conns.clear()
        for host in self.hosts.values():
            host.stop_libvirtd()
        for proc in self.initiators.values():
            initiator.stop(proc.pid)
        if self.target is not None:
            lab_iscsi.stop(self.target)
