"""The lab's AoE targets: Debian's ``vblade``, one process per LUN, on the lab's L2
segment (:mod:`gridtool.lab.segment`), bound to its bridge inside the segment's namespace.

LUN ``n`` is AoE address shelf.slot ``SHELF.n``, backed by ``LAB/shared/aoe-eSHELF.n.img``;
a dom0 that loaded ``aoe`` on its segment NIC sees it as ``/dev/etherd/eSHELF.n``, which
:mod:`gridtool.domains.storage` maps to the volume id ``aoe-eSHELF.n``. AoE has no
reservations: an AoE guest is fenced by time (its host's lease and self-fence), never at
the storage (docs/architecture.md, "Shared storage from the dom0 kernel").
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gridtool.lab import segment as lab_segment
from gridtool.lab.procs import LabError, cmdline, spawn, stop_pid, wait_for

SHELF = 0
#: An AoE LUN's size unless told.
LUN_MIB = 16
START_TIMEOUT = 10.0


@dataclass
class AoeTargets:
    """The lab's vblades: which LUNs, their files, their PIDs (by slot)."""

    directory: str  # LAB/shared
    luns: int
    size_mb: int = LUN_MIB
    shelf: int = SHELF
    pids: dict[int, int] = field(default_factory=dict)

    def slots(self) -> list[int]:
        return list(range(1, self.luns + 1))

    def lun_path(self, slot: int) -> Path:
        return Path(self.directory, f"aoe-e{self.shelf}.{slot}.img")

    def device(self, slot: int) -> str:
        """The LUN as a dom0 kernel names it."""
        return f"/dev/etherd/e{self.shelf}.{slot}"

    def log(self, slot: int) -> Path:
        return Path(self.directory, f"vblade-e{self.shelf}.{slot}.log")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AoeTargets:
        return cls(data["directory"], int(data["luns"]), int(data.get("size_mb", LUN_MIB)),
                   int(data.get("shelf", SHELF)),
                   {int(k): int(v) for k, v in data.get("pids", {}).items()})


def create(directory: Path, luns: int = 1, size_mb: int = LUN_MIB,
           shelf: int = SHELF) -> AoeTargets:
    """A description of ``luns`` AoE LUNs backed by files under ``directory``."""
    if luns < 1 or size_mb < 1:
        raise LabError("need at least one AoE LUN of at least 1 MiB")
    if not 0 <= shelf < 0xFFFF or luns > 0xFE:
        raise LabError("AoE shelf must be 0..65534 and at most 254 slots")
    return AoeTargets(str(directory), luns, size_mb, shelf)


def start(targets: AoeTargets, seg: lab_segment.Segment) -> AoeTargets:
    """Create the missing LUN files and start a vblade per LUN that is not running."""
    vblade = shutil.which("vblade") or "/usr/sbin/vblade"
    if not Path(vblade).exists():
        raise LabError("vblade is not installed (apt-get install vblade)")
    Path(targets.directory).mkdir(parents=True, exist_ok=True)
    for slot in targets.slots():
        path = targets.lun_path(slot)
        if not path.exists():
            with path.open("wb") as fh:
                fh.truncate(targets.size_mb << 20)
        if not alive(targets, slot):
            _start_one(targets, slot, vblade, seg)
    return targets


def _start_one(targets: AoeTargets, slot: int, vblade: str, seg: lab_segment.Segment) -> None:
    log, name = targets.log(slot), f"e{targets.shelf}.{slot}"
    log.unlink(missing_ok=True)
    proc = spawn(seg.exec_argv([vblade, str(targets.shelf), str(slot), lab_segment.BRIDGE,
                                str(targets.lun_path(slot))]), log)
    targets.pids[slot] = proc.pid
    # vblade says "pid N: eS.P, SECTORS sectors" once it has the file and the interface
    wait_for(lambda: f"{name}," in _text(log), START_TIMEOUT, f"vblade {name} (log {log})",
             alive=lambda: proc.poll() is None)


def alive(targets: AoeTargets, slot: int) -> bool:
    return str(targets.lun_path(slot)) in cmdline(targets.pids.get(slot, 0))


def stop(targets: AoeTargets) -> list[str]:
    """Stop every vblade of ``targets``; the AoE addresses of those that were running."""
    return [f"e{targets.shelf}.{slot}" for slot in targets.slots()
            if stop_pid(targets.pids.get(slot), str(targets.lun_path(slot)), timeout=3.0)]


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
