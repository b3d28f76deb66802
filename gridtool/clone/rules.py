"""Clone planning (pure): names, identities and the domain XML of copy-on-write clones.

A template is a guest's domain XML plus one read-only golden image per disk. A clone is
that XML with a fresh identity (name, UUID, MAC addresses), every disk pointed at its own
qcow2 overlay whose backing file is the golden image, and everything that identifies one
particular machine removed (interface target devices, disk serials and WWNs, SMBIOS
serial, VM generation id, NVRAM path, dynamic security labels, fixed console ports).

The XML is rewritten with ElementTree (no external entities are expanded); every
failure is a :class:`ClonePlanError` with a one-line message. No I/O, no clock: the
random source is a parameter.
"""

from __future__ import annotations

import random
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from io import StringIO
from pathlib import PurePosixPath

from gridtool.domains.xml import DomainXMLError, parse_domain

MAX_CLONES = 1000  # per call
MAX_NAME = 128
MAC_PREFIX = "52:54:00"  # locally administered (QEMU/KVM's OUI, as libvirt uses)
OVERLAY_FORMAT = "qcow2"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_XEN_DRIVERS = frozenset({"phy", "file", "tap", "tap2"})  # libxl disk backends without qcow2
#: The clone's ready marker: ``<metadata><gt:ready xmlns:gt=READY_NS marker="TEXT"/>``.
READY_NS = "https://gridtool.invalid/ready"
MAX_MARKER = 64
_MARKER_OK = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces


class ClonePlanError(ValueError):
    """The template or the clone request cannot be planned; str() is one line."""


@dataclass(frozen=True)
class TemplateDisk:
    """A disk of a template's source guest that becomes a golden image."""

    target: str  # vda, sda, xvda ...
    kind: str  # file | block
    source: str  # path on the source host ("" when the disk has no source)


@dataclass(frozen=True)
class CloneIdentity:
    """What makes a clone a different machine."""

    name: str
    uuid: str
    macs: tuple[str, ...]  # one per <interface>, in document order


# --------------------------------------------------------------------------- names


def check_name(kind: str, name: str) -> str:
    """A template or clone name: letters, digits and ``_.+-``, not starting with
    punctuation (it becomes a libvirt name, a key segment and a directory name)."""
    if not _NAME_OK.fullmatch(name) or len(name) > MAX_NAME:
        raise ClonePlanError(f"invalid {kind} name {name!r}: use letters, digits and _.+- "
                             f"(starting with a letter or digit, at most {MAX_NAME} chars)")
    return name


def clone_names(template: str, count: int, existing: Collection[str],
                prefix: str | None = None) -> list[str]:
    """``count`` new names ``<prefix><n>`` (default prefix ``<template>-``), numbered
    from 1 and skipping every name in ``existing``."""
    if not 1 <= count <= MAX_CLONES:
        raise ClonePlanError(f"clone count must be 1..{MAX_CLONES}, not {count}")
    prefix = f"{template}-" if prefix is None else prefix
    if not prefix:
        raise ClonePlanError("the name prefix must not be empty")
    check_name("name prefix", prefix)
    taken = set(existing)
    names: list[str] = []
    n = 0
    while len(names) < count:
        n += 1
        name = f"{prefix}{n}"
        if name not in taken:
            names.append(check_name("clone", name))
    return names


# --------------------------------------------------------------------------- identity


def new_mac(rng: random.Random, taken: Collection[str]) -> str:
    """A locally administered MAC address (52:54:00:xx:xx:xx) not in ``taken``."""
    if len(taken) >= 1 << 24:
        raise ClonePlanError("no MAC addresses left under 52:54:00")
    while True:
        value = rng.getrandbits(24)
        mac = f"{MAC_PREFIX}:{value >> 16:02x}:{(value >> 8) & 0xFF:02x}:{value & 0xFF:02x}"
        if mac not in taken:
            return mac


