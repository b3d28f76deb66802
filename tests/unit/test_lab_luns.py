"""The QEMU lab's guests on LUNs, without processes: the disk XML the lab writes names the
LUN the way gridtool's identity maps to the LUN's fence key, on every host alike; how many
LUNs a lab gets; iSCSI is a QEMU lab's default storage."""

from __future__ import annotations

from pathlib import Path

from gridtool.domains.storage import SharedStorageRules
from gridtool.domains.xml import parse_domain
from gridtool.lab import initiator, qemu
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab import lab as labmod

IMAGE = qemu.GuestImage(Path("/cache/vmlinuz"), Path("/cache/initramfs"), "tcg")


def test_a_guest_on_a_lun_is_fenced_by_that_luns_id_with_no_pattern(tmp_path: Path) -> None:
    source = qemu.lun_source(lab_iscsi.TARGET_IQN, 3, qemu.luns_dir(tmp_path))
    xml = qemu.guest_xml("g1", IMAGE, source, tmp_path / "g1.log")
    (disk,) = parse_domain(xml, SharedStorageRules(patterns=())).disks
    assert (disk.kind, disk.protocol, disk.shared) == ("network", "nbd", True)
    assert disk.volume == f"iscsi-{lab_iscsi.TARGET_IQN}-lun3"
    assert f"socket='{tmp_path / 'luns' / 'lun-3.nbd'}'" in xml, "one path on every host"
    assert "<serial>gridtool-data</serial>" in xml and "<shareable/>" in xml
    target = lab_iscsi.create(tmp_path, ["hv1"], luns=3)
    assert source.export == initiator.export(target.url(3)), "what the initiator serves"


def test_a_hosts_initiator_and_the_common_path_survive_the_lab_state(tmp_path: Path) -> None:
    host = qemu.QemuHost("hv2", str(tmp_path / "hosts" / "hv2"), port=1234,
                         luns_dir=str(qemu.luns_dir(tmp_path)),
                         initiator_dir=str(qemu.initiators_dir(tmp_path) / "hv2"))
    again = qemu.QemuHost.from_dict(host.to_dict())
    assert again == host


def test_a_file_data_disk_is_as_before(tmp_path: Path) -> None:
    xml = qemu.guest_xml("g1", IMAGE, tmp_path / "shared" / "g1.img", tmp_path / "g1.log",
                         data=True)
    (disk,) = parse_domain(xml, SharedStorageRules(patterns=(f"{tmp_path}/shared/*",))).disks
    assert disk.kind == "file" and disk.volume is not None
    assert disk.volume.startswith("path-")


def test_one_lun_per_fenced_sample_guest_and_iscsi_by_default_for_qemu() -> None:
    assert labmod.lun_count("qemu", hosts=3, guests=4) == 6  # vm2 and vm4 of each host
    assert labmod.lun_count("qemu", hosts=3, guests=1) == 2
    assert labmod.lun_count("test", hosts=5, guests=8) == 2
    assert labmod.default_storage("qemu") == "iscsi"
    assert labmod.default_storage("test") == "files"
