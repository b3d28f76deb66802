"""The Xen lab's pure parts: the dom0's agent config, the machine's QEMU command line, a
PV guest's XML as the agent reads it, the image's cache key and its missing-image error."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gridtool.config import Config
from gridtool.domains.storage import SharedStorageRules
from gridtool.lab import xenimage, xenlab
from gridtool.lab.procs import LabError


def test_endpoints_on_loopback_are_reached_through_slirp() -> None:
    assert xenlab._from_guest("http://127.0.0.1:2379") == "http://10.0.2.2:2379"
    assert xenlab._from_guest("localhost:2379") == "10.0.2.2:2379"
    assert xenlab._from_guest("https://etcd.example:2379") == "https://etcd.example:2379"


def test_the_dom0_agent_config_names_what_exists_in_the_dom0(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    host = xenlab.XenHost("hv1", str(tmp_path / "hv1"), port=40001, index=1)
    base = Config(endpoints=("http://127.0.0.1:2379",), user="gt-host-hv1",
                  password_file=str(secret), manager=True)
    conf = configparser.ConfigParser()
    conf.read_string(host.write_agent_conf(base).read_text())
    flat = {k: v for section in conf.sections() for k, v in conf[section].items()}
    assert flat["host"] == "hv1"
    assert flat["libvirt_uri"] == "xen+tcp://127.0.0.1:40001/system"
    assert flat["endpoints"] == "http://10.0.2.2:2379"
    assert flat["password_file"] == "/etc/gridtool/password"
    assert flat["hook_socket"] == "/run/gridtool/hook.sock"
    assert xenlab.POOL_DIR + "/*" in flat["shared_patterns"]
    assert (tmp_path / "hv1" / "password").read_text() == "s3cret\n"


def test_the_machine_forwards_the_libvirtd_port_and_takes_extra_nics(tmp_path: Path) -> None:
    image = xenimage.XenImage(tmp_path / "xen.elf", tmp_path / "vmlinuz",
                              tmp_path / "initrd.img", tmp_path / "rootfs.raw")
    host = xenlab.XenHost("hv2", str(tmp_path), port=40002, index=2, ssh_port=40003)
    argv = xenlab.machine_argv(image, host, ["-netdev", "socket,id=seg0"],
                               ["gridtool.seg=52:54:00:67:00:01,198.18.7.11/24"])
    assert "smap" not in argv[argv.index("-cpu") + 1]  # else the PV dom0 faults
    assert argv[argv.index("-kernel") + 1] == str(image.xen)
    # multiboot modules are comma-separated: a comma in the dom0's parameters is doubled
    assert argv[argv.index("-initrd") + 1] == (
        f"{image.kernel} {xenlab.DOM0_CMDLINE} gridtool.seg=52:54:00:67:00:01,,198.18.7.11/24"
        f",{image.initrd}")
    assert ("user,id=lab0,hostfwd=tcp:127.0.0.1:40002-:40002,"
            "hostfwd=tcp:127.0.0.1:40003-:22") in argv
    assert argv[-2:] == ["-netdev", "socket,id=seg0"]


def test_the_segment_hook_reads_the_lab_state(tmp_path: Path) -> None:
    from gridtool.lab import dom0storage
    from gridtool.lab.segment import Segment
    from gridtool.lab.state import state_path, write_file

    assert xenlab.netdev_args(tmp_path, "hv2", 2) == dom0storage.HostStorage([], [])  # no lab
    seg = Segment(str(tmp_path / "segment"), "abc123", "198.18.7.0/24")
    write_file(state_path(tmp_path), json.dumps({"segment": seg.to_dict(), "aoe": {}}))
    extra = xenlab.netdev_args(tmp_path, "hv2", 2)  # host 2 is the segment's index 1
    assert extra.qemu_args == seg.qemu_args(1)
    assert extra.kernel_args == [seg.kernel_arg(1), "gridtool.aoe=1"]


def test_a_pv_guest_is_a_xen_guest_with_a_shared_disk() -> None:
    from gridtool.domains.xml import parse_domain

    xml = xenlab.pv_guest_xml("hv1-vm2", f"{xenlab.POOL_DIR}/hv1-vm2.img")
    dom = parse_domain(xml, SharedStorageRules((f"{xenlab.POOL_DIR}/*",)))
    assert (dom.name, dom.domain_type) == ("hv1-vm2", "xen")
    assert [d.source for d in dom.disks if d.shared] == [f"{xenlab.POOL_DIR}/hv1-vm2.img"]
    on_lun = parse_domain(xenlab.pv_guest_xml("aoe1", "/dev/etherd/e0.1"),
                          SharedStorageRules(("/dev/etherd/*",)))
    assert [(d.source, d.shared) for d in on_lun.disks] == [("/dev/etherd/e0.1", True)]
    assert "<disk type='block'" in xenlab.pv_guest_xml("aoe1", "/dev/etherd/e0.1")


def test_the_cache_key_follows_the_package_list() -> None:
    assert xenimage.cache_key() == xenimage.cache_key()
    assert xenimage.cache_key((*xenimage.PACKAGES, "vblade")) != xenimage.cache_key()


def test_no_image_names_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="gridtool lab build-xen-image"):
        xenimage.image(tmp_path)


@pytest.mark.skipif(not shutil.which("debugfs"), reason="e2fsprogs' debugfs is missing")
def test_the_config_disk_holds_the_files(tmp_path: Path) -> None:
    disk = xenimage.make_config_disk(tmp_path / "config.img",
                                     {"hostname": "hv1\n", "libvirtd-port": "40001"})
    label = subprocess.run(["e2label", str(disk)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == xenimage.CONFIG_LABEL
    cat = subprocess.run(["debugfs", "-R", "cat /hostname", str(disk)], capture_output=True,
                         text=True, check=True)
    assert cat.stdout == "hv1\n"


def test_the_cache_key_follows_the_agent_sources(tmp_path: Path) -> None:
    """A changed agent (same version) makes a new image; a changed test or lab module
    (they never run in a dom0) does not."""
    for rel in ("agents/agent.py", "gridtool/domains/xen.py", "gridtool/lab/lab.py",
                "tests/unit/test_x.py", "packaging/deb/control.gridtool-agent",
                "scripts/build-deb", "scripts/systemd/gridtool-agent.service"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    first = xenimage.cache_key(root=tmp_path)
    for rel in ("tests/unit/test_x.py", "gridtool/lab/lab.py"):
        (tmp_path / rel).write_text("changed")
    assert xenimage.cache_key(root=tmp_path) == first
    for rel in ("agents/agent.py", "gridtool/domains/xen.py",
                "packaging/deb/control.gridtool-agent", "scripts/systemd/gridtool-agent.service"):
        before = xenimage.cache_key(root=tmp_path)
        (tmp_path / rel).write_text("changed")
        assert xenimage.cache_key(root=tmp_path) != before, rel