def identities(names: Iterable[str], nics: int, rng: random.Random,
               taken_macs: Collection[str] = ()) -> list[CloneIdentity]:
    """A fresh UUID and ``nics`` MAC addresses per name, all unique (and MACs not in
    ``taken_macs``)."""
    taken = {m.lower() for m in taken_macs}
    seen_uuids: set[str] = set()
    found = []
    for name in names:
        uid = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
        while uid in seen_uuids:
            uid = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
        seen_uuids.add(uid)
        macs = []
        for _ in range(nics):
            mac = new_mac(rng, taken)
            taken.add(mac)
            macs.append(mac)
        found.append(CloneIdentity(name, uid, tuple(macs)))
    return found


# --------------------------------------------------------------------------- templates


def _parse(xml: str) -> ET.Element:
    try:
        parse_domain(xml)  # the same checks as everywhere else (name, memory, vcpu)
        return ET.fromstring(xml)
    except DomainXMLError as exc:
        raise ClonePlanError(f"template XML: {exc}") from None


def _disk_elements(root: ET.Element) -> list[ET.Element]:
    """The ``<disk device="disk">`` elements: the ones that get golden images/overlays
    (CD-ROMs and floppies are read-only media and stay as they are)."""
    return [d for d in root.findall("./devices/disk") if d.get("device", "disk") == "disk"]


def template_disks(xml: str) -> tuple[TemplateDisk, ...]:
    """The disks to freeze into golden images; refuses what cannot be cloned."""
    root = _parse(xml)
    disks: list[TemplateDisk] = []
    for el in root.findall("./devices/disk"):
        if el.get("device") == "lun":
            raise ClonePlanError("template has a LUN passthrough disk: it cannot be cloned")
    for el in _disk_elements(root):
        target = el.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if not re.fullmatch(r"[a-z]+[0-9a-z]*", dev):
            raise ClonePlanError(f"template disk without a usable <target dev=...>: {dev!r}")
        kind = el.get("type", "file")
        if kind not in ("file", "block"):
            raise ClonePlanError(f"template disk {dev} is of type {kind}: only file and block "
                                 "disks can become golden images")
        if el.find("shareable") is not None:
            raise ClonePlanError(f"template disk {dev} is shareable: clones cannot share a "
                                 "writable disk")
        src = el.find("source")
        source = (src.get("file") or src.get("dev") or "") if src is not None else ""
        if any(d.target == dev for d in disks):
            raise ClonePlanError(f"template has two disks with target {dev}")
        disks.append(TemplateDisk(dev, kind, source))
    return tuple(disks)


def interface_count(xml: str) -> int:
    return len(_parse(xml).findall("./devices/interface"))


def macs_of(xml: str) -> tuple[str, ...]:
    """The MAC addresses a domain XML sets explicitly (lower case)."""
    root = _parse(xml)
    return tuple(m.get("address", "").lower() for m in root.findall("./devices/interface/mac")
                 if m.get("address"))


# --------------------------------------------------------------------------- paths


def golden_path(images_dir: str, template: str, target: str) -> str:
    """Where a template's golden image of disk ``target`` lives."""
    return str(PurePosixPath(images_dir, "templates", template, f"{target}.{OVERLAY_FORMAT}"))


def overlay_path(images_dir: str, host: str, uuid: str, target: str) -> str:
    """Where a clone's overlay of disk ``target`` lives (per host, named by the UUID)."""
    return str(PurePosixPath(images_dir, "clones", host, f"{uuid}-{target}.{OVERLAY_FORMAT}"))


def inside(path: str, directory: str) -> bool:
    """True when ``path`` (normalised, no ``..``) lies strictly under ``directory``."""
    p, d = PurePosixPath(path), PurePosixPath(directory)
    return p.is_absolute() and ".." not in p.parts and p != d and d in p.parents


# --------------------------------------------------------------------------- rewrite


def _namespaces(xml: str) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        for _event, (prefix, uri) in ET.iterparse(StringIO(xml), events=("start-ns",)):
            found.setdefault(prefix, uri)
    except ET.ParseError as exc:
        raise ClonePlanError(f"template XML: malformed: {exc}") from None
    return found


