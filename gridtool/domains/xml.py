"""Read what gridtool needs from libvirt domain XML (pure; stdlib ElementTree).

ElementTree does not expand external entities, and domain XML comes from libvirt or
from an operator's file; malformed input raises ``DomainXMLError`` with one line.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, replace

from gridtool.domains.storage import DiskIdError, SharedStorageRules, classify
from gridtool.registry.model import Disk

#: The intruder mark: ``<metadata><gti:intruder xmlns:gti=INTRUDER_NS holder=... at=.../>``,
#: set on the *live* definition of a copy the agent paused as an intruder. It lives as
#: long as that run of the domain (its memory) does: libvirt drops it with the live
#: definition when the domain is shut off, and keeps it across agent and libvirtd
#: restarts (and in a saved image of the copy).
INTRUDER_NS = "https://gridtool.invalid/intruder"
INTRUDER_PREFIX = "gti"  # the namespace prefix libvirt writes it with
INTRUDER_ELEMENT = "intruder"

#: libvirt's memory units, in bytes (integers: exact for any size).
_MEMORY_UNIT_BYTES = {
    "b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2, "g": 1024**3, "gib": 1024**3,
    "gb": 1000**3, "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}


class DomainXMLError(ValueError):
    """The domain XML is malformed or lacks something gridtool needs."""


@dataclass(frozen=True)
class DomainSpec:
    """The parts of a domain definition the registry records."""

    name: str
    uuid: str | None
    domain_type: str
    vcpus: int
    memory_mib: int
    disks: tuple[Disk, ...]
    intruder: bool = False  # carries the intruder mark (see INTRUDER_NS)
    #: Shared disks whose LUN cannot be identified (one line each): they are in
    #: ``disks`` as shared with no volume, and the guest must not start.
    unidentified: tuple[str, ...] = ()


def parse_domain(xml: str, rules: SharedStorageRules | None = None,
                 aliases: Mapping[str, tuple[str, ...]] | None = None) -> DomainSpec:
    """Parse domain XML; classify disks as shared or local with ``rules`` and the other
    names this host has for each disk source (``aliases``, from
    :func:`gridtool.domains.devices.source_aliases`; none when parsed away from the host)."""
    root = _root(xml)
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError("domain XML has no <name>")
    disks, unidentified = _classified(root, rules, aliases)
    return DomainSpec(
        name=name,
        uuid=(root.findtext("uuid") or "").strip() or None,
        domain_type=root.get("type", ""),
        vcpus=_int(root.findtext("vcpu") or "1", "vcpu"),
        memory_mib=_memory_mib(root),
        disks=disks,
        intruder=_marked(root),
        unidentified=unidentified,
    )


def domain_disks(xml: str, rules: SharedStorageRules | None = None,
                 aliases: Mapping[str, tuple[str, ...]] | None = None,
                 ) -> tuple[tuple[Disk, ...], tuple[str, ...]]:
    """Only the disks of domain ``xml``, classified as :func:`parse_domain` does, and the
    unidentified ones' problems (DomainXMLError when it does not parse)."""
    return _classified(_root(xml), rules, aliases)


def _classified(root: ET.Element, rules: SharedStorageRules | None,
                aliases: Mapping[str, tuple[str, ...]] | None,
                ) -> tuple[tuple[Disk, ...], tuple[str, ...]]:
    rules = rules or SharedStorageRules()
    aliases = aliases or {}
    disks, unidentified = [], []
    for disk in _disks(root):
        try:
            disks.append(classify(disk, rules, aliases.get(disk.source, ())))
        except DiskIdError as exc:
            disks.append(replace(disk, shared=True, volume=None))
            unidentified.append(str(exc))
    return tuple(disks), tuple(unidentified)


def disk_sources(xml: str) -> tuple[str, ...]:
    """The sources of the file and block disks of domain ``xml`` (what the shell resolves
    to aliases); DomainXMLError when it does not parse."""
    return tuple(d.source for d in _disks(_root(xml)) if d.kind in ("file", "block")
                 and d.source)


def _root(xml: str) -> ET.Element:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXMLError(f"malformed domain XML: {exc}") from None
    if root.tag != "domain":
        raise DomainXMLError(f"not a domain definition (root element <{root.tag}>)")
    return root


def intruder_marked(xml: str) -> bool:
    """True when domain XML carries the intruder mark (False for XML that does not parse:
    the caller's own parse reports that)."""
    if INTRUDER_NS not in xml:
        return False
    try:
        return _marked(ET.fromstring(xml))
    except ET.ParseError:
        return False


def _marked(root: ET.Element) -> bool:
    return root.find(f"./metadata/{{{INTRUDER_NS}}}{INTRUDER_ELEMENT}") is not None


def intruder_mark(holder: str, at: float) -> str:
    """The mark's element as libvirt's ``virDomainSetMetadata`` takes it (namespace
    given apart): who held the fence (``holder``, '' when nobody) and when (epoch s)."""
    el = ET.Element(INTRUDER_ELEMENT, {"holder": holder, "at": f"{at:.3f}"})
    return ET.tostring(el, encoding="unicode")


def _int(text: str, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise DomainXMLError(f"<{what}> is not a whole number: {text.strip()!r}") from None
    if value < 0:
        raise DomainXMLError(f"<{what}> is negative")
    return value


def _memory_mib(root: ET.Element) -> int:
    mem = root.find("currentMemory")
    if mem is None:
        mem = root.find("memory")
    if mem is None or not (mem.text or "").strip():
        raise DomainXMLError("domain XML has no <memory>")
    unit = mem.get("unit", "KiB").lower()
    if unit not in _MEMORY_UNIT_BYTES:
        raise DomainXMLError(f"unknown memory unit {mem.get('unit')!r}")
    return _int(mem.text or "", "memory") * _MEMORY_UNIT_BYTES[unit] // 1024**2


def _disks(root: ET.Element) -> list[Disk]:
    found = []
    for el in root.findall("./devices/disk"):
        if el.get("device", "disk") not in ("disk", "lun"):
            continue
        src = el.find("source")
        target = el.find("target")
        found.append(Disk(
            target=target.get("dev", "") if target is not None else "",
            source=_source(el.get("type", "file"), src),
            kind=el.get("type", "file"),
            protocol=src.get("protocol") if src is not None else None,
            shareable=el.find("shareable") is not None,
        ))
    return found


def _source(kind: str, src: ET.Element | None) -> str:
    if src is None:
        return ""
    if kind == "network":
        return src.get("name", "")
    if kind == "volume":
        return f"{src.get('pool', '')}/{src.get('volume', '')}"
    return src.get("file") or src.get("dev") or src.get("dir") or ""
