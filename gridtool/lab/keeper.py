"""Hold one libvirt connection per lab host, so test-driver state outlives agent restarts.

The test driver's ``test:///default`` state lives only while some connection to its
daemon is open; an agent killed by a test must find its guests again on restart.
Run as ``python -m gridtool.lab.keeper READY_FILE URI...``; reconnects if a daemon restarts.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

import libvirt


def hold(ready: Path, uris: list[str], stop: threading.Event) -> None:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conns: dict[str, libvirt.virConnect] = {}
    while not stop.is_set():
        for uri in uris:
            conn = conns.get(uri)
            try:
                if conn is None or not conn.isAlive():
                    conns[uri] = libvirt.open(uri)
                else:
                    conn.getLibVersion()
            except libvirt.libvirtError:
                conns.pop(uri, None)
        if len(conns) == len(uris) and not ready.exists():
            ready.write_text("ready\n")
        stop.wait(1.0)
    for conn in conns.values():
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    hold(Path(sys.argv[1]), sys.argv[2:], stop)


if __name__ == "__main__":
    main()
