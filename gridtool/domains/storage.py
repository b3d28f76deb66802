"""Which disks live on shared storage, and one volume id per LUN: the fence key's name (pure).

The id names what the storage names, never how one host reaches it: an iSCSI LUN is its
target name and LUN number (whatever portal, address or port a host uses, and whether the
guest's XML gives a network disk or a ``/dev/disk/by-path`` device), a SCSI LU with a
world-wide name is that WWN, an AoE device its shelf and slot. Names that RFC 3720 and
SPC make case-insensitive (iSCSI names, WWN hex) are lower-cased; paths are normalised
(``//``, ``.``, ``..``, trailing ``/``). Symlinks are the shell's business
(:mod:`gridtool.domains.devices`): it passes, per disk source, the other names this host
has for the same object (``aliases``), and the LUN identity is taken from all of them.
A disk that is shared but cannot be identified raises :class:`DiskIdError`.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import quote

from gridtool.registry.model import Disk

DEFAULT_SHARED_PATTERNS = ("/dev/etherd/*", "/dev/disk/by-path/*-iscsi-*")
#: Where udev keeps the links that name block devices by what they are.
LINK_DIRS = ("/dev/disk/by-path", "/dev/disk/by-id")
#: The sources the shell resolves: device names only. /dev cannot hang a stat, while a
#: file on a hard-mounted NFS whose server is gone would hang the agent for good.
RESOLVE_UNDER = ("/dev/",)

#: The longest iSCSI name (RFC 3720 3.2.6.1: 223 bytes).
MAX_ISCSI_NAME = 223
#: The highest LUN a one-level SAM address carries (flat space addressing: 14 bits).
MAX_LUN = 0x3FFF

_AOE = re.compile(r"^/dev/etherd/e(\d+)\.(\d+)(p\d+)?\Z")
_ISCSI_IN_PATH = re.compile(r"-iscsi-([^/]*)\Z")
_ISCSI_TAIL = re.compile(r"^(.+)-lun-(\d+|0x[0-9a-fA-F]{16})(-part\d+)?\Z")
_BY_ID_WWN = re.compile(r"^/dev/disk/by-id/(?:wwn-0x|scsi-3|dm-uuid-mpath-3)(.*?)(-part\d+)?\Z")
_WWN_HEX = re.compile(r"^(?:[0-9a-f]{16}|[0-9a-f]{32})\Z")
_ISCSI_NAME = re.compile(r"^(?:iqn\.|eui\.|naa\.)[^\s/\x00-\x1f\x7f]+\Z")
_ISCSI_PREFIXES = ("iqn.", "eui.", "naa.")


class DiskIdError(ValueError):
    """A disk on shared storage whose LUN cannot be told from its name."""


@dataclass(frozen=True)
class SharedStorageRules:
    """What counts as shared storage: path patterns and libvirt pools marked shared;
    ``link_dirs``: where the shell looks for other names of a disk's device, and
    ``resolve_under``: the prefixes of the sources it resolves at all."""

    patterns: tuple[str, ...] = DEFAULT_SHARED_PATTERNS
    shared_pools: tuple[str, ...] = ()
    link_dirs: tuple[str, ...] = LINK_DIRS
    resolve_under: tuple[str, ...] = RESOLVE_UNDER


def normal_path(path: str) -> str:
    """``path`` with ``//``, ``.``, ``..`` and trailing ``/`` resolved as text
    (``'//dev/./etherd//e1.2/'`` -> ``'/dev/etherd/e1.2'``); '' stays ''."""
    if not path:
        return path
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("/") else norm


def iscsi_id(target: str, lun: int) -> str:
    """The id of LUN ``lun`` of iSCSI target ``target`` (an iqn./eui./naa. name)."""
    name = target.lower()
    if not _ISCSI_NAME.match(name) or len(name.encode()) > MAX_ISCSI_NAME:
        raise DiskIdError(f"{target!r} is not an iSCSI target name (iqn./eui./naa.)")
    if not 0 <= lun <= MAX_LUN:
        raise DiskIdError(f"LUN {lun} is out of range (0-{MAX_LUN})")
    return f"iscsi-{name}-lun{lun}"


_ISCSI_VOLUME = re.compile(r"^iscsi-(.+)-lun(\d+)\Z")


def iscsi_lun(volume: str) -> tuple[str, int] | None:
    """The (target, LUN) a volume id of :func:`iscsi_id` names; None for any other id."""
    match = _ISCSI_VOLUME.match(volume)
    if match is None:
        return None
    target, lun = match.group(1), int(match.group(2))
    try:
        return (target, lun) if iscsi_id(target, lun) == volume else None
    except DiskIdError:
        return None


def sam_lun(text: str) -> int:
    """A LUN as ``/dev/disk/by-path`` writes it: decimal below 256, else the 8-byte SAM
    address in hex (udev's ``lun-0x...``), of which one-level peripheral and flat space
    addresses are understood."""
    if not text.startswith("0x"):
        return int(text)
    raw = bytes.fromhex(text[2:])
    method, high = raw[0] >> 6, raw[0] & 0x3F
    if any(raw[2:]) or method not in (0, 1) or (method == 0 and high):
        raise DiskIdError(f"LUN address {text} is not a one-level peripheral or flat "
                          "address")
    return raw[1] if method == 0 else high << 8 | raw[1]


def lun_id(name: str) -> str | None:
    """The LUN id a device name carries (``name`` normalised), None when it names none:
    ``/dev/disk/by-path/...-iscsi-NAME-lun-N`` (or any path ending ``-iscsi-iqn...``)
    -> ``iscsi-NAME-lunN``,
    ``/dev/disk/by-id/wwn-0xHEX``, ``scsi-3HEX`` or ``dm-uuid-mpath-3HEX`` (a multipath
    map of it) -> ``wwn-0xHEX``,
    ``/dev/etherd/eS.P`` -> ``aoe-eS.P`` (partitions: their disk's id)."""
    aoe = _AOE.match(name)
    if aoe:
        return f"aoe-e{aoe.group(1)}.{aoe.group(2)}"
    iscsi = _ISCSI_IN_PATH.search(name)
    if iscsi and (name.startswith("/dev/disk/by-path/")
                  or _ISCSI_NAME.match(iscsi.group(1).lower())):
        tail = _ISCSI_TAIL.match(iscsi.group(1))
        if tail is None:
            raise DiskIdError("no '-lun-N' after the iSCSI target name")
        return iscsi_id(tail.group(1), sam_lun(tail.group(2)))
    wwn = _BY_ID_WWN.match(name)
    if wwn:
        hex_ = wwn.group(1).lower()
        if not _WWN_HEX.match(hex_):
            raise DiskIdError(f"{wwn.group(1)!r} is not a WWN (16 or 32 hex digits)")
        return f"wwn-0x{hex_}"
    return None


#: LUN id kinds, most preferred first: the one every host can name the LUN by wins
#: (an iSCSI network disk has no WWN in its XML, so IQN+LUN comes before the WWN).
_PREFERENCE = ("iscsi-", "wwn-", "aoe-")


def names_lun(disk: Disk) -> bool:
    """True for a network disk that names an iSCSI LUN: ``protocol='iscsi'``, or an NBD
    export named ``TARGET-IQN/N`` (an iqn./eui./naa. name before the ``/``: how a host's
    initiator serves its LUNs to its guests, e.g. the lab's, :mod:`gridtool.lab.initiator`)."""
    if disk.protocol == "iscsi":
        return True
    return disk.protocol == "nbd" and disk.source.lower().startswith(_ISCSI_PREFIXES)


def network_id(disk: Disk) -> str:
    """The id of a network disk that names a LUN (:func:`names_lun`), from ``<source
    name='TARGET/LUN'>`` alone (libvirt: no ``/LUN`` means LUN 0); the portal or socket
    (``<host>``) is no part of it."""
    target, slash, lun = disk.source.partition("/")
    if slash and not lun.isdecimal():
        raise DiskIdError(f"LUN {lun!r} is not a number" if lun else "the LUN after '/' "
                          "is empty")
    return iscsi_id(target, int(lun) if slash else 0)


def volume_id(disk: Disk, aliases: Iterable[str] = (), path: str | None = None) -> str:
    """The volume id of a shared ``disk`` (its fence key's name): the LUN identity of its
    source or of any of this host's ``aliases`` for it (most preferred kind, then the
    least), else ``path-`` and ``path`` (the name that made it shared, see
    :func:`shared_names`; default: its source), normalised. DiskIdError when it cannot be
    made."""
    if names_lun(disk):
        return network_id(disk)
    if disk.kind == "network":
        return "path-" + quote(disk.source.strip("/"), safe="-._~")
    source = normal_path(disk.source)
    found = {i for i in (_alias_id(n) for n in map(normal_path, aliases)) if i}
    own = lun_id(source)
    found |= {own} if own else set()
    for kind in _PREFERENCE:
        ids = sorted(i for i in found if i.startswith(kind))
        if ids:
            return ids[0]
    return "path-" + quote(normal_path(path or source).strip("/"), safe="-._~")


def _alias_id(name: str) -> str | None:
    """:func:`lun_id` of another name of the disk, an error saying which name it was."""
    try:
        return lun_id(name)
    except DiskIdError as exc:
        raise DiskIdError(f"its alias {name!r}: {exc}") from None


def shared_names(disk: Disk, rules: SharedStorageRules, aliases: Iterable[str] = ()
                 ) -> list[str]:
    """The names of ``disk`` (normalised) that a shared pattern matches: its source first,
    then its ``aliases``, sorted."""
    own = normal_path(disk.source)
    others = sorted({normal_path(a) for a in aliases} - {own})
    return [n for n in (own, *others) if any(fnmatch.fnmatchcase(n, p) for p in rules.patterns)]


def is_shared(disk: Disk, rules: SharedStorageRules, aliases: Iterable[str] = ()) -> bool:
    """True when the disk's source is on storage several hosts can see: ``<shareable/>``,
    a network disk that names an iSCSI LUN (:func:`names_lun`), a volume of a shared
    pool, or a source (normalised) or alias that a shared pattern matches."""
    if disk.shareable or names_lun(disk):
        return True
    if disk.kind == "volume":
        pool = disk.source.partition("/")[0]
        return pool in rules.shared_pools
    return bool(shared_names(disk, rules, aliases))


def classify(disk: Disk, rules: SharedStorageRules, aliases: Iterable[str] = ()) -> Disk:
    """The disk with ``shared`` and ``volume`` filled in; DiskIdError (naming the disk)
    for a shared disk whose volume id cannot be made. A disk shared only through an alias
    (a link that a pattern matches) is named after that alias."""
    aliases = tuple(aliases)
    if not is_shared(disk, rules, aliases):
        return disk
    names = shared_names(disk, rules, aliases) if disk.kind != "volume" else []
    try:
        volume = volume_id(disk, aliases, names[0] if names else None)
    except DiskIdError as exc:
        raise DiskIdError(f"disk {disk.target or '?'} ({disk.source!r}): {exc}") from None
    return replace(disk, shared=True, volume=volume)
