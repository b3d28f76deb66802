"""Fence identity is the LUN (issue 13 item 2): gridtool.domains.storage's volume ids for
every way a guest's XML can name one LUN, their stability across the upgrade, and the
errors for disks that look shared but cannot be identified."""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridtool.domains.storage import (
    DiskIdError,
    SharedStorageRules,
    classify,
    is_shared,
    lun_id,
    normal_path,
    sam_lun,
    volume_id,
)
from gridtool.domains.xml import parse_domain
from gridtool.fencing.rules import (
    FenceKind,
    GuestRef,
    Refusal,
    check_volume,
    may_start,
    plan_acquire,
)
from gridtool.registry.model import Disk, GuestRecord

RULES = SharedStorageRules()
WWN_RULES = SharedStorageRules(patterns=(*RULES.patterns, "/dev/disk/by-id/wwn-*"))


def block(source: str) -> Disk:
    return Disk("vda", source, kind="block")


def net(name: str) -> Disk:
    return Disk("sda", name, kind="network", protocol="iscsi")


# ------------------------------------------------------------------ the old code, frozen
# volume_id and is_shared as they were before this change (commit 456a6ee): the oracle
# for "every id today's code makes for today's inputs is unchanged".
_OLD_AOE = re.compile(r"^/dev/etherd/e(\d+)\.(\d+)(p\d+)?$")
_OLD_ISCSI_PATH = re.compile(r"-iscsi-(iqn\.[^/]+?)-lun-(\d+)(-part\d+)?$")


def old_volume_id(disk: Disk) -> str:
    aoe = _OLD_AOE.match(disk.source)
    if aoe:
        return f"aoe-e{aoe.group(1)}.{aoe.group(2)}"
    iscsi = _OLD_ISCSI_PATH.search(disk.source)
    if iscsi:
        return f"iscsi-{iscsi.group(1)}-lun{iscsi.group(2)}"
    if disk.protocol == "iscsi":
        target, _, lun = disk.source.partition("/")
        return f"iscsi-{target}-lun{lun or '0'}"
    return "path-" + quote(disk.source.strip("/"), safe="-._~")


def old_is_shared(disk: Disk, rules: SharedStorageRules) -> bool:
    if disk.shareable or disk.protocol == "iscsi":
        return True
    if disk.kind == "volume":
        return disk.source.partition("/")[0] in rules.shared_pools
    return any(fnmatch.fnmatchcase(disk.source, p) for p in rules.patterns)


# ------------------------------------------------------------------ strategies
_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
#: Canonical (lower-case) IQNs, as RFC 3720 targets write them.
IQNS = st.builds(lambda y, m, parts, tail: f"iqn.{y}-{m:02d}.{'.'.join(parts)}{tail}",
                 st.integers(1990, 2099), st.integers(1, 12), st.lists(_LABEL, min_size=1,
                 max_size=3), st.one_of(st.just(""), _LABEL.map(lambda s: ":" + s),
                                        _LABEL.map(lambda s: ":tgt-" + s + "-lun-7")))
LUNS = st.integers(0, 255)
PORTALS = st.one_of(
    st.builds(lambda a, b, port: f"ip-10.{a}.{b}.5:{port}", st.integers(0, 255),
              st.integers(0, 255), st.integers(1, 65535)),
    st.builds(lambda h, port: f"ip-[fd00::{h:x}]:{port}", st.integers(1, 65535),
              st.integers(1, 65535)),
)
HEX16 = st.text("0123456789abcdef", min_size=16, max_size=16)
WWNS = st.one_of(HEX16, st.builds(lambda a, b: a + b, HEX16, HEX16))
AOES = st.tuples(st.integers(0, 65535), st.integers(0, 255))
SHARED_FILES = st.lists(_LABEL, min_size=1, max_size=4).map(lambda p: "/srv/shared/" + "/".join(p))


