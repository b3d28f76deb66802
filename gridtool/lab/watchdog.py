"""A host watchdog for the lab: what /dev/watchdog does on real hardware, for a
simulated host. The agent "pets" a file (touches it); if the pets stop for longer than
the timeout (agent hung or killed) and the file was not magically closed ("V"), the
emulator "resets the host": it destroys every running guest of that host's libvirtd and
calls ``on_reset(host)``, whose job is to kill the host's agent too (a real reset takes
the whole dom0 down; an agent that was only hung must not resume and pet again)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

log = logging.getLogger("gridtool.lab")


class WatchdogEmulator:
    """Watches one host's watchdog file on a thread of its own."""

    def __init__(self, path: Path, timeout: float, uri: str, host: str,
                 on_reset: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._on_reset = on_reset
        self.timeout = timeout
        self.uri = uri
        self.host = host
        self.resets = 0
        self._empty_since: float | None = None  # when the file was first seen empty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watchdog {host}", daemon=True)

    def start(self) -> WatchdogEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _armed_and_expired(self, now: float) -> bool:
        """Armed (not closed with "V") and not petted for longer than the timeout.

        An agent arming a watchdog it had closed long ago rewrites the one byte ("V"
        becomes "\\0"): the file is truncated first, and the truncate keeps the old
        mtime (measured on ext4) until the byte is written. So the content is read
        *before* the mtime (a stat taken before the write paired with the content read
        after it was an old pet on an armed watchdog), and an empty file is a write in
        progress: petted when first seen empty (opening a device pets it), so an agent
        killed in mid-write still gets its host reset. Before, a healthy host was reset
        the instant its agent started an HA guest (found by the chaos harness's
        wrong-reset count; tests/unit/test_lab_watchdog.py)."""
        try:
            content = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except OSError:
            return False  # never opened: not armed
        if content != b"":
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = now
        if content == b"V":
            return False  # closed
        return now - (mtime if self._empty_since is None else self._empty_since) > self.timeout

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            if self._armed_and_expired(time.time()):
                self.reset()

    def reset(self) -> None:
        """Power-cycle the simulated host: every running guest is gone at once."""
        self.resets += 1
        if self._on_reset is not None:
            self._on_reset(self.host)
        destroyed = []
        try:
            conn = libvirt.open(self.uri)
            try:
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    dom.destroy()
                    destroyed.append(dom.name())
            finally:
                conn.close()
        except libvirt.libvirtError as exc:
            log.warning("event=watchdog_reset_failed host=%s error=%s", self.host, exc)
        log.warning(
            "event=watchdog_reset host=%s destroyed=%s", self.host, ",".join(destroyed) or "-"
        )
        # Disarmed until the (restarted) agent opens the watchdog again.
        self.path.write_bytes(b"V")
        os.utime(self.path)
