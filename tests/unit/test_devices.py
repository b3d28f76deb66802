"""gridtool.domains.devices (the shell that resolves disk sources to this host's other
names for them), on a real file system: a device file, udev-style by-path and by-id
symlinks to it, and guests naming it three ways. The hook's pre-filter uses it too."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from agents import hook
from gridtool.domains.devices import local_disks, parse_local_domain, source_aliases
from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS, SharedStorageRules

IQN = "iqn.2026-12.lab.gridtool:t1"
WWN = "wwn-0x600140512345678900000000000000ab"


class Dom0:
    """A tmp dir laid out like a dom0's /dev: ``sdc`` (an iSCSI LUN, two portals' worth
    of names), ``sdd`` (a local disk with only a WWN) and udev's link directories."""

    def __init__(self, root: Path) -> None:
        self.dev = root / "dev"
        self.by_path, self.by_id = self.dev / "disk/by-path", self.dev / "disk/by-id"
        for d in (self.by_path, self.by_id):
            d.mkdir(parents=True)
        self.sdc, self.sdd = self.dev / "sdc", self.dev / "sdd"
        self.sdc.write_bytes(b"")
        self.sdd.write_bytes(b"")
        self.iscsi = self.link(self.by_path, f"ip-10.0.0.1:3260-iscsi-{IQN}-lun-3", self.sdc)
        self.wwn = self.link(self.by_id, WWN, self.sdc)
        self.local = self.link(self.by_id, "wwn-0x5000c500aaaaaaaa", self.sdd)
        # a by-path name made with the real paths' prefix, for the default patterns
        self.rules = SharedStorageRules(
            patterns=(*DEFAULT_SHARED_PATTERNS, f"{self.by_path}/*-iscsi-*"),
            link_dirs=(str(self.by_path), str(self.by_id)), resolve_under=(f"{self.dev}/",))

    @staticmethod
    def link(directory: Path, name: str, target: Path) -> Path:
        path = directory / name
        path.symlink_to(os.path.relpath(target, directory))  # as udev makes them
        return path


@pytest.fixture
def dom0(tmp_path: Path) -> Dom0:
    return Dom0(tmp_path)


def xml(*sources: str) -> str:
    disks = "".join(f"<disk type='block' device='disk'><source dev='{s}'/>"
                    f"<target dev='vd{chr(97 + i)}'/></disk>" for i, s in enumerate(sources))
    return (f"<domain type='kvm'><name>g</name><uuid>u-1</uuid><memory>1024</memory>"
            f"<devices>{disks}</devices></domain>")


def test_aliases_are_the_device_and_every_link_to_it(dom0: Dom0) -> None:
    found = source_aliases([str(dom0.wwn), str(dom0.sdd), "/nonexistent/x"],
                           dom0.rules.link_dirs, dom0.rules.resolve_under)
    assert found[str(dom0.wwn)] == (str(dom0.sdc), str(dom0.iscsi), str(dom0.wwn))
    assert found[str(dom0.sdd)] == (str(dom0.sdd), str(dom0.local))
    assert "/nonexistent/x" not in found


def test_two_symlinks_and_the_device_are_one_fence_key(dom0: Dom0) -> None:
    """The LUN named as /dev/sdc, by its by-id WWN link and by a doubled-slash by-path
    link: one key, the iSCSI one (its by-path name is the one every host has)."""
    spec = parse_local_domain(xml(str(dom0.sdc), str(dom0.wwn),
                                  str(dom0.iscsi).replace("/by-path/", "//by-path/")),
                              dom0.rules)
    assert [d.shared for d in spec.disks] == [True, True, True]
    assert {d.volume for d in spec.disks} == {f"iscsi-{IQN}-lun3"}


def test_a_local_disk_stays_local(dom0: Dom0) -> None:
    spec = parse_local_domain(xml(str(dom0.sdd), str(dom0.local)), dom0.rules)
    assert not any(d.shared for d in spec.disks)


def test_files_are_not_followed_but_a_resolved_link_into_shared_storage_is_shared(
        tmp_path: Path) -> None:
    """Only device names are resolved (a stat on a dead hard NFS mount would hang the
    agent); where a source is resolved, a link into a shared directory is shared and named
    after the file it is."""
    shared, local = tmp_path / "shared", tmp_path / "local"
    shared.mkdir()
    local.mkdir()
    (shared / "a.img").write_bytes(b"")
    (local / "a.img").symlink_to(shared / "a.img")
    files = xml(str(local / "a.img"), str(shared / "a.img"), str(shared / "./a.img"))
    files = files.replace("'block'", "'file'").replace("dev=", "file=")
    rules = SharedStorageRules(patterns=(f"{shared}/*",), link_dirs=())
    assert source_aliases([str(local / "a.img")], (), rules.resolve_under) == {}
    assert [d.shared for d in local_disks(files, rules)[0]] == [False, True, True]
    resolving = replace(rules, resolve_under=(f"{tmp_path}/",))
    disks, problems = local_disks(files, resolving)
    assert all(d.shared for d in disks) and not problems
    assert {d.volume for d in disks} == {"path-" + quote(str(shared / "a.img")[1:], safe="")}, \
        "named after the file it is"
    assert hook.may_be_fenced(xml(str(local / "a.img")), [f"{shared}/*"], resolving)
    assert not hook.may_be_fenced(xml(str(local / "a.img")), [f"{shared}/*"], rules)


def test_the_hook_asks_the_agent_about_every_name_of_a_shared_lun(dom0: Dom0) -> None:
    patterns, dirs = list(dom0.rules.patterns), dom0.rules
    assert hook.may_be_fenced(xml(str(dom0.sdc)), patterns, dirs)
    assert hook.may_be_fenced(xml(str(dom0.wwn)), patterns, dirs)
    assert hook.may_be_fenced(xml("/dev//etherd/e1.2"), patterns, dirs)
    assert not hook.may_be_fenced(xml(str(dom0.sdd)), patterns, dirs), "local: no round trip"
    # an unidentifiable shared disk: asked about (the agent refuses it)
    bad = str(dom0.by_path / f"ip-10.0.0.1:3260-iscsi-{IQN}")
    assert hook.may_be_fenced(xml(bad), patterns, dirs)
    _, problems = local_disks(xml(bad), dom0.rules)
    assert problems and "no '-lun-N'" in problems[0]
