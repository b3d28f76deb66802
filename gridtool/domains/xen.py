"""Xen's own view of a dom0 beside libvirt's (pure: no subprocess, no libvirt).

* Domain-0 is the host itself: libvirt's libxl driver lists it (id 0) but it is never
  a guest (:func:`is_dom0`).
* libvirt's libxl driver lists only the domains it started or reconnected to: one made
  with ``xl create`` behind its back is invisible to it. ``xl list -v`` lists what Xen
  runs (:func:`parse_xl_verbose`: 0.4 s in a TCG dom0); :func:`unknown_domains` is what
  Xen runs and libvirt does not, seen in two probes in a row (a start through libvirt is
  in Xen a moment before libvirt counts it active); ``xl list -l DOMID`` (JSON,
  :func:`parse_xl_list`: 1 s) gives such a domain's disks, and :func:`judge_unknown`
  what the agent does about it.
* :func:`health` is a Xen host's verdict: a toolstack that does not answer (xenstored
  stopped, libxl failing) makes the host unhealthy, never a host with "no guests".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from gridtool.registry.model import Disk, GuestRecord

DOM0_NAME = "Domain-0"


def is_dom0(domid: int, name: str) -> bool:
    """True for the host's own domain (id 0, named Domain-0): never a guest."""
    return domid == 0 or name == DOM0_NAME


class XlListError(ValueError):
    """``xl list -l`` printed something that is not its JSON list of domains."""


@dataclass(frozen=True)
class XenDomain:
    """A domain as Xen's toolstack lists it: its id, name, uuid and disks' sources
    (``pdev_path``: a file or block device in the dom0)."""

    domid: int
    name: str
    uuid: str
    disks: tuple[tuple[str, str], ...] = ()  # (vdev, pdev_path)
    memory_kib: int = 0


def parse_xl_verbose(text: str) -> tuple[XenDomain, ...]:
    """The guests in ``xl list -v``'s table (name, id, uuid; Domain-0 left out);
    XlListError when it is not that table."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Name") or "UUID" not in lines[0]:
        raise XlListError("xl list -v: no table header")
    found = []
    for line in lines[1:]:
        parts = line.rsplit(None, 8)  # the name may hold spaces; the 8 columns do not
        try:
            domid, uuid = int(parts[1]), parts[6].lower()
            memory = int(parts[2]) * 1024
        except (IndexError, ValueError):
            raise XlListError(f"xl list -v: not a domain line: {line.strip()!r}") from None
        if not is_dom0(domid, parts[0]):
            found.append(XenDomain(domid, parts[0], uuid, memory_kib=memory))
    return tuple(found)


def parse_xl_list(text: str) -> tuple[XenDomain, ...]:
    """The guests in ``xl list -l``'s JSON (Domain-0 left out); XlListError when it is
    not that JSON."""
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError as exc:
        raise XlListError(f"xl list -l: not JSON ({exc})") from None
    if not isinstance(data, list):
        raise XlListError("xl list -l: not a JSON list")
    found = []
    for entry in data:
        try:
            domid = int(entry["domid"])
            info = entry["config"]["c_info"]
            name, uuid = str(info.get("name") or ""), str(info.get("uuid") or "")
            disks = tuple((str(d.get("vdev") or ""), str(d.get("pdev_path") or ""))
                          for d in entry["config"].get("disks") or ())
            memory = int((entry["config"].get("b_info") or {}).get("max_memkb") or 0)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise XlListError(f"xl list -l: a domain without {exc}") from None
        if not is_dom0(domid, name):
            found.append(XenDomain(domid, name, uuid.lower(), disks, max(memory, 0)))
    return tuple(found)


def split_listing(domains: Iterable[tuple[str, int]]) -> tuple[set[str], set[str]]:
    """libvirt's domains from one listing, as (uuid, id) pairs (id -1: not active), split
    into the uuids it counts active and the others (lower case)."""
    active: set[str] = set()
    inactive: set[str] = set()
    for uuid, domid in domains:
        (inactive if domid < 0 else active).add(uuid.lower())
    return active, inactive


def unknown_domains(xen: Iterable[XenDomain], libvirt_active: Iterable[str],
                    before: Iterable[XenDomain] = ()) -> tuple[XenDomain, ...]:
    """Domains Xen runs whose uuid libvirt does not list active, and that were already
    running (same id) in the ``before`` probe."""
    active = {u.lower() for u in libvirt_active}
    seen = {(d.domid, d.uuid) for d in before}
    return tuple(d for d in xen if d.uuid not in active and (d.domid, d.uuid) in seen)


def domain_xml(dom: XenDomain) -> str:
    """A libvirt domain XML of an ``xl``-made domain's name, uuid and disks (a source
    under ``/dev`` a block disk, else a file): its disks are then classified exactly as a
    libvirt guest's (``gridtool.domains.devices.parse_local_domain``)."""
    disks = "".join(
        f"<disk type='block'><source dev={quoteattr(src)}/><target dev={quoteattr(dev)}/>"
        "</disk>" if src.startswith("/dev/") else
        f"<disk type='file'><source file={quoteattr(src)}/><target dev={quoteattr(dev)}/>"
        "</disk>" for dev, src in dom.disks)
    return (f"<domain type='xen'><name>{escape(dom.name)}</name><uuid>{escape(dom.uuid)}"
            f"</uuid><memory unit='KiB'>{dom.memory_kib}</memory><devices>{disks}</devices>"
            "</domain>")


def as_record(dom: XenDomain, host: str, disks: tuple[Disk, ...], now: float
              ) -> GuestRecord:
    """A guest record of an ``xl``-made domain, running here, with its classified
    ``disks`` (from :func:`domain_xml`)."""
    return GuestRecord(uuid=dom.uuid, name=dom.name, host=host, state="running", vcpus=0,
                       memory_mib=dom.memory_kib // 1024, updated_at=now, disks=disks,
                       intruder=True)


def judge_unknown(host: str, rec: GuestRecord, holders: Mapping[str, str | None],
                  libvirt_defines: bool = False) -> tuple[str, str]:
    """What to do about a domain running behind libvirt's back, given each of its shared
    volumes' fence holder (None: free) and whether libvirt has a domain of its uuid
    defined but not active: ``("destroy", why)`` when another host holds one of its fences
    (it must not run here); ``("report", why)`` when one is free, or when this host holds
    them all but libvirt does not know the domain (an ``xl create`` on this host's
    fences); ``("log", why)`` when it has no shared disk, or when this host holds every
    fence and libvirt defines it: libvirt's own start (or an incoming migration) whose
    domain ``xl`` lists before libvirt counts it active."""
    where = f"{rec.name} ({rec.uuid}) runs on {host} behind libvirt's back (xl)"
    if not rec.fenced:
        return "log", f"{where}; no shared disk"
    foreign = sorted((v, h) for v, h in holders.items() if h and h != host)
    if foreign:
        volume, holder = foreign[0]
        return "destroy", f"fence violation: {where} but fence {volume} is held by {holder}; " \
                          "destroy it"
    free = sorted(v for v in rec.volumes if not holders.get(v))
    if free:
        return "report", f"fence violation: {where}, unfenced ({free[0]} is free); " \
                         "libvirt cannot manage it"
    if libvirt_defines:
        return "log", f"{where} as libvirt starts or receives it; this host holds its fences"
    return "report", f"fence violation: {where} on this host's fences; libvirt cannot " \
                     "manage it"


def health(error: str | None) -> str:
    """The host's ``unhealthy`` reason from the toolstack probe's error ('' when it
    answered: healthy)."""
    return f"Xen toolstack not answering: {error}" if error else ""
