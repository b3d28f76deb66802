"""Unit tests for gridtool.domains.xml: reading libvirt domain XML."""

from __future__ import annotations

import pytest

from gridtool.domains.storage import SharedStorageRules
from gridtool.domains.xml import DomainSpec, DomainXMLError, parse_domain
from gridtool.registry.model import Disk

IQN = "iqn.2013-06.com.example:storage.tgt1"

KVM_XML = f"""<?xml version="1.0"?>
<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>0b0e6c8e-8f4e-4d2a-9a57-0d1f1f2c3b4a</uuid>
  <metadata>
    <gt:info xmlns:gt="urn:gridtool"><name>not-this-one</name></gt:info>
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>4</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/etherd/e1.2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='lun'>
      <driver name='qemu' type='raw'/>
      <source protocol='iscsi' name='{IQN}/1'>
        <host name='192.168.10.5' port='3260'/>
      </source>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/var/lib/libvirt/isos/debian-12.iso'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='floppy'>
      <source file='/tmp/floppy.img'/>
      <target dev='fda' bus='fdc'/>
    </disk>
    <interface type='network'><source network='default'/></interface>
  </devices>
  <qemu:commandline><qemu:arg value='-no-reboot'/></qemu:commandline>
</domain>
"""


def dom(body: str, attrs: str = " type='kvm'") -> str:
    return f"<domain{attrs}><name>g</name>{body}</domain>"


def xml_error(xml: str) -> str:
    with pytest.raises(DomainXMLError) as info:
        parse_domain(xml)
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    return msg


def test_realistic_kvm_domain() -> None:
    spec = parse_domain(KVM_XML)
    assert isinstance(spec, DomainSpec)
    assert spec.name == "web1"
    assert spec.uuid == "0b0e6c8e-8f4e-4d2a-9a57-0d1f1f2c3b4a"
    assert spec.domain_type == "kvm"
    assert spec.vcpus == 4
    assert spec.memory_mib == 2048  # currentMemory wins over memory
    assert spec.disks == (
        Disk(target="vda", source="/var/lib/libvirt/images/web1.qcow2", kind="file"),
        Disk(target="vdb", source="/dev/etherd/e1.2", kind="block", shared=True,
             volume="aoe-e1.2"),
        Disk(target="sda", source=f"{IQN}/1", kind="network", protocol="iscsi",
             shared=True, volume=f"iscsi-{IQN}-lun1"),
    )


def test_cdrom_and_floppy_ignored() -> None:
    targets = [d.target for d in parse_domain(KVM_XML).disks]
    assert "sdb" not in targets and "fda" not in targets


def test_xen_domain_minimal() -> None:
    xml = """<domain type='xen'>
      <name> xen-guest </name>
      <memory>1048576</memory>
      <devices>
        <disk type='block'>
          <source dev='/dev/disk/by-path/ip-10.0.0.9:3260-iscsi-iqn.2001-04.org.x:vol7-lun-3'/>
          <target dev='xvda'/>
          <shareable/>
        </disk>
      </devices>
    </domain>"""
    spec = parse_domain(xml)
    assert spec.name == "xen-guest"
    assert spec.uuid is None
    assert spec.domain_type == "xen"
    assert spec.vcpus == 1  # no <vcpu>
    assert spec.memory_mib == 1024  # default unit KiB
    (disk,) = spec.disks
    assert disk.kind == "block" and disk.target == "xvda" and disk.shareable
    assert disk.shared and disk.volume == "iscsi-iqn.2001-04.org.x:vol7-lun3"