def by_path(portal: str, iqn: str, lun: int, part: int | None = None) -> str:
    return (f"/dev/disk/by-path/{portal}-iscsi-{iqn}-lun-{lun}"
            + (f"-part{part}" if part else ""))


def messy(path: str, data: st.DataObject) -> str:
    """``path`` named another way: doubled slashes, '.', 'x/..', a trailing slash."""
    parts = path.strip("/").split("/")
    out = []
    for part in parts:
        out.append(part)
        extra = data.draw(st.sampled_from(["", "/", "/.", "/x/.."]))
        out.append(extra)
    return "/" + "/".join(out) + data.draw(st.sampled_from(["", "/", "//"]))


# ------------------------------------------------------------------ upgrade: ids unchanged
@given(st.one_of(
    st.builds(lambda s, n, p: block(f"/dev/etherd/e{s}.{n}" + (f"p{p}" if p else "")),
              st.integers(0, 999), st.integers(0, 999), st.integers(0, 9)),
    st.builds(lambda portal, iqn, lun, part: block(by_path(portal, iqn, lun, part)),
              PORTALS, IQNS, LUNS, st.one_of(st.none(), st.integers(1, 9))),
    st.builds(lambda iqn, lun: net(f"{iqn}/{lun}" if lun is not None else iqn),
              IQNS, st.one_of(st.none(), st.integers(0, 16383))),
    st.builds(lambda p, share: Disk("vdb", p, shareable=share), SHARED_FILES, st.booleans()),
    st.builds(lambda p: Disk("vdb", p + "/"), SHARED_FILES),  # a directory-like name
))
def test_every_id_todays_code_makes_for_todays_inputs_is_unchanged(disk: Disk) -> None:
    """Running guests keep their fence keys across the upgrade: for canonical inputs
    (what libvirt, udev and RFC 3720 targets write) the id and the shared verdict are
    what the code before it gave."""
    rules = SharedStorageRules(patterns=(*RULES.patterns, "/srv/shared/*"))
    assert is_shared(disk, rules) is old_is_shared(disk, rules)
    if old_is_shared(disk, rules):
        assert classify(disk, rules).volume == old_volume_id(disk)


def test_the_existing_fence_keys_by_example() -> None:
    iqn = "iqn.2013-06.com.example:storage.tgt1"
    assert volume_id(block("/dev/etherd/e1.2")) == "aoe-e1.2"
    assert volume_id(block("/dev/etherd/e12.10p3")) == "aoe-e12.10"
    assert volume_id(net(f"{iqn}/1")) == f"iscsi-{iqn}-lun1"
    assert volume_id(net(iqn)) == f"iscsi-{iqn}-lun0"  # libvirt: no /LUN means LUN 0
    assert volume_id(Disk("vdb", "/srv/shared/a.img")) == "path-srv%2Fshared%2Fa.img"


# ------------------------------------------------------------------ one LUN, one key
@given(IQNS, LUNS, PORTALS, PORTALS, st.integers(1, 9), st.data())
def test_one_iscsi_lun_is_one_key_however_the_xml_names_it(
        iqn: str, lun: int, portal: str, other: str, part: int, data: st.DataObject) -> None:
    want = f"iscsi-{iqn}-lun{lun}"
    names = [
        net(f"{iqn}/{lun}"), net(f"{iqn.upper()}/{lun}"),
        block(by_path(portal, iqn, lun)), block(by_path(other, iqn, lun)),
        block(by_path(portal, iqn.upper(), lun, part)),
        block(messy(by_path(portal, iqn, lun), data)),
    ]
    for disk in names:
        out = classify(disk, RULES)
        assert out.shared and out.volume == want, disk.source


@given(WWNS, st.integers(1, 9))
def test_one_wwn_is_one_key(wwn: str, part: int) -> None:
    want = f"wwn-0x{wwn}"
    for source in (f"/dev/disk/by-id/wwn-0x{wwn}", f"/dev/disk/by-id/scsi-3{wwn}",
                   f"/dev/disk/by-id/wwn-0x{wwn.upper()}-part{part}",
                   f"/dev/disk/by-id/scsi-3{wwn.upper()}", f"//dev/disk//by-id/wwn-0x{wwn}/",
                   f"/dev/disk/by-id/dm-uuid-mpath-3{wwn}"):
        assert lun_id(normal_path(source)) == want, source


