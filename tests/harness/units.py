"""``systemd-analyze verify`` of a unit in a throw-away root: this machine's system units
(so ``After=``/``Wants=`` targets resolve) plus the programs the unit runs, each copied
to the path its ``ExecStart=`` names (verify fails when that file is missing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SYSTEM_UNITS = Path("/lib/systemd/system")


def can_verify() -> bool:
    return shutil.which("systemd-analyze") is not None and SYSTEM_UNITS.is_dir()


def verify_unit(root: Path, unit: str, name: str, programs: dict[str, Path] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """Verify ``unit`` (text) as ``/etc/systemd/system/NAME`` in a new root at ``root``,
    with ``programs`` (path in the root -> the file to copy there) installed."""
    shutil.copytree(SYSTEM_UNITS, root / "lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / name).write_text(unit)
    for path, source in (programs or {}).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                           f"/etc/systemd/system/{name}"],
                          capture_output=True, text=True, timeout=60, check=False)