@pytest.mark.parametrize(
    ("unit", "value", "mib"),
    [
        (None, "2097152", 2048),
        ("KiB", "2097152", 2048),
        ("k", "1024", 1),
        ("kib", "1024", 1),
        ("KB", "1048576", 1000),
        ("MiB", "1536", 1536),
        ("M", "512", 512),
        ("MB", "1000", 953),
        ("GiB", "2", 2048),
        ("G", "3", 3072),
        ("GB", "2", 1907),
        ("TiB", "1", 1048576),
        ("b", "1073741824", 1024),
        ("bytes", "536870912", 512),
        ("KiB", " 4096 ", 4),
        ("KiB", "1023", 0),
    ],
)
def test_memory_units(unit: str | None, value: str, mib: int) -> None:
    attr = f" unit='{unit}'" if unit else ""
    assert parse_domain(dom(f"<memory{attr}>{value}</memory>")).memory_mib == mib


def test_current_memory_preferred_over_memory() -> None:
    xml = dom("<memory unit='GiB'>8</memory><currentMemory unit='MiB'>3072</currentMemory>")
    assert parse_domain(xml).memory_mib == 3072
    xml = dom("<currentMemory unit='GiB'>1</currentMemory>")
    assert parse_domain(xml).memory_mib == 1024


def test_volume_disk_and_dir_disk() -> None:
    xml = dom("""<memory>1024</memory><devices>
        <disk type='volume' device='disk'>
          <source pool='san' volume='g-root'/><target dev='vda'/>
        </disk>
        <disk type='dir' device='disk'><source dir='/srv/fat'/><target dev='hdb'/></disk>
        <disk type='file'><target dev='vdc'/></disk>
        <disk type='file'><source file='/x.img'/></disk>
      </devices>""")
    rules = SharedStorageRules(shared_pools=("san",))
    vol, dirdisk, nosrc, notarget = parse_domain(xml, rules).disks
    assert (vol.kind, vol.source, vol.shared, vol.volume) == (
        "volume", "san/g-root", True, "path-san%2Fg-root")
    assert (dirdisk.kind, dirdisk.source, dirdisk.shared) == ("dir", "/srv/fat", False)
    assert (nosrc.source, nosrc.target, nosrc.protocol) == ("", "vdc", None)
    assert (notarget.source, notarget.target) == ("/x.img", "")
    # without the pool marked shared the volume is local
    assert not parse_domain(xml).disks[0].shared


def test_disk_type_defaults_to_file() -> None:
    xml = dom("<memory>1024</memory><devices><disk><source file='/a.img'/>"
              "<target dev='vda'/></disk></devices>")
    (d,) = parse_domain(xml).disks
    assert d.kind == "file" and d.source == "/a.img"


def test_custom_rules_are_used() -> None:
    xml = dom("<memory>1024</memory><devices><disk type='file'>"
              "<source file='/mnt/cluster/g.img'/><target dev='vda'/></disk></devices>")
    assert not parse_domain(xml).disks[0].shared
    rules = SharedStorageRules(patterns=("/mnt/cluster/*",))
    d = parse_domain(xml, rules).disks[0]
    assert d.shared and d.volume == "path-mnt%2Fcluster%2Fg.img"


def test_only_top_level_devices_disks_count() -> None:
    xml = dom("<memory>1024</memory><metadata><devices><disk type='file'>"
              "<source file='/x'/></disk></devices></metadata>")
    assert parse_domain(xml).disks == ()


def test_empty_uuid_is_none_and_blank_vcpu_is_one() -> None:
    spec = parse_domain(dom("<uuid>  </uuid><vcpu/><memory>1024</memory>"))
    assert spec.uuid is None and spec.vcpus == 1


def test_no_type_attribute() -> None:
    assert parse_domain(dom("<memory>1024</memory>", attrs="")).domain_type == ""


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "xml",
    ["", "not xml at all", "<domain>", "<domain><name>a</name></domai>",
     "<domain><name>a</name><memory>1</memory></domain>\n<domain/>",
     '{"name": "web1"}', "<domain>\n<name>x</name>\n<memory>1\n</domain>", "\x00"],
)
def test_not_xml(xml: str) -> None:
    assert xml_error(xml).startswith("malformed domain XML: ")