def test_a_lun_above_255_by_path_is_the_network_disks_lun() -> None:
    """udev writes LUNs from 256 as the 8-byte SAM address; QEMU's iSCSI driver (libiscsi)
    addresses them flat: the same LUN, one key."""
    iqn = "iqn.2026-12.lab.gridtool:t1"
    assert sam_lun("0x412c000000000000") == 300 == sam_lun("300")
    assert sam_lun("0x0007000000000000") == 7
    assert volume_id(block(by_path("ip-127.0.0.1:3260", iqn, 0).replace(
        "-lun-0", "-lun-0x412c000000000000"))) == volume_id(net(f"{iqn}/300"))


def nbd(name: str, shareable: bool = False) -> Disk:
    return Disk("vda", name, kind="network", protocol="nbd", shareable=shareable)


def test_an_nbd_export_named_after_a_lun_is_that_lun() -> None:
    """The lab's guests reach their LUN through the host's initiator over NBD, the export
    named TARGET-IQN/N: the same key as an iSCSI network disk or a by-path device of that
    LUN, shared without a pattern or <shareable/>, whatever socket or case."""
    iqn = "iqn.2026-12.lab.gridtool:storage"
    xml = ("<domain><name>g</name><memory>1024</memory><devices><disk type='network'>"
           f"<source protocol='nbd' name='{iqn.upper().replace('IQN', 'iqn')}/2'>"
           "<host transport='unix' socket='/lab/luns/lun-2.nbd'/></source>"
           "<target dev='vda'/></disk></devices></domain>")
    (disk,) = parse_domain(xml, SharedStorageRules(patterns=())).disks
    assert disk.shared and disk.volume == f"iscsi-{iqn}-lun2"
    assert disk.volume == volume_id(net(f"{iqn}/2")) == volume_id(
        block(by_path("ip-127.0.0.1:3260", iqn, 2)))
    assert volume_id(nbd(f"{iqn}/3")) != disk.volume
    assert volume_id(nbd(iqn)) == f"iscsi-{iqn}-lun0", "no /N: LUN 0, as for iSCSI"


def test_other_nbd_exports_are_as_before() -> None:
    """An export not named after an iSCSI LUN is no LUN: local unless <shareable/>, and
    then named by its text, as before this change."""
    assert not is_shared(nbd("disk1"), RULES)
    assert classify(nbd("disk1", shareable=True), RULES).volume == "path-disk1"
    assert not is_shared(Disk("vda", f"{'iqn.2000-01.a:t'}/1", kind="file"), RULES)
    with pytest.raises(DiskIdError, match="LUN 'x' is not a number"):
        classify(nbd("iqn.2000-01.a:t/x"), RULES)

def test_aliases_name_the_device_the_shell_resolved() -> None:
    """Two symlinks (by-path, by-id) and the bare /dev/sdc: one key, the iSCSI one (every
    host, even one with a network disk, can name it so); the WWN when that is all."""
    iqn = "iqn.2026-12.lab.gridtool:t1"
    path, wwn = by_path("ip-10.0.0.1:3260", iqn, 3), "/dev/disk/by-id/wwn-0x" + "6" * 32
    aliases = {"/dev/sdc": ("/dev/sdc", path, wwn), path: ("/dev/sdc", path, wwn),
               wwn: ("/dev/sdc", path, wwn)}
    xml = ("<domain><name>g</name><memory>1024</memory><devices>" + "".join(
        f"<disk type='block'><source dev='{s}'/><target dev='vd{c}'/></disk>"
        for s, c in zip(aliases, "abc", strict=True)) + "</devices></domain>")
    spec = parse_domain(xml, RULES, aliases)
    assert {d.volume for d in spec.disks} == {f"iscsi-{iqn}-lun3"}
    assert all(d.shared for d in spec.disks), "/dev/sdc is shared through its by-path alias"
    assert not parse_domain(xml.replace(path, "/dev/x"), RULES).disks[0].shared, \
        "/dev/sdc with nothing resolved: a local disk"
    assert volume_id(block(wwn), ("/dev/sdc",)) == "wwn-0x" + "6" * 32