def _set_child(parent: ET.Element, tag: str, text: str, first: bool = False) -> ET.Element:
    el = parent.find(tag)
    if el is None:
        el = ET.Element(tag)
        if first:
            parent.insert(0, el)
        else:
            parent.append(el)
    el.text = text
    return el


def _drop(parent: ET.Element, *tags: str) -> None:
    for tag in tags:
        for el in parent.findall(tag):
            parent.remove(el)


def rewrite(xml: str, identity: CloneIdentity, overlays: Mapping[str, str],
            ready_marker: str = "") -> str:
    """The template's domain XML as clone ``identity``: new name, UUID and MACs, each
    disk (by target) on its overlay from ``overlays``, identity-bound parts removed;
    with ``ready_marker`` also the marker element (:func:`set_ready_marker`)."""
    root = _parse(xml)
    for prefix, uri in _namespaces(xml).items():  # keep metadata prefixes as written
        if prefix and not re.fullmatch(r"ns\d+", prefix):
            ET.register_namespace(prefix, uri)
    if root.get("id") is not None:
        del root.attrib["id"]  # a live XML's domain id
    name_at = list(root).index(_set_child(root, "name", identity.name, first=True))
    if root.find("uuid") is None:
        root.insert(name_at + 1, ET.Element("uuid"))
    _set_child(root, "uuid", identity.uuid)
    genid = root.find("genid")
    if genid is not None:
        genid.text = None  # empty: libvirt generates a new VM generation id
    _scrub_sysinfo(root, identity.uuid)
    nvram = root.find("./os/nvram")
    if nvram is not None:
        nvram.text = None  # per-machine UEFI variables: libvirt makes a fresh file
    _rewrite_disks(root, overlays)
    _rewrite_interfaces(root, identity.macs)
    _rewrite_console_files(root, identity.name)
    _scrub_devices(root)
    for label in root.findall("seclabel"):
        if label.get("type", "dynamic") == "dynamic":
            _drop(label, "label", "imagelabel")
    if ready_marker:
        set_ready_marker(root, ready_marker)
    return ET.tostring(root, encoding="unicode")


def _scrub_sysinfo(root: ET.Element, uid: str) -> None:
    for system in root.findall("./sysinfo/system"):
        for entry in system.findall("entry"):
            if entry.get("name") == "uuid":
                entry.text = uid
            elif entry.get("name") == "serial":
                system.remove(entry)


def _rewrite_disks(root: ET.Element, overlays: Mapping[str, str]) -> None:
    seen = set()
    for disk in _disk_elements(root):
        target = disk.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if dev not in overlays:
            raise ClonePlanError(f"no overlay for template disk {dev or '(no target)'}")
        seen.add(dev)
        disk.set("type", "file")
        driver = disk.find("driver")
        if driver is None:
            driver = ET.Element("driver", {"name": "qemu"})
            disk.insert(0, driver)
        driver.set("type", OVERLAY_FORMAT)
        if driver.get("name") in _XEN_DRIVERS:  # Xen: qcow2 needs libxl's qdisk backend
            driver.set("name", "qemu")
        _drop(disk, "source", "backingStore", "serial", "wwn", "alias")
        source = ET.Element("source", {"file": overlays[dev]})
        disk.insert(list(disk).index(driver) + 1, source)
    extra = set(overlays) - seen
    if extra:
        raise ClonePlanError(f"overlays for disks the template does not have: "
                             f"{', '.join(sorted(extra))}")


def _rewrite_interfaces(root: ET.Element, macs: tuple[str, ...]) -> None:
    nics = root.findall("./devices/interface")
    if len(nics) != len(macs):
        raise ClonePlanError(f"template has {len(nics)} interfaces, identity has "
                             f"{len(macs)} MAC addresses")
    for nic, mac in zip(nics, macs, strict=True):
        if not _MAC.fullmatch(mac):
            raise ClonePlanError(f"not a MAC address: {mac!r}")
        _drop(nic, "mac", "target", "alias")
        nic.insert(0, ET.Element("mac", {"address": mac}))


