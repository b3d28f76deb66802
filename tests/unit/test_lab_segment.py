"""The lab segment's address plan, the dom0 kernel parameters, the dom0 image's files and
the dom0 storage script's parsing (gridtool/lab/segment.py, dom0storage.py)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from gridtool.lab import dom0storage
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.procs import LabError
from gridtool.lab.segment import Segment, free_network


def seg() -> Segment:
    return Segment("/lab/segment", "abc123", "198.18.7.0/24")


def test_address_plan() -> None:
    s = seg()
    assert (s.ns, s.root_if, s.root_addr) == ("gtseg-abc123", "gtsrabc123", "198.18.7.1")
    assert [s.host_addr(i) for i in (0, 1)] == ["198.18.7.10/24", "198.18.7.11/24"]
    assert s.host_mac(1) == "52:54:00:67:00:01" and s.host_mac(300) == "52:54:00:67:01:2c"
    with pytest.raises(LabError, match="out of"):
        s.host_addr(200)
    with pytest.raises(LabError, match=r"segment\.up first"):
        Segment("/lab/segment", "abc123").host_addr(0)
    assert s.qemu_args(2) == [
        "-netdev", "vde,id=gtseg,sock=/lab/segment/vde",
        "-device", "virtio-net-pci,netdev=gtseg,mac=52:54:00:67:00:02,romfile="]
    assert s.kernel_arg(2) == "gridtool.seg=52:54:00:67:00:02,198.18.7.12/24"
    assert Segment.from_dict(s.to_dict()) == s


def test_free_network_avoids_used_blocks() -> None:
    used = [ipaddress.ip_network("198.18.0.0/16")]
    for _ in range(50):
        net = free_network(24, used)
        assert net.prefixlen == 24 and net.subnet_of(ipaddress.ip_network("198.19.0.0/16"))
    with pytest.raises(LabError, match="no free /24"):
        free_network(24, [ipaddress.ip_network("198.18.0.0/15")])


def test_kernel_args_name_nic_aoe_and_segment_portal() -> None:
    target = lab_iscsi.IscsiTarget("/lab", 3260, 1, 16, ["hv1"], segment_portal="198.18.7.1:3260")
    assert dom0storage.kernel_args(seg(), 0, "hv1", True, target) == [
        "gridtool.seg=52:54:00:67:00:00,198.18.7.10/24", "gridtool.aoe=1",
        "gridtool.iscsi=198.18.7.1:3260,iqn.2026-12.lab.gridtool:storage,"
        "iqn.2026-12.lab.gridtool:hv1"]
    target.segment_portal = ""  # no portal on the segment: no login
    assert dom0storage.kernel_args(seg(), 0, "hv1", False, target) == [seg().kernel_arg(0)]


def test_install_puts_script_and_enabled_unit_in_the_root(tmp_path: Path) -> None:
    dom0storage.install(tmp_path)
    dom0storage.install(tmp_path)  # again: same result, no error
    script = tmp_path / dom0storage.SCRIPT_PATH
    assert script.read_bytes() == dom0storage.SCRIPT.read_bytes()
    assert os.access(script, os.X_OK)
    unit = (tmp_path / "etc/systemd/system" / dom0storage.UNIT_NAME).read_text()
    assert f"ExecStart=/{dom0storage.SCRIPT_PATH}" in unit and "Before=libvirtd" in unit
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants" / dom0storage.UNIT_NAME
    assert os.readlink(wants) == f"/etc/systemd/system/{dom0storage.UNIT_NAME}"
    network = (tmp_path / dom0storage.NETWORK_PATH).read_text()  # networkd leaves the NIC be
    assert "Unmanaged=yes" in network and f" {seg().host_mac(1)} " in network
    assert network.count("52:54:00:67:") == 200


def run_script(tmp_path: Path, cmdline: str) -> subprocess.CompletedProcess[str]:
    """The dom0 script under busybox sh with ``cmdline`` as /proc/cmdline, a fake
    iscsiadm (logging its argv) first on PATH, no wait for devices."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "iscsiadm"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/iscsiadm.log\n')
    fake.chmod(0o755)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GRIDTOOL_CMDLINE": str(tmp_path / "cmdline"),
           "GRIDTOOL_ISCSI_ETC": str(tmp_path / "iscsi"), "GRIDTOOL_STORAGE_WAIT": "0"}
    return subprocess.run(["busybox", "sh", str(dom0storage.SCRIPT)], capture_output=True,
                          text=True, env=env, timeout=30)


