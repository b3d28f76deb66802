"""Unit tests for gridtool.clone.rules: clone names, identities and the rewritten XML."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.clone.rules import (
    CloneIdentity,
    ClonePlanError,
    clone_names,
    golden_path,
    identities,
    inside,
    interface_count,
    macs_of,
    new_mac,
    overlay_path,
    rewrite,
    template_disks,
)

TEMPLATE = """<domain type='kvm' id='7' xmlns:app='https://example.org/app/1'>
  <name>worker</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <genid>aaaaaaaa-2222-3333-4444-555555555555</genid>
  <metadata><app:role>queue-worker</app:role></metadata>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <sysinfo type='smbios'><system>
    <entry name='serial'>SN-OLD</entry>
    <entry name='uuid'>11111111-2222-3333-4444-555555555555</entry>
    <entry name='manufacturer'>gridtool</entry>
  </system></sysinfo>
  <os><type>hvm</type><nvram template='/usr/share/OVMF/VARS.fd'>/var/lib/nv/worker.fd</nvram>
  </os>
  <seclabel type='dynamic' model='selinux'><label>system_u:c1,c2</label></seclabel>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/worker-root'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <serial>DISK-1</serial>
      <wwn>5000c50015ea71ac</wwn>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/images/worker-data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/isos/tools.iso'/><target dev='hdc'/><readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
      <target dev='vnet3'/>
    </interface>
    <interface type='bridge'><source bridge='br0'/></interface>
    <graphics type='vnc' port='5901' autoport='no'/>
  </devices>
