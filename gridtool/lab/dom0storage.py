"""Shared storage the Xen way: what the lab starts for the dom0 kernels, and what each dom0
runs at boot to attach it.

Lab side (:func:`start`, :func:`stop`): the L2 segment (:mod:`gridtool.lab.segment`),
vblade AoE LUNs on it (:mod:`gridtool.lab.aoe`), and a second portal of the lab's tgtd on
the segment's root address (:func:`gridtool.lab.iscsi.add_portal`). :func:`start` returns,
per host, the extra QEMU arguments (its NIC on the segment) and the dom0 kernel
parameters that tell the boot script what to attach.

Dom0 side: ``data/dom0-storage.sh``, installed into the dom0 image by :func:`install` as
``/usr/local/sbin/gridtool-dom0-storage`` with a systemd unit that runs it once before
libvirtd. It reads everything from ``/proc/cmdline`` (so one cached image serves every
lab): brings up the segment NIC, ``modprobe aoe`` on it and discovers
(``/dev/etherd/eS.P``), and logs in with ``iscsiadm``
(``/dev/disk/by-path/ip-ADDR:3260-iscsi-IQN-lun-N``), where ``sg_persist`` (the
``pr_backend=sg_persist`` back end) takes the storage fence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridtool.lab import aoe as lab_aoe
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab import segment as lab_segment

SCRIPT = Path(__file__).with_name("data") / "dom0-storage.sh"
#: Where :func:`install` puts the script and its unit in a dom0 root.
SCRIPT_PATH = "usr/local/sbin/gridtool-dom0-storage"
UNIT_NAME = "gridtool-dom0-storage.service"
UNIT = f"""\
[Unit]
Description=gridtool lab: attach the shared storage (AoE, iSCSI) from the segment
After=iscsid.socket systemd-udevd.service
Before=libvirtd.service xendomains.service gridtool-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/{SCRIPT_PATH}
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class HostStorage:
    """What one dom0 QEMU machine needs: QEMU arguments and dom0 kernel parameters."""

    qemu_args: list[str]
    kernel_args: list[str]


#: systemd-networkd leaves the segment NIC to the boot script (matched by MAC: every
#: segment MAC a lab can give): the image's DHCP network would otherwise claim it, and
#: drop the address the script set.
NETWORK_PATH = "etc/systemd/network/10-gridtool-segment.network"


def network_file() -> str:
    """The networkd file of :data:`NETWORK_PATH`: every segment NIC unmanaged."""
    macs = " ".join(lab_segment.Segment.host_mac(i) for i in range(lab_segment.MAX_HOSTS))
    return f"[Match]\nMACAddress={macs}\n\n[Link]\nUnmanaged=yes\n"


def recipe() -> bytes:
    """What :func:`install` puts into an image (part of the image's cache key)."""
    return b"\0".join([SCRIPT.read_bytes(), UNIT.encode(), network_file().encode()])


def install(root: Path) -> list[Path]:
    """Install the boot script, its enabled unit and :data:`NETWORK_PATH` into the dom0
    root tree ``root``."""
    script = root / SCRIPT_PATH
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_bytes(SCRIPT.read_bytes())
    script.chmod(0o755)
    unit = root / "etc/systemd/system" / UNIT_NAME
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants" / UNIT_NAME
    wants.parent.mkdir(parents=True, exist_ok=True)
    wants.unlink(missing_ok=True)
    wants.symlink_to(f"/etc/systemd/system/{UNIT_NAME}")
    network = root / NETWORK_PATH
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text(network_file())
    return [script, unit, wants, network]


def kernel_args(seg: lab_segment.Segment, index: int, host: str, aoe: bool,
                iscsi: lab_iscsi.IscsiTarget | None) -> list[str]:
    """Host ``index`` (named ``host``)'s dom0 kernel parameters for the boot script."""
    args = [seg.kernel_arg(index)]
    if aoe:
        args.append("gridtool.aoe=1")
    if iscsi is not None and iscsi.segment_portal:
        args.append(f"gridtool.iscsi={iscsi.segment_portal},{iscsi.iqn},"
                    f"{lab_iscsi.initiator_iqn(host)}")
    return args


