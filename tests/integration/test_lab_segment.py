"""The lab's L2 segment for the dom0 kernels (gridtool/lab/segment.py), its vblade AoE
LUNs (aoe.py) and the tgtd portal on it (dom0storage.py): real namespace, bridge,
vde_switch, vblade and tgtd. The dom0 kernel's side is the ``xen``-tier test at the end: a
plain QEMU TCG machine with the lab's Debian kernel, aoe.ko and the dom0 boot script."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridtool.lab import aoe as lab_aoe
from gridtool.lab import dom0storage, lab
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab import segment as lab_segment
from gridtool.lab.procs import cmdline
from tests.harness import kernel_guest
from tests.harness.seg_leftovers import left_behind

pytestmark = pytest.mark.netns
HOSTS = ["hv1", "hv2"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A lab's tgtd, segment and one AoE LUN; the lab state that records them."""
    directory = tmp_path_factory.mktemp("lab")
    target = lab_iscsi.create(directory, HOSTS, luns=1, size_mb=8)
    state: dict[str, Any] = {}
    try:
        lab_iscsi.start(target)
        state["iscsi"] = target.to_dict()
        state["hosts_storage"] = dom0storage.start(directory, state, HOSTS)
        yield state
    finally:
        dom0storage.stop(state)
        lab_iscsi.stop(target)


