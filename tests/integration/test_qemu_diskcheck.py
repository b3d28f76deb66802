"""The storage-level checker on real QEMU guests (issue 13, item 7): the lab guest appends
records to its shared data disk; two copies of one guest started on that disk with no
fencing at all make the checker report the stale copy's writes; an HA guest failed over by
the manager after a power-off of its host leaves a disk the checker passes."""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path

import pytest

from gridtool.config import Config
from gridtool.lab import diskcheck, qemu
from gridtool.registry.records import GuestSettings, encode
from tests.harness import qemu_testbed
from tests.harness.qemu_testbed import records_on
from tests.harness.testbed import wait_until
from tests.integration.test_fencing import running_manager
from tests.integration.test_qemu import record_on, registered, start_on

pytestmark = pytest.mark.qemu


@pytest.fixture(autouse=True)
def _need_qemu() -> None:
    why = qemu.unavailable()
    if why:
        pytest.skip(f"QEMU cannot run here: {why}")


def first_boot(log: Path) -> str:
    """The first boot id the guest announced ('': none yet). Waits for a boot allow 120 s:
    one TCG boot took about 60 s at a load of 9 on this machine's 2 cores."""
    return next(iter(qemu_testbed.data_boots(log)), "")


def running_on(log: Path, what: str) -> None:
    """Wait until the guest's heartbeat counter advanced by 20 (2 s, 10+ write attempts)."""
    beats = qemu_testbed.last_heartbeat(log)
    wait_until(lambda: qemu_testbed.last_heartbeat(log) >= beats + 20, 30,
               what=f"{what} running on")


def test_two_unfenced_copies_on_one_data_disk_are_caught(tmp_path: Path) -> None:
    """Copy A runs; copy B of the same guest is started on the same disk by a host nobody
    fences (QEMU straight, no libvirt, hook or agent); B is stopped first, so A, the stale
    copy, writes on after B had started: the checker must name A's records."""
    image = qemu.guest_image()
    disk = tmp_path / "g.img"
    qemu.make_data_disk(disk)
    guest = str(uuidlib.uuid4())
    logs = {c: tmp_path / f"{c}.log" for c in "AB"}
    with qemu_testbed.bare_guest(image, guest, disk, logs["A"]) as copy_a:
        boot_a = wait_until(lambda: first_boot(logs["A"]), 120, what="copy A writing")
        wait_until(lambda: records_on(disk, boot_a) >= 5, 20, what="5 records of copy A")
        with qemu_testbed.bare_guest(image, guest, disk, logs["B"]) as copy_b:
            boot_b = wait_until(lambda: first_boot(logs["B"]), 120, what="copy B writing")
            wait_until(lambda: records_on(disk, boot_b), 20, what="a record of B")
            running_on(logs["B"], "copy B")  # both append in step: many of B's records
            assert copy_a.poll() is None and copy_b.poll() is None  # are A's again
        running_on(logs["A"], "copy A, alone again")
    report = diskcheck.check(disk)
    print(report.summary())
    assert [b.boot for b in report.boots] == [boot_a, boot_b]
    assert report.violations, f"a stale copy wrote after the new one started: {report.summary()}"
    assert {(v.kind, v.record.boot, v.evidence.boot) for v in report.violations} == {
        ("stale", boot_a, boot_b)}
    assert all(v.record.slot > v.evidence.slot for v in report.violations)


def test_an_ha_guest_failed_over_after_a_power_off_passes_the_check(  # type: ignore[no-untyped-def]
        tmp_path: Path, store, registry, cfg: Config) -> None:
    """ha1 runs on hv1 with its data disk; hv1 is powered off (agent and QEMU SIGKILLed);
    the manager restarts ha1 on hv2 once hv1's lease expired. The new boot writes after
    the old one's last record and the old boot never writes again."""
    hosts = qemu_testbed.QemuHosts(tmp_path, cfg)
    try:
        for name in ("hv1", "hv2"):
            hosts.add(name)
            hosts.start_agent(name, watchdog=True)  # HA guests go to protected hosts only
        wait_until(lambda: registered(registry, ("hv1", "hv2")), 20, what="both registered")
        dom = hosts.define("hv1", "ha1", data=True)
        guest = dom.UUIDString()
        store.put(cfg.keys.guest_settings(guest), encode(GuestSettings(guest, "ha1", ha=True)))
        start_on(store, cfg, "hv1", dom)
        disk, log = hosts.data_disk("ha1"), hosts.serial_log("ha1")
        old = wait_until(lambda: first_boot(log), 120, what="ha1 writing its data disk")
        wait_until(lambda: records_on(disk, old) >= 5, 20, what="5 records of ha1 on hv1")
        with running_manager(cfg, store):
            off = time.monotonic()
            hosts.power_off("hv1")
            wait_until(lambda: (r := record_on(registry, "hv2", guest)) is not None
                       and r.state == "running", 30, what="ha1 restarted on hv2")
            new = wait_until(lambda: qemu_testbed.data_boots(log)[-1:] != [old]
                             and qemu_testbed.data_boots(log)[-1], 120,
                             what="the new boot of ha1 writing")
            print(f"power-off to the new boot beginning to write: {time.monotonic() - off:.1f} s")
            wait_until(lambda: records_on(disk, new) >= 5, 20, what="5 records of it")
    finally:
        hosts.close()
    report = diskcheck.check(disk)
    print(report.summary())
    assert report.ok, report.summary()
    assert [b.boot for b in report.boots] == [old, new]
    assert report.boots[1].first.slot > report.boots[0].last.slot
