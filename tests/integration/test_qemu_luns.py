"""The QEMU lab, its fenced guests on real iSCSI LUNs (issue 13 items 1 and 7), on one lab
for the module: ``gridtool lab up --hosts 2 --guests 2 --hypervisor qemu`` (iSCSI by
default: a real tgtd and one initiator per host) boots four guests, the two fenced ones
(``hvN-vm2``) with their data disk on LUN N through their host's initiator. hv1-vm2's
records are on LUN 1 (read through the target); it live-migrates to hv2 (the same path
names the LUN there) and writes on; ``lab power-off hv2`` takes hv2's initiator down,
``power-on`` brings it back; ``lab down`` leaves nothing. The tests run in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from tests.integration.test_qemu import holder, record_on

pytestmark = pytest.mark.qemu

GUEST = "hv1-vm2"  # fenced, on LUN 1


class Lab:
    """The module's lab, as ``lab up --json`` left it: its dir, state, a store."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        up = self.gridtool("lab", "up", "--hosts", "2", "--guests", "2", "--hypervisor",
                           "qemu", "--json", timeout=300)
        assert up.returncode == 0, up.stderr
        self.summary = json.loads(up.stdout)
        self.state: dict[str, Any] = labmod.status(directory) or {}
        self.cfg = load(self.state["config"])
        self.store = EtcdStore(self.cfg)
        self.registry = Registry(self.store, self.cfg.keys)
        self.target = lab_iscsi.IscsiTarget.from_dict(self.state["iscsi"])
        self.url = self.target.url(1)
        self.volume = f"iscsi-{self.target.iqn}-lun1"

    def gridtool(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from gridtool.cli.main import main; main()", *args],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "GRIDTOOL_LAB_DIR": str(self.dir)})

    def initiator_pid(self, host: str) -> int:
        state = labmod.status(self.dir) or {}
        return next(e["pid"] for e in state["initiators"] if e["host"] == host)

    def records(self, boot: str) -> int:
        """``boot``'s valid records on LUN 1, read through the target."""
        found, _ = diskcheck.scan(diskcheck.lun_slots(self.url, lab_iscsi.CLI_INITIATOR))
        return sum(1 for r in found if r.boot == boot)

    def boots(self) -> list[str]:
        return qemu_testbed.data_boots(self.dir / "serial" / f"{GUEST}.log")


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


def test_lab_up_boots_the_sample_guests_the_fenced_ones_on_luns(lab: Lab) -> None:
    assert all(h["libvirt_uri"].startswith("qemu+tcp://127.0.0.1:")
               for h in lab.summary["hosts"])
    assert lab.summary["iscsi"]["urls"] == [lab.target.url(1), lab.target.url(2)]
    guests = json.loads(lab.gridtool("guest", "list", "--json").stdout)["guests"]
    assert {g["name"] for g in guests if g["state"] == "running"} == {
        "hv1-vm1", "hv1-vm2", "hv2-vm1", "hv2-vm2"}
    shared = {g["name"]: d["volume"] for g in guests for d in g["disks"] if d["shared"]}
    assert shared == {f"hv{n}-vm2": f"iscsi-{lab.target.iqn}-lun{n}" for n in (1, 2)}, \
        "the agents name the NBD disks after their LUNs"
    assert holder(lab.store, lab.cfg, lab.volume) == "hv1"
    assert not list((lab.dir / "shared").glob("*.img")), "no data disk file in the shared dir"
    assert all(p.exists() for p in lab.dir.glob("hosts/*/etc/hooks/qemu.d/gridtool"))
    boot = wait_until(lambda: next(iter(lab.boots()), ""), 120, what=f"{GUEST} writing")
    wait_until(lambda: lab.records(boot) >= 5, 30, what=f"5 records of {GUEST} on LUN 1")


def test_a_guest_on_a_lun_live_migrates_and_writes_on(lab: Lab) -> None:
    (boot,) = lab.boots()
    uuid = next(r.uuid for r in lab.registry.guests_of("hv1")[0].values() if r.name == GUEST)
    moved = lab.gridtool("guest", "migrate", GUEST, "--to", "hv2", "--live")
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: (r := record_on(lab.registry, "hv2", uuid)) is not None
               and r.state == "running", 30, what=f"{GUEST} reported running on hv2")
    assert holder(lab.store, lab.cfg, lab.volume) == "hv2"
    before = lab.records(boot)
    wait_until(lambda: lab.records(boot) >= before + 10, 30, what=f"{GUEST} writing from hv2")
    assert lab.boots() == [boot], "the same boot, not a restart"
    checked = lab.gridtool("lab", "disk-check", "--json", lab.url)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and [b["boot"] for b in report["boots"]] == [boot]


def test_power_off_takes_the_hosts_initiator_down_and_power_on_brings_it_back(
        lab: Lab) -> None:
    old = lab.initiator_pid("hv2")
    assert initiator.alive(old)
    off = lab.gridtool("lab", "power-off", "hv2")
    assert off.returncode == 0 and GUEST in off.stderr, off.stderr
    wait_until(lambda: not initiator.alive(old), 5, what="hv2's initiator gone")
    assert initiator.alive(lab.initiator_pid("hv1")), "hv1's sessions are not touched"
    on = lab.gridtool("lab", "power-on", "hv2")
    assert on.returncode == 0, on.stderr
    new = lab.initiator_pid("hv2")
    assert new != old and initiator.alive(new)
    where = Path(next(e["dir"] for e in lab.state["initiators"] if e["host"] == "hv2"))
    initiator.PrSocketLun(where, 1).read_keys()  # answers: logged in to the LUN again


def test_lab_down_leaves_nothing_running(lab: Lab) -> None:
    state = labmod.status(lab.dir) or {}
    pids = [e["pid"] for e in state["initiators"]] + [state["iscsi"]["pid"]]
    pids += [h[k] for h in state["hosts"] for k in ("agent_pid", "libvirtd_pid")]
    qemus = [pid for pid in (int(p.read_text() or 0) for p in lab.dir.glob(
        "hosts/*/run/qemu/*.pid")) if "qemu-system" in cmdline(pid)]
    assert qemus, "hv1-vm1 runs on"
    lab.store.close()
    down = lab.gridtool("lab", "down")
    assert down.returncode == 0, down.stderr
    for what in ("libvirtd hv1 (qemu)", "tgtd", "initiator hv1", "initiator hv2"):
        assert what in down.stderr, what
    assert not any(cmdline(p) for p in pids + qemus)
    assert not list(lab.dir.glob("hosts/*/etc/hooks/qemu.d/gridtool")), "hook files removed"
    assert not list(lab.dir.glob("initiators/*/*.nbd")), "no socket left"
    assert not any(p.exists() for p in lab_iscsi.socket_files(lab.target.control_port))