def test_segment_plan_and_tgtd_portal_on_it(storage: dict[str, Any]) -> None:
    seg = lab_segment.Segment.from_dict(storage["segment"])
    target = lab_iscsi.IscsiTarget.from_dict(storage["iscsi"])
    assert target.segment_portal == f"{seg.root_addr}:3260"
    hosts = storage["hosts_storage"]
    assert hosts[1].qemu_args == seg.qemu_args(1)
    assert hosts[1].kernel_args == [seg.kernel_arg(1), "gridtool.aoe=1",
                                    f"gridtool.iscsi={target.segment_portal},{target.iqn},"
                                    f"{lab_iscsi.initiator_iqn('hv2')}"]
    # from inside the segment's namespace, the host's initiator sees the target's LUN
    listed = subprocess.run(seg.exec_argv(["iscsi-ls", "-s", "-i", lab_iscsi.initiator_iqn("hv2"),
                                           f"iscsi://{target.segment_portal}"]),
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert f"Target:{target.iqn}" in listed.stdout and "Lun:1" in listed.stdout
    # and one not in the ACL is not even told the target exists
    stranger = subprocess.run(seg.exec_argv(["iscsi-ls", "-s", "-i", "iqn.2026-12.x:stranger",
                                             f"iscsi://{target.segment_portal}"]),
                              capture_output=True, text=True, timeout=30)
    assert (stranger.returncode, stranger.stdout) == (0, "")


def test_vblade_serves_the_lun_file_on_the_bridge(storage: dict[str, Any]) -> None:
    targets = lab_aoe.AoeTargets.from_dict(storage["aoe"])
    seg = lab_segment.Segment.from_dict(storage["segment"])
    pid = targets.pids[1]
    assert lab_aoe.alive(targets, 1) and lab_segment.switch_alive(seg)
    line = cmdline(pid)
    assert f" 0 1 {lab_segment.BRIDGE} {targets.lun_path(1)}" in line
    assert Path(f"/proc/{pid}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()
    assert targets.lun_path(1).stat().st_size == lab_aoe.LUN_MIB << 20


def test_start_again_changes_nothing_and_lab_down_removes_everything(tmp_path: Path) -> None:
    state: dict[str, Any] = {}
    try:
        first = dom0storage.start(tmp_path, state, ["hv1"])
        before = {k: dict(state[k]) for k in ("segment", "aoe")}
        assert dom0storage.start(tmp_path, state, ["hv1"]) == first
        assert {k: dict(state[k]) for k in ("segment", "aoe")} == before
        seg = lab_segment.Segment.from_dict(state["segment"])
        pids = [seg.switch_pid, *lab_aoe.AoeTargets.from_dict(state["aoe"]).pids.values()]
        lab._save(tmp_path, state)
        shown = lab.status(tmp_path)
        assert shown is not None
        assert (shown["segment"]["alive"], shown["aoe"]["alive"]) == (True, {"1": True})
        assert sorted(lab.down(tmp_path)) == ["segment", "vblade e0.1"]
        assert left_behind(seg, pids) == []
        assert dom0storage.stop(state) == []  # again: nothing left to stop
    finally:
        dom0storage.stop(state)


@pytest.mark.xen
@pytest.mark.qemu
def test_a_kernel_on_the_segment_reads_and_writes_the_aoe_lun(storage: dict[str, Any]) -> None:
    targets = lab_aoe.AoeTargets.from_dict(storage["aoe"])
    host_marker = secrets.token_hex(8).encode()
    with targets.lun_path(1).open("r+b") as fh:
        fh.write(host_marker)
    token = secrets.token_hex(4)
    host = storage["hosts_storage"][0]
    args = [a for a in host.kernel_args if not a.startswith("gridtool.iscsi=")]  # no iscsiadm
    out = kernel_guest.boot([*args, f"gridtool.token={token}"], host.qemu_args, timeout=240)
    seg = lab_segment.Segment.from_dict(storage["segment"])
    assert f"GRIDTOOL-STORAGE seg eth0 {seg.host_addr(0)}" in out, out[-3000:]
    assert "GRIDTOOL-STORAGE aoe /dev/etherd/e0.1" in out and "GRIDTOOL-STORAGE-EXIT 0" in out
    assert f"AOE-READ {host_marker.decode()}" in out and "AOE-WROTE 0" in out
    with targets.lun_path(1).open("rb") as fh:
        fh.seek(512)
        assert fh.read(20) == f"GUEST-WROTE {token}".encode()


def test_down_stops_a_switch_whose_pid_was_never_recorded(tmp_path: Path) -> None:
    """A start that failed between the switch's start and its PID's recording (the lab
    state keeps switch_pid 0) must still leave no vde_switch behind."""
    seg = lab_segment.up(lab_segment.create(tmp_path / "segment"))
    pid = seg.switch_pid
    try:
        unrecorded = lab_segment.Segment(seg.directory, seg.suffix, seg.network)
        assert unrecorded.switch_pid == 0
        assert lab_segment.down(unrecorded)
        assert left_behind(seg, [pid]) == []
    finally:
        lab_segment.down(seg)


def _write_line(line: str) -> tuple[int, int] | None:
    """``W <n> <status>`` -> (n, status)."""
    parts = line.split()
    return (int(parts[1]), int(parts[2])) if len(parts) == 3 and parts[0] == "W" else None


@pytest.mark.xen
@pytest.mark.qemu
def test_a_kernel_initiator_registers_with_sg_persist_and_is_fenced_by_preempt(
        storage: dict[str, Any]) -> None:
    """The dom0 way: the kernel's iSCSI session to tgtd's segment portal, the sg_persist
    command lines of the sg_persist back end (REGISTER AND IGNORE, RESERVE type 5) through
    it; the managers' PREEMPT over libiscsi; the kernel's next writes are refused."""
    from gridtool.storage import fence, pr
    from gridtool.storage.iscsi import IscsiLun

    seg = lab_segment.Segment.from_dict(storage["segment"])
    target = lab_iscsi.IscsiTarget.from_dict(storage["iscsi"])
    key, manager = pr.host_key("hv1"), pr.host_key("manager")
    address, port = target.segment_portal.split(":")
    args = [seg.kernel_arg(0), f"gridtool.portal={address},{port},{target.iqn},"
            f"{lab_iscsi.initiator_iqn('hv1')}", f"gridtool.key=0x{key:x}"]
    with kernel_guest.Machine(args, seg.qemu_args(0)) as machine:
        for step in ("ISCSI-LOGIN", "PR-REGISTER", "PR-RESERVE"):
            line = machine.wait_line(lambda ln, s=step: ln.startswith(f"{s} "), 300, step)
            assert line == f"{step} 0", machine.lines[-20:]
        machine.wait_line(lambda ln: _write_line(ln) == (3, 0), 60, "4 writes accepted")
        lun = IscsiLun(target.url(1), lab_iscsi.MANAGER_INITIATOR)
        try:
            assert key in lun.read_keys().keys and lun.read_reservation().key == key
            fence.preempt(lun, manager, key)
            fenced_at = len(machine.lines)
            assert lun.read_keys().keys == (manager,)
        finally:
            lun.close()
        first = machine.wait_line(lambda ln: (_write_line(ln) or (0, 0))[1] != 0, 60,
                                  "a refused write", after=fenced_at)
        refused = _write_line(first)
        assert refused is not None
        machine.wait_line(lambda ln: (_write_line(ln) or (0, 0))[0] >= refused[0] + 3, 60,
                          "3 more writes")
    writes = [w for w in map(_write_line, machine.lines) if w is not None]
    accepted = [n for n, status in writes if status == 0]
    assert accepted and max(accepted) < refused[0]  # none accepted after the first refusal
    assert [s for n, s in writes if n >= refused[0]] == [1] * (len(writes) - refused[0])
    with lab_iscsi.IscsiTarget.from_dict(storage["iscsi"]).lun_path(1).open("rb") as fh:
        fh.seek(1024)
        assert fh.read(16).rstrip(b"\0") == f"GTREC {max(accepted)}".encode()
