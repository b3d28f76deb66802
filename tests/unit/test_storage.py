"""Unit tests for gridtool.domains.storage: shared-storage classification and volume ids."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridtool.domains.storage import (
    DEFAULT_SHARED_PATTERNS,
    SharedStorageRules,
    classify,
    is_shared,
    volume_id,
)
from gridtool.registry.model import Disk

RULES = SharedStorageRules()
IQN = "iqn.2013-06.com.example:storage.tgt1"
BY_PATH = "/dev/disk/by-path/ip-192.168.10.5:3260-iscsi-" + IQN + "-lun-{lun}"


def block(source: str, **kw: object) -> Disk:
    return Disk(target="vda", source=source, kind="block", **kw)


def iscsi_net(name: str) -> Disk:
    return Disk(target="sda", source=name, kind="network", protocol="iscsi")


# kind of disk -> (disk, shared?, volume id or None)
CASES = [
    ("aoe", block("/dev/etherd/e1.2"), True, "aoe-e1.2"),
    ("aoe-partition", block("/dev/etherd/e1.2p3"), True, "aoe-e1.2"),
    ("aoe-multi-digit", block("/dev/etherd/e12.10"), True, "aoe-e12.10"),
    ("iscsi-by-path", block(BY_PATH.format(lun=1)), True, f"iscsi-{IQN}-lun1"),
    ("iscsi-by-path-partition", block(BY_PATH.format(lun=1) + "-part2"), True,
     f"iscsi-{IQN}-lun1"),
    ("iscsi-network", iscsi_net(f"{IQN}/1"), True, f"iscsi-{IQN}-lun1"),
    ("iscsi-network-no-lun", iscsi_net(IQN), True, f"iscsi-{IQN}-lun0"),
    ("shareable-file", Disk("vdb", "/srv/nfs/cluster/db.img", shareable=True), True,
     "path-srv%2Fnfs%2Fcluster%2Fdb.img"),
    ("local-file", Disk("vda", "/var/lib/libvirt/images/web1.qcow2"), False, None),
    ("local-block", block("/dev/vg0/web1"), False, None),
    ("local-sd", block("/dev/sdb"), False, None),
    ("by-path-not-iscsi", block("/dev/disk/by-path/pci-0000:00:1f.2-ata-1"), False, None),
    ("rbd-network", Disk("vdc", "pool/img", kind="network", protocol="rbd"), False, None),
    ("nbd-network", Disk("vdc", "export", kind="network", protocol="nbd"), False, None),
    ("volume-unshared-pool", Disk("vdd", "default/web1.qcow2", kind="volume"), False, None),
    ("empty-source", Disk("vde", ""), False, None),
]


@pytest.mark.parametrize(("disk", "shared", "volume"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_classify_table(disk: Disk, shared: bool, volume: str | None) -> None:
    assert is_shared(disk, RULES) is shared
    out = classify(disk, RULES)
    assert out.shared is shared
    assert out.volume == volume
    # everything else is unchanged
    assert replace(out, shared=False, volume=None) == replace(disk, shared=False, volume=None)


def test_classify_local_returns_same_disk() -> None:
    d = Disk("vda", "/var/lib/libvirt/images/a.img")
    assert classify(d, RULES) is d


def test_default_patterns() -> None:
    assert DEFAULT_SHARED_PATTERNS == ("/dev/etherd/*", "/dev/disk/by-path/*-iscsi-*")
    assert RULES.patterns == DEFAULT_SHARED_PATTERNS and RULES.shared_pools == ()


def test_volume_in_shared_pool() -> None:
    rules = SharedStorageRules(shared_pools=("san", "nfs"))
    d = Disk("vdb", "san/guest1-root", kind="volume")
    assert is_shared(d, rules)
    out = classify(d, rules)
    assert out.shared and out.volume == "path-san%2Fguest1-root"
    assert not is_shared(Disk("vdb", "default/guest1-root", kind="volume"), rules)
    # The pool name is the part before the first '/', not a prefix of it.
    assert not is_shared(Disk("vdb", "sanity/x", kind="volume"), rules)


def test_volume_kind_ignores_path_patterns() -> None:
    rules = SharedStorageRules(patterns=("*",), shared_pools=())
    assert not is_shared(Disk("vdb", "default/x", kind="volume"), rules)
    assert is_shared(Disk("vdb", "default/x", kind="volume", shareable=True), rules)


def test_custom_patterns() -> None:
    rules = SharedStorageRules(patterns=("/mnt/cluster/*", "/dev/mapper/san-*"))
    assert is_shared(Disk("vda", "/mnt/cluster/web/root.img"), rules)
    assert is_shared(block("/dev/mapper/san-lun7"), rules)
    assert not is_shared(block("/dev/mapper/vg0-root"), rules)
    # custom patterns replace the defaults
    assert not is_shared(block("/dev/etherd/e1.2"), rules)
    # but iSCSI network disks and <shareable/> are shared regardless of patterns
    assert is_shared(iscsi_net(f"{IQN}/0"), rules)
    assert is_shared(Disk("vda", "/local/x.img", shareable=True), rules)
    out = classify(Disk("vda", "/mnt/cluster/web/root.img"), rules)
    assert out.volume == "path-mnt%2Fcluster%2Fweb%2Froot.img"


def test_patterns_are_case_sensitive() -> None:
    assert not is_shared(block("/DEV/ETHERD/E1.2"), RULES)


def test_no_patterns_means_only_explicit_sharing() -> None:
    rules = SharedStorageRules(patterns=())
    assert not is_shared(block("/dev/etherd/e1.2"), rules)
    assert is_shared(block("/dev/etherd/e1.2", shareable=True), rules)


def test_volume_ids_are_stable() -> None:
    d = block("/dev/etherd/e3.4")
    assert volume_id(d) == volume_id(replace(d, target="vdz")) == "aoe-e3.4"
    # the same LUN seen through another portal, or as a network disk, is the same volume
    other_portal = BY_PATH.format(lun=2).replace("192.168.10.5", "192.168.20.5")
    assert volume_id(block(BY_PATH.format(lun=2))) == volume_id(block(other_portal))
    assert volume_id(block(BY_PATH.format(lun=2))) == volume_id(iscsi_net(f"{IQN}/2"))
    assert volume_id(block(BY_PATH.format(lun=0))) == volume_id(iscsi_net(IQN))


def test_volume_ids_distinct_for_different_shelves_and_luns() -> None:
    aoe = [f"/dev/etherd/e{s}.{n}" for s, n in [(1, 2), (1, 20), (12, 0), (2, 1), (1, 3)]]
    by_path = [BY_PATH.format(lun=n) for n in (0, 1, 10, 11)]
    other_target = BY_PATH.format(lun=1).replace("tgt1", "tgt2")
    nets = [f"{IQN}/3", f"{IQN.replace('tgt1', 'tgt9')}/3"]
    ids = [volume_id(block(s)) for s in [*aoe, *by_path, other_target]]
    ids += [volume_id(iscsi_net(n)) for n in nets]
    assert len(set(ids)) == len(ids), ids


def test_path_volume_id_shape() -> None:
    assert volume_id(Disk("vda", "/srv/shared/a.img")) == "path-srv%2Fshared%2Fa.img"
    assert "/" not in volume_id(Disk("vda", "/a/b/c/"))


def test_path_volume_ids_distinct() -> None:
    assert volume_id(Disk("vda", "/srv/a_b")) != volume_id(Disk("vda", "/srv/a/b"))