# ------------------------------------------------------------------ no collisions
_LUNS = st.one_of(
    st.tuples(st.just("iscsi"), IQNS, st.integers(0, 16383)),
    st.tuples(st.just("wwn"), WWNS),
    st.tuples(st.just("aoe"), *[st.integers(0, 999)] * 2),
    st.tuples(st.just("path"), SHARED_FILES),
)


def disk_of(lun: tuple) -> Disk:  # type: ignore[type-arg]
    kind, *args = lun
    if kind == "iscsi":
        return net(f"{args[0]}/{args[1]}")
    if kind == "wwn":
        return block(f"/dev/disk/by-id/wwn-0x{args[0]}")
    if kind == "aoe":
        return block(f"/dev/etherd/e{args[0]}.{args[1]}")
    return Disk("vdb", args[0], shareable=True)


@given(_LUNS, _LUNS)
def test_two_different_luns_never_collide(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    if a != b:
        assert volume_id(disk_of(a)) != volume_id(disk_of(b)), (a, b)


def test_luns_that_differ_only_by_their_digits_or_the_lun_in_the_name() -> None:
    ids = [volume_id(net(n)) for n in ("iqn.2000-01.a:t-lun1/2", "iqn.2000-01.a:t/12",
                                       "iqn.2000-01.a:t-lun12/0", "iqn.2000-01.a:t/1")]
    assert len(set(ids)) == len(ids), ids


# ------------------------------------------------------------------ paths
@given(SHARED_FILES, st.data())
def test_paths_are_normalised(path: str, data: st.DataObject) -> None:
    rules = SharedStorageRules(patterns=("/srv/shared/*",))
    assert classify(Disk("vdb", messy(path, data)), rules).volume == \
        classify(Disk("vdb", path), rules).volume


def test_a_doubled_slash_no_longer_hides_a_shared_disk() -> None:
    """The safety bug: before, '/dev//etherd/e1.2' matched no shared pattern, so the guest
    took no fence and its hook let it start anywhere."""
    for source in ("/dev//etherd/e1.2", "//dev/etherd/e1.2", "/dev/./etherd/e1.2",
                   "/dev/x/../etherd/e1.2", "/dev/etherd/e1.2/"):
        out = classify(block(source), RULES)
        assert out.shared and out.volume == "aoe-e1.2", source


def test_path_case_is_kept_and_names_case_folded() -> None:
    assert not is_shared(block("/DEV/ETHERD/E1.2"), RULES), "Linux paths are case-sensitive"
    assert normal_path("") == "" and normal_path("a//b/") == "a/b"


# ------------------------------------------------------------------ bad input: fail closed
BAD = [
    ("network disk: empty LUN", net("iqn.2000-01.a:t/"), "the LUN after '/' is empty"),
    ("network disk: LUN not a number", net("iqn.2000-01.a:t/x1"), "LUN 'x1' is not a number"),
    ("network disk: no target", net("/1"), "'' is not an iSCSI target name"),
    ("network disk: not an iSCSI name", net("target1/1"), "'target1' is not an iSCSI"),
    ("network disk: LUN out of range", net("iqn.2000-01.a:t/16384"), "out of range"),
    ("NBD export of a LUN: empty LUN", Disk("vda", "iqn.2000-01.a:t/", kind="network",
                                             protocol="nbd"), "the LUN after '/' is empty"),
    ("by-path: no LUN", block("/dev/disk/by-path/ip-1.2.3.4:3260-iscsi-iqn.2000-01.a:t"),
     "no '-lun-N' after the iSCSI target name"),
    ("by-path: not an iSCSI name", block("/dev/disk/by-path/ip-1.2.3.4:3260-iscsi-x-lun-1"),
     "'x' is not an iSCSI target name"),
    ("by-path: two-level LUN", block("/dev/disk/by-path/ip-1.2.3.4:3260-iscsi-"
                                     "iqn.2000-01.a:t-lun-0x0001000100000000"),
     "not a one-level peripheral or flat address"),
    ("by-id: not a WWN", Disk("vda", "/dev/disk/by-id/wwn-0x12zz", kind="block"), "not a WWN"),
]


@pytest.mark.parametrize(("disk", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_shared_disk_that_cannot_be_identified_is_an_error_naming_it(
        disk: Disk, message: str) -> None:
    with pytest.raises(DiskIdError) as info:
        classify(disk, WWN_RULES)
    text = str(info.value)
    assert message in text and text.startswith(f"disk {disk.target} ({disk.source!r}): "), text
    assert "\n" not in text


def test_the_guest_with_one_is_refused_its_fences_and_its_start() -> None:
    good, bad = "/dev/etherd/e1.2", "iqn.2000-01.a:t/"
    xml = ("<domain><name>g</name><uuid>u1</uuid><memory>1024</memory><devices>"
           f"<disk type='block'><source dev='{good}'/><target dev='vda'/></disk>"
           f"<disk type='network'><source protocol='iscsi' name='{bad}'>"
           "<host name='10.0.0.1' port='3260'/></source><target dev='sda'/></disk>"
           "</devices></domain>")
    spec = parse_domain(xml, RULES)
    assert [d.volume for d in spec.disks] == ["aoe-e1.2", None]
    assert all(d.shared for d in spec.disks)
    assert spec.unidentified == ("disk sda ('iqn.2000-01.a:t/'): the LUN after '/' is empty",)
    rec = GuestRecord("u1", "g", "h1", "shutoff", 1, 1, 0.0, disks=spec.disks)
    assert rec.fenced and rec.volumes == ("aoe-e1.2",)
    assert rec.unidentified == ("disk sda ('iqn.2000-01.a:t/')",)
    guest = GuestRef("u1", "g", FenceKind.PINNED, rec.volumes, unidentified=rec.unidentified)
    plan = plan_acquire("h1", guest, {"aoe-e1.2": None}, 0.0)
    assert isinstance(plan, Refusal) and "cannot be identified" in plan.reason
    assert "disk sda" in plan.reason
    answer = may_start("h1", guest, {"aoe-e1.2": None})
    assert not answer.allow and "cannot be identified" in answer.reason
    # the same guest without the bad disk takes its fence
    assert not isinstance(plan_acquire("h1", GuestRef("u1", "g", FenceKind.PINNED,
                                                      rec.volumes), {"aoe-e1.2": None}, 0.0),
                          Refusal)


def test_an_alias_that_cannot_be_identified_is_named() -> None:
    alias = "/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn.2000-01.a:t"
    with pytest.raises(DiskIdError) as info:
        classify(block("/dev/sdc"), RULES, (alias,))
    assert str(info.value) == (f"disk vda ('/dev/sdc'): its alias {alias!r}: no '-lun-N' "
                               "after the iSCSI target name")


@given(st.text(max_size=60), st.sampled_from(["network", "block", "file"]),
       st.lists(st.text(max_size=60), max_size=3))
def test_any_name_gives_a_key_segment_or_a_one_line_error(
        name: str, kind: str, aliases: list[str]) -> None:
    """Whatever a domain XML or a dom0 holds: an id that can name an etcd key, or
    DiskIdError in one line; never another exception."""
    disk = Disk("vda", name, kind=kind, protocol="iscsi" if kind == "network" else None,
                shareable=True)
    try:
        volume = classify(disk, RULES, aliases).volume
    except DiskIdError as exc:
        assert "\n" not in str(exc)
        return
    assert check_volume(volume) == volume