@pytest.mark.parametrize(
    ("xml", "tag"),
    [("<network><name>default</name></network>", "network"),
     ("<domainsnapshot><name>s</name></domainsnapshot>", "domainsnapshot"),
     ("<Domain><name>a</name><memory>1</memory></Domain>", "Domain")],
)
def test_root_not_domain(xml: str, tag: str) -> None:
    assert xml_error(xml) == f"not a domain definition (root element <{tag}>)"


@pytest.mark.parametrize(
    "xml",
    ["<domain><memory>1024</memory></domain>",
     "<domain><name>   </name><memory>1024</memory></domain>",
     "<domain><name/><memory>1024</memory></domain>",
     "<domain><metadata><name>x</name></metadata><memory>1</memory></domain>"],
)
def test_no_name(xml: str) -> None:
    assert xml_error(xml) == "domain XML has no <name>"


@pytest.mark.parametrize(
    "body", ["", "<memory/>", "<memory unit='KiB'>  </memory>", "<maxMemory>1</maxMemory>"])
def test_no_memory(body: str) -> None:
    assert xml_error(dom(body)) == "domain XML has no <memory>"


@pytest.mark.parametrize("unit", ["KiBB", "pages", "", "KiB "])
def test_bad_memory_unit(unit: str) -> None:
    assert xml_error(dom(f"<memory unit='{unit}'>1024</memory>")) == (
        f"unknown memory unit {unit!r}")


@pytest.mark.parametrize("value", ["1.5", "lots", "0x400", "1 024"])
def test_non_numeric_memory(value: str) -> None:
    assert xml_error(dom(f"<memory>{value}</memory>")) == (
        f"<memory> is not a whole number: {value!r}")


def test_negative_memory() -> None:
    assert xml_error(dom("<memory>-1</memory>")) == "<memory> is negative"


@pytest.mark.parametrize("value", ["four", "2.0", "  ", "1\n2"])
def test_non_numeric_vcpu(value: str) -> None:
    msg = xml_error(dom(f"<vcpu>{value}</vcpu><memory>1024</memory>"))
    assert msg == f"<vcpu> is not a whole number: {value.strip()!r}"


def test_negative_vcpu() -> None:
    assert xml_error(dom("<vcpu>-2</vcpu><memory>1024</memory>")) == "<vcpu> is negative"


def test_error_is_value_error() -> None:
    assert issubclass(DomainXMLError, ValueError)


@pytest.mark.parametrize(("unit", "bytes_per_unit"), [("b", 1), ("KB", 1000), ("GB", 1000**3)])
def test_huge_memory_is_exact_or_domain_xml_error(unit: str, bytes_per_unit: int) -> None:
    value = int("9" * 400)
    try:
        spec = parse_domain(dom(f"<memory unit='{unit}'>{value}</memory>"))
    except DomainXMLError as exc:
        assert "\n" not in str(exc)
    else:
        assert spec.memory_mib == value * bytes_per_unit // 1024**2


def test_the_intruder_mark_is_read_from_the_metadata_libvirt_writes() -> None:
    """The element ``intruder_mark`` makes, as libvirt puts it in the live XML (its
    namespace declared on it), marks the domain; the ready marker or another namespace's
    ``intruder`` element does not."""
    from gridtool.domains.xml import INTRUDER_NS, INTRUDER_PREFIX, intruder_mark, intruder_marked

    element = intruder_mark("hv1", 12.5)
    assert element == '<intruder holder="hv1" at="12.500" />'
    prefixed = element.replace("<intruder", f"<{INTRUDER_PREFIX}:intruder "
                               f"xmlns:{INTRUDER_PREFIX}='{INTRUDER_NS}'")
    marked = KVM_XML.replace("</metadata>", f"{prefixed}</metadata>")
    assert intruder_marked(marked) and parse_domain(marked).intruder
    assert not intruder_marked(KVM_XML) and not parse_domain(KVM_XML).intruder
    other = KVM_XML.replace("</metadata>", "<x:intruder xmlns:x='urn:other'/></metadata>")
    assert not parse_domain(other).intruder
    assert not intruder_marked(f"<domain>{INTRUDER_NS}")  # does not parse: not marked