def test_script_without_parameters_does_nothing(tmp_path: Path) -> None:
    done = run_script(tmp_path, "console=hvc0 quiet")
    assert (done.returncode, done.stdout) == (0, "")
    assert not (tmp_path / "iscsiadm.log").exists()


def test_script_reports_a_missing_nic(tmp_path: Path) -> None:
    done = run_script(tmp_path, "gridtool.seg=52:54:00:67:7f:7f,198.18.7.10/24 gridtool.aoe=1")
    assert done.returncode == 1
    assert done.stdout == "GRIDTOOL-STORAGE error no NIC with MAC 52:54:00:67:7f:7f\n"


def test_script_logs_in_as_the_hosts_initiator(tmp_path: Path) -> None:
    target, iqn = "iqn.2026-12.lab.gridtool:storage", "iqn.2026-12.lab.gridtool:hv2"
    done = run_script(tmp_path, f"quiet gridtool.iscsi=198.18.7.1:3260,{target},{iqn}")
    assert (tmp_path / "iscsi/initiatorname.iscsi").read_text() == f"InitiatorName={iqn}\n"
    assert (tmp_path / "iscsiadm.log").read_text().splitlines() == [
        "-m discovery -t sendtargets -p 198.18.7.1:3260",
        f"-m node -T {target} -p 198.18.7.1:3260 --login"]
    # the fake logs in but no device appears: one error line, a failed exit
    assert done.returncode == 1
    assert done.stdout == f"GRIDTOOL-STORAGE error no iSCSI LUN of {target} within 0 s\n"


def test_for_host_reads_the_lab_state() -> None:
    target = lab_iscsi.IscsiTarget("/lab", 3260, 1, 16, ["hv1"], segment_portal="198.18.7.1:3260")
    state = {"segment": seg().to_dict(), "iscsi": target.to_dict()}
    plan = dom0storage.for_host(state, 1, "hv1")
    assert plan.qemu_args == seg().qemu_args(1)
    assert plan.kernel_args == dom0storage.kernel_args(seg(), 1, "hv1", False, target)
    state["aoe"] = {"directory": "/lab/shared", "luns": 1}
    assert "gridtool.aoe=1" in dom0storage.for_host(state, 1, "hv1").kernel_args


def test_the_dom0_devices_and_the_lab_summary_name_every_lun() -> None:
    from gridtool.lab import aoe as lab_aoe
    from gridtool.lab import lab

    target = lab_iscsi.IscsiTarget("/lab", 3260, 2, 16, ["hv1"], segment_portal="198.18.7.1:3260")
    state = {"v": 1, "lab_dir": "/lab", "config": "/lab/gridtool.conf",
             "segment": seg().to_dict(), "iscsi": target.to_dict(),
             "aoe": lab_aoe.create(Path("/lab/shared"), 2).to_dict()}
    by_path = "/dev/disk/by-path/ip-198.18.7.1:3260-iscsi-iqn.2026-12.lab.gridtool:storage-lun-"
    devices = {"aoe": ["/dev/etherd/e0.1", "/dev/etherd/e0.2"],
               "iscsi": [f"{by_path}1", f"{by_path}2"]}
    assert dom0storage.devices(state) == devices
    assert lab.summary(state)["segment"] == {"network": "198.18.7.0/24",
                                             "iscsi_portal": "198.18.7.1:3260",
                                             "dom0_devices": devices}
    assert dom0storage.devices({}) == {"aoe": [], "iscsi": []}
    assert "segment" not in lab.summary({"lab_dir": "/lab", "config": "/c"})
