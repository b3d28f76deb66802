"""HA failover and faults of a real QEMU guest (TCG) whose data disk is an iSCSI LUN, for
``bench/failover_qemu.py`` and ``tests/integration/test_qemu_failover.py``.

:func:`ha_guest_lab`: hosts hv1..hvN with a real tgtd and one initiator per host
(:class:`~tests.harness.qemu_testbed.QemuHosts` ``luns=1``), agents registering their PR
key through their initiator, hv1's agent talking to etcd through a cuttable proxy (a
partition cuts the agent off, never the storage path), the HA guest ``ha-db`` defined on
every host on LUN 1 and started on hv1, writing its records, and a manager leading on a
thread. The fence method: ``storage`` (the manager's :class:`PrStorageFencer`, no fence
agent), ``power`` (the lab fence agent) or ``timed`` (neither).

:meth:`FailoverLab.watch` follows a fault to its end: the phases (suspected, detected,
fenced, old copy stopped, running elsewhere, the new boot writing) and the storage
checker's verdict on the LUN (:mod:`gridtool.lab.diskcheck`), read through the target:
the old boot's sequence number in a read taken right after the fence was recorded, and
how many records of the old boot the final read holds above it (**writes after the
fence**: must be 0)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import libvirt

from gridtool.config import Config
from gridtool.errors import GridtoolError
from gridtool.fencing.recovery import FencePolicy, HostFence
from gridtool.fencing.storagefence import from_config
from gridtool.ha.manager import Manager
from gridtool.lab import diskcheck
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.procs import LabError
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, decode, encode
from tests.harness import qemu_testbed
from tests.harness.checker import DoubleRunChecker
from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import wait_until

FENCES = ("storage", "power", "timed")
GUEST = "ha-db"
#: A TCG boot took up to 60 s on the loaded 2-core machine.
BOOT_S = 180.0


@dataclass
class Watch:
    """One fault followed to its end: marks in seconds after the fault, the checker's
    verdict on the LUN and the double-run samples."""

    marks: dict[str, float] = field(default_factory=dict)
    old_boot: str = ""
    new_boot: str = ""
    seq_at_fence: int | None = None  # the old boot's last sequence right after the fence
    fence_read_lag_s: float | None = None  # fence recorded -> that read done
    writes_after_fence: int | None = None  # None: no fence recorded
    old_records_after_recovery: int = 0  # the checker's stale records of the old boot
    report: diskcheck.Report | None = None
    overlaps: int = 0
    overlap_s: float = 0.0
    fence: str = ""  # the fence the manager recorded: power, storage or ''
    notes: dict[str, str] = field(default_factory=dict)  # what a fault adds

    def to_dict(self) -> dict:
        return {**self.marks, "old_boot": self.old_boot, "new_boot": self.new_boot,
                "seq_at_fence": self.seq_at_fence, "fence_read_lag_s": self.fence_read_lag_s,
                "writes_after_fence": self.writes_after_fence,
                "old_records_after_recovery": self.old_records_after_recovery,
                "check_ok": self.report.ok if self.report else None,
                "check": self.report.summary() if self.report else "",
                "overlaps": self.overlaps, "overlap_s": self.overlap_s, "fence": self.fence,
                **self.notes}


def writes_after(records: list[diskcheck.Record], boot: str, seq: int) -> int:
    """How many records of ``boot`` on the disk have a sequence number above ``seq``."""
    return sum(1 for r in records if r.boot == boot and r.seq > seq)


def last_seq(records: list[diskcheck.Record], boot: str) -> int:
    """The highest sequence number of ``boot``'s records (0: none)."""
    return max((r.seq for r in records if r.boot == boot), default=0)


