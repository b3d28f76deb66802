"""The QEMU lab's fenced guests on real iSCSI LUNs (issue 13 items 1 and 7): one lab
(``lab up --hypervisor qemu``, iSCSI by default: a real tgtd and one initiator per host),
one guest whose data disk is LUN 1 through its host's initiator. It boots, its records
are on the LUN (read through the target), it live-migrates to the other host (the same
path names the LUN there) and writes on, and powering its host off takes that host's
initiator down; ``lab down`` leaves nothing. The tests run in order on the one lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from gridtool.config import load
from gridtool.lab import diskcheck, initiator, qemu
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab import lab as labmod
from gridtool.lab.procs import cmdline
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from tests.harness import qemu_testbed
from tests.harness.testbed import wait_until
from tests.integration.test_qemu import holder, record_on, start_on

pytestmark = pytest.mark.qemu

GUEST = "g1"


class Lab:
    """The module's lab: its dir, state, config, a store, and guest g1's LUN."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.state: dict[str, Any] = labmod.up(directory, hosts=2, guests=0,
                                               hypervisor="qemu")
        self.cfg = load(self.state["config"])
        self.store = EtcdStore(self.cfg)
        self.registry = Registry(self.store, self.cfg.keys)
        self.target = lab_iscsi.IscsiTarget.from_dict(self.state["iscsi"])
        self.url = self.target.url(1)
        self.volume = f"iscsi-{self.target.iqn}-lun1"
        self.uuid = ""  # g1's, once defined

    def conn(self, host: str) -> libvirt.virConnect:
        entry = next(h for h in self.state["hosts"] if h["name"] == host)
        return libvirt.open(entry["libvirt_uri"])

    def initiator_pid(self, host: str) -> int:
        state = labmod.status(self.dir) or {}
        return next(e["pid"] for e in state["initiators"] if e["host"] == host)

    def records(self, boot: str | None = None) -> int:
        """Valid records (of ``boot``) on LUN 1, read through the target."""
        found, _ = diskcheck.scan(diskcheck.lun_slots(self.url, lab_iscsi.CLI_INITIATOR))
        return sum(1 for r in found if boot is None or r.boot == boot)

    def gridtool(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from gridtool.cli.main import main; main()", *args],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "GRIDTOOL_LAB_DIR": str(self.dir),
                 "GRIDTOOL_CONFIG": self.state["config"]})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    why = qemu.unavailable()
    if why:
        pytest.skip(f"QEMU cannot run here: {why}")
    directory = tmp_path_factory.mktemp("luns") / "lab"
    try:
        the_lab = Lab(directory)
        try:
            yield the_lab
        finally:
            the_lab.store.close()  # a second close (after the last test's) is harmless
    finally:
        labmod.down(directory)


def boots_of(lab: Lab) -> list[str]:
    return qemu_testbed.data_boots(lab.dir / "serial" / f"{GUEST}.log")


def test_a_fenced_guest_boots_on_its_lun_and_writes_its_records_there(lab: Lab) -> None:
    image = qemu.guest_image()
    source = qemu.lun_source(lab.target.iqn, 1, qemu.luns_dir(lab.dir))
    conn = lab.conn("hv1")
    try:
        dom = conn.defineXML(qemu.guest_xml(GUEST, image, source,
                                            lab.dir / "serial" / f"{GUEST}.log"))
        lab.uuid = dom.UUIDString()
        start_on(lab.store, lab.cfg, "hv1", dom)
    finally:
        conn.close()
    rec = wait_until(lambda: (r := record_on(lab.registry, "hv1", dom.UUIDString()))
                     is not None and r.state == "running" and r, 60, what="g1 running on hv1")
    assert rec.volumes == (lab.volume,), "the agent names the NBD disk after its LUN"
    assert holder(lab.store, lab.cfg, lab.volume) == "hv1"
    boot = wait_until(lambda: next(iter(boots_of(lab)), ""), 120, what="g1 writing")
    wait_until(lambda: lab.records(boot) >= 5, 30, what="5 records of g1 on the LUN")
    assert not list((lab.dir / "shared").glob("*.img")), "no data disk file in the shared dir"


def test_it_live_migrates_to_the_other_host_and_writes_on(lab: Lab) -> None:
    (boot,) = boots_of(lab)
    moved = lab.gridtool("guest", "migrate", GUEST, "--to", "hv2", "--live")
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: (r := record_on(lab.registry, "hv2", lab.uuid)) is not None
               and r.state == "running", 30, what="g1 reported running on hv2")
    assert holder(lab.store, lab.cfg, lab.volume) == "hv2"
    before = lab.records(boot)
    wait_until(lambda: lab.records(boot) >= before + 10, 30, what="g1 writing from hv2")
    assert boots_of(lab) == [boot], "the same boot, not a restart"
    checked = lab.gridtool("lab", "disk-check", "--json", lab.url)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and [b["boot"] for b in report["boots"]] == [boot]


def test_power_off_takes_the_hosts_initiator_down_and_power_on_brings_it_back(
        lab: Lab) -> None:
    old = lab.initiator_pid("hv2")
    assert initiator.alive(old)
    assert labmod.power_off(lab.dir, "hv2") == [GUEST]
    wait_until(lambda: not initiator.alive(old), 5, what="hv2's initiator gone")
    assert initiator.alive(lab.initiator_pid("hv1")), "hv1's sessions are not touched"
    labmod.power_on(lab.dir, "hv2")
    new = lab.initiator_pid("hv2")
    assert new != old and initiator.alive(new)
    where = Path(next(e["dir"] for e in lab.state["initiators"] if e["host"] == "hv2"))
    initiator.PrSocketLun(where, 1).read_keys()  # answers: logged in to the LUN again


def test_lab_down_leaves_nothing_running(lab: Lab) -> None:
    state = labmod.status(lab.dir) or {}
    pids = [e["pid"] for e in state["initiators"]] + [state["iscsi"]["pid"]]
    pids += [h[k] for h in state["hosts"] for k in ("agent_pid", "libvirtd_pid")]
    qemus = [int(p.read_text()) for p in lab.dir.glob("hosts/*/run/qemu/*.pid")]
    lab.store.close()
    stopped = labmod.down(lab.dir)
    assert "tgtd" in stopped and {"initiator hv1", "initiator hv2"} <= set(stopped)
    assert not any(cmdline(p) for p in pids + qemus)
    assert not list(lab.dir.glob("initiators/*/*.nbd")), "no socket left"
    assert not any(p.exists() for p in lab_iscsi.socket_files(lab.target.control_port))
