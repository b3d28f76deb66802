"""A partitioned host's HA guest on an iSCSI LUN, fenced at the storage (issue 13 item 8):
a real QEMU guest (TCG) on hv1 writes its records to LUN 1 through hv1's initiator; hv1's
agent is cut from etcd while it and the guest stay alive and the storage path stays up.
The manager suspects hv1 (``suspect_after``), PREEMPTs its key, revokes its lease and
restarts the guest on hv2 while the old copy still runs; from the preempt on, the old
copy's writes are refused (EPERM through hv1's initiator), and the storage checker,
reading the LUN through the target, finds no record of the old boot written after the
fence and none after the new boot began. TTL 15 s: the agent's own self-fence (7-12 s
after the cut) then comes well after the preempt (about 3 s), so the old copy is alive
and writing when it is fenced."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gridtool.config import Config
from gridtool.lab import qemu
from tests.harness.luns import qemu_io
from tests.harness.qemu_failover import ha_guest_lab

pytestmark = pytest.mark.qemu


def test_a_partitioned_hosts_live_copy_is_fenced_at_the_storage(
        tmp_path: Path, cfg: Config) -> None:
    why = qemu.unavailable()
    if why:
        pytest.skip(f"QEMU cannot run here: {why}")
    # hv1 without a watchdog: its emulator's reset would take hv1's initiator down too,
    # and the refused write below is asked of that initiator after the self-fence
    with ha_guest_lab(tmp_path, cfg, "storage", ttl=15, suspect_after=2.0, hosts=2,
                      watchdog_hv1=False) as lab:
        began = time.monotonic()
        seen = lab.watch(lab.proxy.cut, settle=1.0)
        print(f"partition -> running on hv2: {seen.marks['running_elsewhere']:.1f} s; "
              f"marks {seen.marks}; {time.monotonic() - began:.1f} s in all")
        initiator_dir = Path(lab.hosts.hosts["hv1"].initiator_dir)
        refused = qemu_io(initiator_dir, "write -P 0x5a 0 512", 1, f"{lab.hosts.target.iqn}/1")
        record = lab.host_fence()
    assert seen.fence == "storage" and record is not None
    assert set(record.storage.values()) == {"preempted"}
    assert seen.marks["fenced"] < seen.marks["old_stopped"], \
        "the old copy still ran when its host was fenced: the storage fence is what counts"
    assert refused.returncode == 1 and "Operation not permitted" in refused.stdout, refused
    assert seen.writes_after_fence == 0, seen.to_dict()
    assert seen.report is not None and seen.report.ok, seen.report.summary()
    assert [b.boot for b in seen.report.boots] == [seen.old_boot, seen.new_boot]
    assert seen.report.boots[1].first.slot > seen.report.boots[0].last.slot
