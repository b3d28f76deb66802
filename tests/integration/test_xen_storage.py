"""Shared storage the Xen way (issue 17 item 2): ``gridtool lab up --hypervisor xen`` puts
its dom0 on the lab's L2 segment, with vblade's AoE LUNs and tgtd's iSCSI portal on it;
the dom0's own kernel attaches them at boot (``aoe``, ``iscsiadm``), PV guests run on
those block devices through libxl, and the dom0's agent registers its PR key with
``sg_persist`` (``pr_backend = sg_persist``) so that a manager's PREEMPT fences the dom0's
writes at the target. One lab of one dom0 for every check (module scope: a dom0 takes
minutes to boot under TCG); the last check takes it down and looks for leftovers.

Not in CI (marker ``xen``, excluded by scripts/test): run alone with
``pytest -m xen tests/integration/test_xen_storage.py`` after ``gridtool lab
build-xen-image``."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest

from gridtool.config import Config
from gridtool.domains.storage import lun_id
from gridtool.lab import aoe as lab_aoe
from gridtool.lab import dom0storage, xenlab
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab import lab as labmod
from gridtool.lab import segment as lab_segment
from gridtool.lab.procs import cmdline
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.storage import fence, pr, sgcli
from gridtool.storage.iscsi import IscsiLun
from tests.harness import xenbed
from tests.harness.seg_leftovers import left_behind
from tests.harness.testbed import wait_until
from tests.harness.xenbed import holder, start

pytestmark = [pytest.mark.xen, pytest.mark.netns, pytest.mark.timeout(1800)]
HOST = "hv1"
#: Where the checks write on a LUN (512-byte blocks; the PV guests never write).
BEFORE_BLOCK, AFTER_BLOCK = 100, 200


xen_lab = xenbed.lab_fixture("xenstorage", hosts=1)
cfg, store = xenbed.cfg, xenbed.store  # module-scoped fixtures


def dom0(xen_lab: dict[str, Any]) -> xenlab.XenHost:
    return xenlab.XenHost.from_dict(xen_lab["hosts"][0])


def in_dom0(xen_lab: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    return xenbed.in_dom0(dom0(xen_lab), command)


def start_on(xen_lab: dict[str, Any], store: EtcdStore, cfg: Config, name: str,
             device: str) -> str:
    """Define PV guest ``name`` with ``device`` (a block device of the dom0) as its disk,
    start it through the agent (libxl, the fence hook); wait until the registry shows it
    running and fenced by the dom0 and its console prints heartbeats. Its uuid."""
    conn = libvirt.open(dom0(xen_lab).libvirt_uri)
    try:
        uuid = conn.defineXML(xenlab.pv_guest_xml(name, device)).UUIDString()
    finally:
        conn.close()
    start(store, cfg, HOST, uuid, name)
    rec = Registry(store, cfg.keys).guests_of(HOST)[0][uuid]
    volume = lun_id(device)
    assert rec.fenced and list(rec.volumes) == [volume]
    assert holder(store, cfg, volume) == HOST
    wait_until(lambda: "GRIDTOOL-HEARTBEAT" in dom0(xen_lab).console(name, 10.0), 600,
               what=f"{name}'s heartbeats on its console")
    return uuid


def test_the_dom0_kernel_attaches_the_aoe_and_iscsi_luns_at_boot(
        xen_lab: dict[str, Any]) -> None:
    devices = dom0storage.devices(xen_lab)
    assert len(devices["aoe"]) == labmod.XEN_AOE_LUNS
    assert len(devices["iscsi"]) == labmod.XEN_ISCSI_LUNS
    wanted = [*devices["aoe"], *devices["iscsi"]]
    shown = in_dom0(xen_lab, "udevadm settle -t 60; systemctl is-active gridtool-dom0-storage;"
                    " for d in " + " ".join(wanted) + '; do test -b "$d" && echo "$d"; done')
    assert shown.stdout.split() == ["active", *wanted], shown
    seg = lab_segment.Segment.from_dict(xen_lab["segment"])
    log = in_dom0(xen_lab, "journalctl -b -o cat -u gridtool-dom0-storage").stdout
    assert f" {seg.host_addr(0)}" in log and "GRIDTOOL-STORAGE error" not in log, log


def test_a_pv_guest_on_an_aoe_lun_starts_through_libxl_and_takes_its_fence(
        xen_lab: dict[str, Any], store: EtcdStore, cfg: Config) -> None:
    device = dom0storage.devices(xen_lab)["aoe"][0]
    start_on(xen_lab, store, cfg, "aoe-pv", device)
    # the dom0 writes through its aoe driver to vblade's file on this machine
    token = secrets.token_hex(8)
    wrote = in_dom0(xen_lab, _dd(device, f"AOE-{token}", BEFORE_BLOCK))
    assert wrote.returncode == 0, wrote.stderr
    targets = lab_aoe.AoeTargets.from_dict(xen_lab["aoe"])
    assert _block(targets.lun_path(1), BEFORE_BLOCK).startswith(f"AOE-{token}".encode())


def test_a_pv_guest_on_an_iscsi_lun_registers_its_dom0_and_a_preempt_fences_the_dom0(
        xen_lab: dict[str, Any], store: EtcdStore, cfg: Config) -> None:
    """The kernel-initiator back end from a real dom0: the agent's sg_persist REGISTER
    (and type-5 RESERVE) before the start, the manager's PREEMPT from its own initiator
    (libiscsi on the loopback portal), after which the dom0 kernel's writes are refused."""
    target = lab_iscsi.IscsiTarget.from_dict(xen_lab["iscsi"])
    device = dom0storage.iscsi_device(target, 1)
    start_on(xen_lab, store, cfg, "iscsi-pv", device)
    host_key = pr.host_key(HOST)
    fencer = pr.host_key(fence.FENCER_KEY_NAME)
    lun = IscsiLun(target.url(1), lab_iscsi.MANAGER_INITIATOR)
    try:
        assert lun.read_keys().keys == (host_key,)
        assert lun.read_reservation().key == host_key
        seen = in_dom0(xen_lab, " ".join(sgcli.read_keys(device))).stdout
        assert sgcli.parse_keys(seen).keys == (host_key,)  # the dom0's own session: the same
        before, after = (f"{w}-{secrets.token_hex(8)}" for w in ("BEFORE", "AFTER"))
        wrote = in_dom0(xen_lab, _dd(device, before, BEFORE_BLOCK))
        assert wrote.returncode == 0, wrote.stderr
        fence.preempt(lun, fencer, host_key)
        assert lun.read_keys().keys == (fencer,)
        refused = [in_dom0(xen_lab, _dd(device, after, AFTER_BLOCK)) for _ in range(3)]
    finally:
        lun.close()
    assert [r.returncode != 0 for r in refused] == [True] * 3, refused
    assert _block(target.lun_path(1), BEFORE_BLOCK).startswith(before.encode())
    assert not _block(target.lun_path(1), AFTER_BLOCK).startswith(after.encode())