class FailoverLab:
    """The lab of :func:`ha_guest_lab` (see the module docstring)."""

    def __init__(self, hosts: qemu_testbed.QemuHosts, store: EtcdStore, cfg: Config,
                 proxy: CuttableProxy, guest: str, fence: str) -> None:
        self.hosts, self.store, self.cfg, self.proxy = hosts, store, cfg, proxy
        self.guest, self.fence = guest, fence
        assert hosts.target is not None
        self.url = hosts.target.url(1)

    @property
    def log(self) -> Path:
        return self.hosts.serial_log(GUEST)

    def records(self) -> list[diskcheck.Record]:
        """The LUN's records now, read through the target (a reader's session)."""
        return diskcheck.scan(diskcheck.lun_slots(self.url, lab_iscsi.CLI_INITIATOR))[0]

    def check(self) -> tuple[diskcheck.Report, list[diskcheck.Record]]:
        records, corrupt = diskcheck.scan(diskcheck.lun_slots(self.url,
                                                              lab_iscsi.CLI_INITIATOR))
        return diskcheck.judge(records, corrupt), records

    def running(self, host: str) -> bool:
        try:
            dom = self.hosts.conn(host).lookupByUUIDString(self.guest)
            return bool(dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING)
        except libvirt.libvirtError:
            return False

    def elsewhere(self) -> list[str]:
        return [h for h in self.hosts.hosts if h != "hv1" and self.running(h)]

    def host_fence(self) -> HostFence | None:
        item = self.store.get(self.cfg.keys.host_fence("hv1"))
        return decode(HostFence, item.key, item.value) if item else None

    def records_of(self, boot: str) -> int:
        """How many records of ``boot`` the LUN holds (read at most twice a second: each
        read is the whole LUN)."""
        time.sleep(0.5)
        return sum(r.boot == boot for r in self.records())

    def boots(self) -> list[str]:
        return qemu_testbed.data_boots(self.log)

    def watch(self, fault: Callable[[], object], old_gone: Callable[[], bool] | None = None,
              settle: float = 0.0, timeout: float | None = None,
              recovery: bool = True) -> Watch:
        """Inject ``fault`` and follow it: until the guest runs elsewhere with a new boot
        writing (``recovery``; else for ``timeout`` seconds) and the old copy is gone
        (``old_gone``, default: not running on hv1), then ``settle`` seconds more; then
        read the LUN and judge it."""
        seen = Watch(old_boot=self.boots()[0])
        old_gone = old_gone or (lambda: not self.running("hv1"))
        limit = timeout if timeout is not None else 4 * self.cfg.ttl + BOOT_S
        with DoubleRunChecker(lambda: self.hosts.conns, interval=0.05) as checker:
            began, began_wall = time.monotonic(), time.time()
            fault()

            def mark(name: str, at: float | None = None) -> None:
                """``name`` happened now, or at wall-clock ``at`` (the manager's record:
                exact, where a poll stuck in a slow libvirt call would be late)."""
                seen.marks.setdefault(name, round(
                    time.monotonic() - began if at is None else at - began_wall, 3))

            def progressed() -> bool:
                try:  # an etcd member stalled by the fault: ask again next time
                    record = self.host_fence()
                    if self.store.get(self.cfg.keys.host("hv1")) is None:
                        mark("detected")
                except GridtoolError:
                    return False
                if record is not None and record.suspected_at:
                    mark("suspected", record.suspected_at)
                if record is not None and record.state in ("power", "storage") \
                        and "fenced" not in seen.marks:
                    mark("fenced", record.power_at if record.state == "power"
                         else record.storage_at)
                    polled = time.monotonic() - began
                    seen.fence = record.state
                    seen.seq_at_fence = last_seq(self.records(), seen.old_boot)
                    seen.fence_read_lag_s = round(time.monotonic() - began
                                                  - seen.marks["fenced"], 3)
                    seen.notes["fence_seen_lag_s"] = f"{polled - seen.marks['fenced']:.3f}"
                if old_gone():
                    mark("old_stopped")
                if self.elsewhere():
                    mark("running_elsewhere")
                if any(b != seen.old_boot for b in self.boots()):
                    mark("new_boot_writing")
                done = ("running_elsewhere" in seen.marks and "new_boot_writing" in seen.marks
                        if recovery else time.monotonic() - began >= limit)
                return done and "old_stopped" in seen.marks

            wait_until(progressed, timeout=limit + 30, what="the fault followed to its end")
            time.sleep(settle)  # let a fenced copy try (and fail) to write a while longer
        seen.overlaps, seen.overlap_s = len(checker.overlaps), round(checker.overlap_seconds, 3)
        seen.new_boot = next((b for b in self.boots() if b != seen.old_boot), "")
        seen.report, records = self.check()
        if seen.seq_at_fence is not None:
            seen.writes_after_fence = writes_after(records, seen.old_boot, seen.seq_at_fence)
        seen.old_records_after_recovery = sum(
            1 for v in seen.report.violations if v.record.boot == seen.old_boot)
        return seen