</domain>"""

IDENT = CloneIdentity("worker-1", "99999999-8888-4777-8666-555555555555",
                      ("52:54:00:00:00:01", "52:54:00:00:00:02"))
OVERLAYS = {"vda": "/img/clones/hv1/u-vda.qcow2", "vdb": "/img/clones/hv1/u-vdb.qcow2"}


def rewritten() -> ET.Element:
    return ET.fromstring(rewrite(TEMPLATE, IDENT, OVERLAYS))


# --------------------------------------------------------------------------- names


def test_names_default_prefix_and_numbering() -> None:
    assert clone_names("web", 3, set()) == ["web-1", "web-2", "web-3"]


def test_names_skip_existing() -> None:
    assert clone_names("web", 3, {"web-1", "web-3", "other"}) == ["web-2", "web-4", "web-5"]


def test_names_with_prefix() -> None:
    assert clone_names("web", 2, {"w1"}, prefix="w") == ["w2", "w3"]
    assert clone_names("web", 1, set(), prefix="pool_a-") == ["pool_a-1"]


@pytest.mark.parametrize(("count", "prefix", "message"), [
    (0, None, "clone count must be 1..1000"),
    (1001, None, "clone count must be 1..1000"),
    (1, "", "prefix must not be empty"),
    (1, "a b", "invalid name prefix"),
    (1, "a/b", "invalid name prefix"),
    (1, "-x", "invalid name prefix"),
    (1, "x\n", "invalid name prefix"),
    (1, "x" * 200, "invalid name prefix"),
])
def test_names_refused_with_one_line(count: int, prefix: str | None, message: str) -> None:
    with pytest.raises(ClonePlanError, match=message) as exc:
        clone_names("web", count, set(), prefix)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- identity


def test_mac_is_locally_administered_and_avoids_taken() -> None:
    rng = random.Random(1)
    first = new_mac(random.Random(1), set())
    assert first.startswith("52:54:00:")
    assert new_mac(rng, {first}) != first


def test_identities_avoid_template_macs() -> None:
    rng = random.Random(5)
    taken = {new_mac(random.Random(5), set())}
    found = identities(["a"], 1, rng, taken)
    assert found[0].macs[0] not in taken


# --------------------------------------------------------------------------- rewrite


def test_new_name_uuid_and_macs() -> None:
    root = rewritten()
    assert root.findtext("name") == "worker-1"
    assert root.findtext("uuid") == IDENT.uuid
    assert root.get("id") is None
    assert [m.get("address") for m in root.findall("./devices/interface/mac")] == \
        list(IDENT.macs)


def test_disks_point_at_overlays_as_qcow2() -> None:
    disks = rewritten().findall("./devices/disk[@device='disk']")
    assert [(d.get("type"), d.find("source").get("file"), d.find("driver").get("type"))
            for d in disks] == [("file", OVERLAYS["vda"], "qcow2"),
                                ("file", OVERLAYS["vdb"], "qcow2")]
    for d in disks:
        assert d.find("serial") is None and d.find("wwn") is None
        assert d.find("backingStore") is None and len(d.findall("source")) == 1


def test_cdrom_is_kept() -> None:
    cdrom = rewritten().find("./devices/disk[@device='cdrom']")
    assert cdrom.find("source").get("file") == "/isos/tools.iso"


def test_identity_bound_parts_removed() -> None:
    root = rewritten()
    assert root.findtext("genid") in (None, "")
    entries = {e.get("name"): e.text for e in root.findall("./sysinfo/system/entry")}
    assert entries == {"uuid": IDENT.uuid, "manufacturer": "gridtool"}
    assert root.find("./os/nvram").text is None
    assert root.find("./os/nvram").get("template") == "/usr/share/OVMF/VARS.fd"
    assert root.find("./seclabel/label") is None
    assert root.find("./devices/interface/target") is None
    graphics = root.find("./devices/graphics")
    assert graphics.get("autoport") == "yes" and graphics.get("port") is None


def test_console_files_are_per_clone() -> None:
    xml = TEMPLATE.replace("</devices>", """<serial type='file'>
      <source path='/var/log/lab/worker.log'/><log file='/var/log/lab/worker-raw.log'/>
    </serial><console type='file'><source path='/var/log/lab/worker.log'/></console>
    <serial type='pty'/></devices>""")
    root = ET.fromstring(rewrite(xml, IDENT, OVERLAYS))
    serial, pty = root.findall("./devices/serial")
    assert serial.find("source").get("path") == "/var/log/lab/worker-1.log"
    assert serial.find("log").get("file") == "/var/log/lab/worker-1-1.log"
    assert root.find("./devices/console/source").get("path") == "/var/log/lab/worker-1.log"
    assert pty.find("source") is None


def test_metadata_namespace_kept() -> None:
    out = rewrite(TEMPLATE, IDENT, OVERLAYS)
    assert "app:role" in out and "https://example.org/app/1" in out


def test_template_disks_and_interfaces() -> None:
    disks = template_disks(TEMPLATE)
    assert [(d.target, d.kind, d.source) for d in disks] == [
        ("vda", "block", "/dev/vg/worker-root"), ("vdb", "file", "/var/lib/images/worker-data.img")]
    assert interface_count(TEMPLATE) == 2
    assert macs_of(TEMPLATE) == ("52:54:00:aa:bb:cc",)


def test_domain_without_uuid_gets_one() -> None:
    xml = "<domain type='test'><name>t</name><memory>1024</memory><devices/></domain>"
    root = ET.fromstring(rewrite(xml, CloneIdentity("t-1", IDENT.uuid, ()), {}))
    assert root.findtext("uuid") == IDENT.uuid and [c.tag for c in root][:2] == ["name", "uuid"]


@pytest.mark.parametrize(("xml", "message"), [
    ("<domain><name>x</name>", "malformed"),
    ("<pool/>", "not a domain definition"),
    ("<domain><memory>1</memory></domain>", "no <name>"),
    ("<domain><name>x</name><memory>1</memory><devices><disk type='network' device='disk'>"
     "<source protocol='rbd' name='p/i'/><target dev='vda'/></disk></devices></domain>",
     "only file and block"),
    ("<domain><name>x</name><memory>1</memory><devices><disk type='file' device='disk'>"
     "<source file='/a'/><target dev='vda'/><shareable/></disk></devices></domain>",
     "shareable"),
    ("<domain><name>x</name><memory>1</memory><devices><disk type='block' device='lun'>"
     "<source dev='/dev/sdb'/><target dev='sda'/></disk></devices></domain>", "LUN"),
    ("<domain><name>x</name><memory>1</memory><devices><disk type='file' device='disk'>"
     "<source file='/a'/></disk></devices></domain>", "target"),
])
def test_bad_templates_refused(xml: str, message: str) -> None:
    with pytest.raises(ClonePlanError, match=message) as exc:
        template_disks(xml)
    assert "\n" not in str(exc.value)


def test_rewrite_refuses_missing_overlay_and_wrong_mac_count() -> None:
    with pytest.raises(ClonePlanError, match="no overlay for template disk vdb"):
        rewrite(TEMPLATE, IDENT, {"vda": "/x"})
    with pytest.raises(ClonePlanError, match="2 interfaces, identity has 1"):
        rewrite(TEMPLATE, CloneIdentity("a", IDENT.uuid, ("52:54:00:00:00:01",)), OVERLAYS)
    with pytest.raises(ClonePlanError, match="does not have: vdz"):
        rewrite(TEMPLATE, IDENT, {**OVERLAYS, "vdz": "/y"})


def test_paths() -> None:
    assert golden_path("/img", "web", "vda") == "/img/templates/web/vda.qcow2"
    assert overlay_path("/img", "hv1", "u", "vda") == "/img/clones/hv1/u-vda.qcow2"
    assert inside("/img/clones/hv1/u.qcow2", "/img/clones")
    assert not inside("/img/clones/../etc/passwd", "/img/clones")
    assert not inside("/img/clones", "/img/clones")
    assert not inside("relative/x", "relative")
    assert not inside("/img/clonesX/a", "/img/clones")


# --------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 60), nics=st.integers(0, 3), seed=st.integers(0, 2**32),
       existing=st.sets(st.integers(1, 80).map(lambda n: f"worker-{n}"), max_size=30))
def test_clones_unique_and_parseable(count: int, nics: int, seed: int,
                                     existing: set[str]) -> None:
    """Names (none already in use), UUIDs and MACs are unique across a batch; every XML
    parses and all its disks point at that clone's own overlays."""
    xml = ("<domain type='test'><name>worker</name><memory unit='MiB'>64</memory><devices>"
           "<disk type='file' device='disk'><source file='/a.img'/><target dev='vda'/></disk>"
           "<disk type='block' device='disk'><source dev='/dev/b'/><target dev='vdb'/></disk>"
           + "<interface type='network'><source network='default'/></interface>" * nics
           + "</devices></domain>")
    names = clone_names("worker", count, existing)
    assert len(set(names)) == count and not set(names) & existing
    idents = identities(names, nics, random.Random(seed), {"52:54:00:aa:bb:cc"})
    macs = [m for i in idents for m in i.macs]
    assert len({i.uuid for i in idents}) == count
    assert len(set(macs)) == len(macs) == count * nics
    assert all(m.startswith("52:54:00:") and m != "52:54:00:aa:bb:cc" for m in macs)
    for ident in idents:
        overlays = {t: overlay_path("/img", "hv1", ident.uuid, t) for t in ("vda", "vdb")}
        root = ET.fromstring(rewrite(xml, ident, overlays))
        assert root.findtext("name") == ident.name and root.findtext("uuid") == ident.uuid
        sources = [d.find("source").get("file") for d in root.findall("./devices/disk")]
        assert sources == list(overlays.values())
        assert all(inside(s, "/img/clones") and ident.uuid in s for s in sources)
        assert tuple(m.get("address") for m in root.findall("./devices/interface/mac")) == \
            ident.macs


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_garbage_xml_is_one_line_error(text: str) -> None:
    try:
        template_disks(text)
    except ClonePlanError as exc:
        assert "\n" not in str(exc)