def start(directory: Path, state: dict[str, Any], names: list[str],
          aoe_luns: int = 1) -> list[HostStorage]:
    """Bring up the segment, the AoE LUNs (``aoe_luns``, 0: none) and, when the lab has
    an iSCSI target (``state["iscsi"]``), its segment portal; record them in ``state``
    as they come up (so :func:`stop` undoes a half start). Idempotent."""
    seg = (lab_segment.Segment.from_dict(state["segment"]) if "segment" in state
           else lab_segment.create(directory / "segment"))
    state["segment"] = seg.to_dict()  # names first: a failed up() is still torn down
    lab_segment.up(seg)
    state["segment"] = seg.to_dict()
    if aoe_luns:
        targets = (lab_aoe.AoeTargets.from_dict(state["aoe"]) if "aoe" in state
                   else lab_aoe.create(directory / "shared", aoe_luns))
        state["aoe"] = targets.to_dict()
        try:
            lab_aoe.start(targets, seg)
        finally:
            state["aoe"] = targets.to_dict()
    if "iscsi" in state:
        iscsi = lab_iscsi.add_portal(lab_iscsi.IscsiTarget.from_dict(state["iscsi"]),
                                     seg.root_addr)
        state["iscsi"] = iscsi.to_dict()
    return [for_host(state, i, name) for i, name in enumerate(names)]


def for_host(state: dict[str, Any], index: int, name: str) -> HostStorage:
    """Host ``index`` (named ``name``)'s QEMU arguments and dom0 kernel parameters, from
    a lab state that :func:`start` filled (what a Xen lab's machine command line adds)."""
    seg = lab_segment.Segment.from_dict(state["segment"])
    iscsi = lab_iscsi.IscsiTarget.from_dict(state["iscsi"]) if "iscsi" in state else None
    return HostStorage(seg.qemu_args(index),
                       kernel_args(seg, index, name, "aoe" in state, iscsi))


def iscsi_device(target: lab_iscsi.IscsiTarget, lun: int) -> str:
    """LUN ``lun`` of the lab's target as a dom0 names it (udev's by-path link of the
    session to the segment portal)."""
    return f"/dev/disk/by-path/ip-{target.segment_portal}-iscsi-{target.iqn}-lun-{lun}"


def devices(state: dict[str, Any]) -> dict[str, list[str]]:
    """The segment's LUNs as every dom0 names them: ``{"aoe": [...], "iscsi": [...]}``."""
    found: dict[str, list[str]] = {"aoe": [], "iscsi": []}
    if "aoe" in state:
        targets = lab_aoe.AoeTargets.from_dict(state["aoe"])
        found["aoe"] = [targets.device(slot) for slot in targets.slots()]
    if "iscsi" in state and state["iscsi"].get("segment_portal"):
        target = lab_iscsi.IscsiTarget.from_dict(state["iscsi"])
        found["iscsi"] = [iscsi_device(target, n) for n in target.lun_numbers()]
    return found


def mark_alive(state: dict[str, Any]) -> None:
    """Mark the segment's switch and each vblade alive or not (``lab status``)."""
    if "segment" in state:
        state["segment"]["alive"] = lab_segment.switch_alive(
            lab_segment.Segment.from_dict(state["segment"]))
    if "aoe" in state:
        targets = lab_aoe.AoeTargets.from_dict(state["aoe"])
        state["aoe"]["alive"] = {str(slot): lab_aoe.alive(targets, slot)
                                 for slot in targets.slots()}


def stop(state: dict[str, Any]) -> list[str]:
    """Stop the AoE targets and remove the segment; what was stopped (idempotent)."""
    stopped = []
    if "aoe" in state:
        stopped += [f"vblade {a}" for a in lab_aoe.stop(lab_aoe.AoeTargets.from_dict(state["aoe"]))]
    if "segment" in state and lab_segment.down(lab_segment.Segment.from_dict(state["segment"])):
        stopped.append("segment")
    return stopped