def _rewrite_console_files(root: ET.Element, name: str) -> None:
    """Serial/console output files (and their ``<log>``) get the clone's own file in the
    same directory: two clones on one host cannot share one (virtlogd holds it), and
    on shared storage their output would interleave. A console that mirrors a serial
    port's file keeps mirroring it."""
    renamed: dict[str, str] = {}
    for dev in root.findall("./devices/serial") + root.findall("./devices/console"):
        places = [(dev.find("source"), "path")] if dev.get("type") == "file" else []
        places.append((dev.find("log"), "file"))
        for el, attr in places:
            old = el.get(attr) if el is not None else None
            if el is None or not old:
                continue
            if old not in renamed:
                folder, _, base = old.rpartition("/")
                suffix = base[base.rfind("."):] if "." in base else ".log"
                renamed[old] = f"{folder}/{name}-{len(renamed)}{suffix}" if renamed \
                    else f"{folder}/{name}{suffix}"
            el.set(attr, renamed[old])


def _scrub_devices(root: ET.Element) -> None:
    devices = root.find("devices")
    if devices is None:
        return
    for graphics in devices.findall("graphics"):
        if graphics.get("autoport") == "no" or graphics.get("port") not in (None, "-1"):
            for attr in ("port", "tlsPort", "websocket"):
                graphics.attrib.pop(attr, None)
            graphics.set("autoport", "yes")  # two clones on one host cannot share a port


# --------------------------------------------------------------------------- ready marker


def check_marker(marker: str) -> str:
    """A ready marker: 1..64 printable ASCII characters without spaces."""
    if not _MARKER_OK.fullmatch(marker) or len(marker) > MAX_MARKER:
        raise ClonePlanError(f"invalid ready marker {marker!r}: use 1..{MAX_MARKER} printable "
                             "ASCII characters without spaces")
    return marker


def serial_file(root: ET.Element) -> str:
    """The file the guest's first serial port (else console) writes to: a ``file``
    device's source path, or the ``<log file=...>`` of another kind ("" when none)."""
    for dev in root.findall("./devices/serial") + root.findall("./devices/console"):
        src, log = dev.find("source"), dev.find("log")
        if dev.get("type") == "file" and src is not None and src.get("path"):
            return str(src.get("path"))
        if log is not None and log.get("file"):
            return str(log.get("file"))
    return ""


def set_ready_marker(root: ET.Element, marker: str) -> None:
    """Record ``marker`` in the domain's ``<metadata>`` and make its serial file start
    empty at each boot (``append`` off), so a marker found there is from this boot.
    ``ClonePlanError`` when the domain has no serial file to watch."""
    check_marker(marker)
    path = serial_file(root)
    if not path:
        raise ClonePlanError("a ready marker needs a serial console writing to a file "
                             "(<serial type='file'> or a <log file=...>)")
    for dev in root.findall("./devices/serial") + root.findall("./devices/console"):
        for el in (dev.find("source"), dev.find("log")):
            if el is not None and path in (el.get("path"), el.get("file")):
                el.attrib.pop("append", None)
    ET.register_namespace("gt", READY_NS)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        root.insert(list(root).index(root.find("uuid")) + 1, metadata)  # type: ignore[arg-type]  # no <uuid>: ValueError as before
    for old in metadata.findall(f"{{{READY_NS}}}ready"):
        metadata.remove(old)
    ET.SubElement(metadata, f"{{{READY_NS}}}ready", {"marker": marker})


def check_ready(xml: str, marker: str) -> None:
    """``ClonePlanError`` unless clones of ``xml`` can carry ready ``marker``."""
    set_ready_marker(_parse(xml), marker)


def ready_spec(xml: str) -> tuple[str, str] | None:
    """``(marker, serial file)`` of a domain XML carrying a ready marker, else None
    (also for XML that does not parse: readiness is then simply not watched)."""
    if READY_NS not in xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    el = root.find(f"./metadata/{{{READY_NS}}}ready")
    marker = el.get("marker", "") if el is not None else ""
    path = serial_file(root)
    if not marker or not path or not _MARKER_OK.fullmatch(marker):
        return None
    return marker, path