def test_lab_down_leaves_nothing_of_the_segment_and_its_targets(
        xen_lab: dict[str, Any]) -> None:
    directory = Path(xen_lab["lab_dir"])
    seg = lab_segment.Segment.from_dict(xen_lab["segment"])
    target = lab_iscsi.IscsiTarget.from_dict(xen_lab["iscsi"])
    vblades = list(lab_aoe.AoeTargets.from_dict(xen_lab["aoe"]).pids.values())
    machine = dom0(xen_lab).qemu_pid
    assert all(cmdline(p) for p in [seg.switch_pid, *vblades, target.pid, machine])
    stopped = labmod.down(directory)
    assert {"segment", "tgtd", f"xen {HOST} (qemu)"} <= set(stopped), stopped
    assert {f"vblade e0.{n}" for n in range(1, labmod.XEN_AOE_LUNS + 1)} <= set(stopped)
    assert left_behind(seg, [*vblades, target.pid, machine]) == []
    assert not any(p.exists() for p in lab_iscsi.socket_files(target.control_port))


def _dd(device: str, text: str, block: int) -> str:
    """A dom0 command writing ``text`` (padded to 512 bytes) at ``block`` of ``device``,
    past the page cache (so a refused write fails the command)."""
    return (f"printf %s {text} | dd of={device} bs=512 count=1 seek={block} oflag=direct "
            "conv=sync,notrunc status=none")


def _block(path: Path, block: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(block * 512)
        return fh.read(512)