@contextlib.contextmanager
def ha_guest_lab(base: Path, cfg: Config, fence: str, ttl: int = 10,
                 suspect_after: float | None = None, hosts: int = 3,
                 watchdog_hv1: bool = True) -> Iterator[FailoverLab]:
    """The lab of the module docstring under ``cfg``'s etcd, prefix and credentials;
    everything it started (and its keys) is gone on exit."""
    if fence not in FENCES:
        raise ValueError(f"fence must be one of {', '.join(FENCES)}")
    cfg = replace(cfg, ttl=ttl, timeout=3.0, resync_interval=5.0)
    endpoints, prefix = cfg.endpoints, cfg.prefix
    store = EtcdStore(cfg)
    proxy = CuttableProxy(endpoints[0])
    bed = qemu_testbed.QemuHosts(base, cfg, luns=1, power_fence=fence == "power")
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        names = [f"hv{n}" for n in range(1, hosts + 1)]
        for name in names:
            host = bed.add(name)
            bed.define(name, GUEST, lun=1)
            bed.start_agent(name, watchdog=watchdog_hv1 or name != "hv1",
                            endpoints=(proxy.endpoint,) if name == "hv1" else endpoints,
                            pr_backend="initiator", pr_initiator_dir=host.initiator_dir)
        wait_until(lambda: len(store.list(cfg.keys.hosts)[0]) == len(names), 60, what="hosts")
        guest = bed.conn("hv1").lookupByName(GUEST).UUIDString()
        store.put(cfg.keys.guest_settings(guest), encode(GuestSettings(guest, GUEST, ha=True)))
        client = IntentClient(store, cfg.keys)
        started = client.wait(client.submit("hv1", "start", guest, GUEST), 60)
        if started.state != "done":
            raise LabError(f"{GUEST} not started on hv1: {started.message}")
        lab = FailoverLab(bed, store, cfg, proxy, guest, fence)
        boot = wait_until(lambda: next(iter(lab.boots()), ""), BOOT_S, what=f"{GUEST} writing")
        wait_until(lambda: lab.records_of(boot) >= 5, 60, what=f"5 records of {GUEST} on the LUN")
        assert bed.target is not None
        fencer = from_config(replace(
            cfg, pr_fence_initiator=lab_iscsi.MANAGER_INITIATOR,
            pr_portals=(f"{bed.target.iqn}={bed.target.portal}",))) \
            if fence == "storage" else None
        manager = Manager(cfg, store, "bench", period=0.5, storage_fencer=fencer,
                          fencing=FencePolicy.for_ttl(ttl, suspect_after=suspect_after))
        thread = threading.Thread(target=manager.run, args=(stop,), name="manager",
                                  daemon=True)
        thread.start()
        wait_until(lambda: store.get(cfg.keys.manager_leader), 30, what="manager")
        wait_until(lambda: len(store.list(cfg.keys.heartbeats)[0]) == len(names), 30,
                   what="heartbeats")
        yield lab
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
        bed.close()
        proxy.close()
        with contextlib.suppress(Exception):
            store.delete_prefix(prefix)
        store.close()
