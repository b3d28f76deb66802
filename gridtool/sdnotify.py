"""systemd's service notification (sd_notify(3)) for ``Type=notify`` units.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). Written here in a few
lines instead of depending on a library: Debian's ``python3-systemd`` is a C extension
for the system Python only (the venv install could not use it), and the PyPI
``sdnotify`` package is unmaintained since 2017; neither adds anything to ``sendto``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. A failed send is
ignored: the notification is a courtesy to the supervisor, never a reason to stop.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3)
    advises petting at least that often), or None when the watchdog is off or meant for
    another process (``$WATCHDOG_PID``)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdecimal() or int(usec) == 0:
        return None
    if pid and (not pid.isdecimal() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def socket_address(env: Mapping[str, str]) -> str | None:
    """The notification socket's address (``@name`` -> abstract ``\\0name``), or None."""
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    return path if path.startswith("/") else None


class Notifier:
    """Sends READY, WATCHDOG and STOPPING to systemd, when it asked for them."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        self.address = socket_address(env)
        self.interval = watchdog_interval(env) if self.address else None
        self._monotonic = monotonic
        self._last_pet = float("-inf")
        self.ready_sent = False

    def send(self, *lines: str) -> bool:
        """One datagram of ``lines``; False when there is no socket or the send failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        """The service is up (sent once; later calls do nothing)."""
        if not self.ready_sent:
            self.ready_sent = self.send("READY=1", f"STATUS={status}")

    def pet(self) -> None:
        """``WATCHDOG=1``, at most every quarter of the watchdog timeout (cheap to call
        on every turn of a loop)."""
        if self.interval is None:
            return
        now = self._monotonic()
        if now - self._last_pet >= self.interval / 2:
            self._last_pet = now
            self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")
