"""qemu-io through a lab host initiator's NBD socket: what a guest of that host writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gridtool.lab import initiator
from gridtool.lab import iscsi as lab_iscsi


def qemu_io(directory: Path, command: str, lun: int = 1,
            export: str | None = None) -> subprocess.CompletedProcess:
    """qemu-io on the host's LUN socket, asking for the LUN's export (or ``export``)."""
    sock = initiator.nbd_socket(directory, lun)
    name = f"{lab_iscsi.TARGET_IQN}/{lun}" if export is None else export
    return subprocess.run(["qemu-io", "-f", "raw", "-c", command,
                           f"nbd+unix:///{name}?socket={sock}"],
                          capture_output=True, text=True, timeout=60)
