"""The lab's watchdog emulator (gridtool/lab/watchdog.py): when does it "reset" a host."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gridtool.lab.watchdog import WatchdogEmulator

TIMEOUT = 1.2


def _emulator(path: Path) -> WatchdogEmulator:
    return WatchdogEmulator(path, TIMEOUT, "test:///default", "hv1")


def _aged(path: Path, content: bytes, age: float) -> None:
    path.write_bytes(content)
    then = time.time() - age
    os.utime(path, (then, then))


class _ArmedWhileRead(type(Path())):  # type: ignore[misc]
    """A watchdog file that its agent arms (closed "V" -> "\\0", a fresh mtime) just as the
    emulator reads it: the interleaving that reset a healthy host in a chaos run."""

    def read_bytes(self) -> bytes:
        Path(self).write_bytes(b"\0")  # the agent's first pet after a long "V"
        return super().read_bytes()


def test_armed_and_not_petted_for_the_timeout_resets(tmp_path: Path) -> None:
    path = tmp_path / "watchdog"
    assert not _emulator(path)._armed_and_expired(time.time())  # never opened
    _aged(path, b"\0", TIMEOUT + 1)
    assert _emulator(path)._armed_and_expired(time.time())
    _aged(path, b"\0", TIMEOUT - 0.5)
    assert not _emulator(path)._armed_and_expired(time.time())
    _aged(path, b"V", 100)  # closed: never fires
    assert not _emulator(path)._armed_and_expired(time.time())


def test_arming_a_long_closed_watchdog_while_it_is_read_does_not_reset(tmp_path: Path) -> None:
    """Seen failing before the fix: the mtime of the old "V" paired with the new armed
    content was taken for an armed watchdog not petted for 20 s."""
    path = _ArmedWhileRead(tmp_path / "watchdog")
    _aged(path, b"V", 20)
    assert not _emulator(path)._armed_and_expired(time.time())
    assert path.read_bytes() == b"\0"  # it is armed now, and freshly petted


def test_an_empty_file_is_a_pet_in_progress_then_an_armed_watchdog(tmp_path: Path) -> None:
    """Arming truncates the file before writing its byte, and the truncate keeps the old
    mtime (ext4): empty is petted when first seen, and fires a timeout later if no byte
    ever comes (an agent killed in mid-write)."""
    path = tmp_path / "watchdog"
    _aged(path, b"", 20)
    emulator = _emulator(path)
    now = time.time()
    assert not emulator._armed_and_expired(now)
    assert not emulator._armed_and_expired(now + TIMEOUT - 0.1)
    assert emulator._armed_and_expired(now + TIMEOUT + 0.1)
    _aged(path, b"\0", 0)  # the byte came: its mtime counts again
    assert not emulator._armed_and_expired(time.time())
