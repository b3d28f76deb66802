"""Which disks live on shared storage, and their stable volume ids (pure)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from urllib.parse import quote

from gridtool.registry.model import Disk

DEFAULT_SHARED_PATTERNS = ("/dev/etherd/*", "/dev/disk/by-path/*-iscsi-*")

_AOE = re.compile(r"^/dev/etherd/e(\d+)\.(\d+)(p\d+)?$")
_ISCSI_PATH = re.compile(r"-iscsi-(iqn\.[^/]+?)-lun-(\d+)(-part\d+)?$")


@dataclass(frozen=True)
class SharedStorageRules:
    """What counts as shared storage: path patterns and libvirt pools marked shared."""

    patterns: tuple[str, ...] = DEFAULT_SHARED_PATTERNS
    shared_pools: tuple[str, ...] = ()


def volume_id(disk: Disk) -> str:
    """A stable id for a shared volume: AoE shelf.slot, iSCSI IQN+LUN, else the source."""
    aoe = _AOE.match(disk.source)
    if aoe:
        return f"aoe-e{aoe.group(1)}.{aoe.group(2)}"
    iscsi = _ISCSI_PATH.search(disk.source)
    if iscsi:
        return f"iscsi-{iscsi.group(1)}-lun{iscsi.group(2)}"
    if disk.protocol == "iscsi":
        target, _, lun = disk.source.partition("/")
        return f"iscsi-{target}-lun{lun or '0'}"
    return "path-" + quote(disk.source.strip("/"), safe="-._~")


def is_shared(disk: Disk, rules: SharedStorageRules) -> bool:
    """True when the disk's source is on storage several hosts can see."""
    if disk.shareable or disk.protocol == "iscsi":
        return True
    if disk.kind == "volume":
        pool = disk.source.partition("/")[0]
        return pool in rules.shared_pools
    return any(fnmatch.fnmatchcase(disk.source, p) for p in rules.patterns)


def classify(disk: Disk, rules: SharedStorageRules) -> Disk:
    """Return the disk with ``shared`` and ``volume`` filled in."""
    if not is_shared(disk, rules):
        return disk
    return Disk(**{**disk.__dict__, "shared": True, "volume": volume_id(disk)})
