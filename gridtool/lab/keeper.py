"""Hold one libvirt connection per lab host, so test-driver state outlives agent restarts,
and run each host's watchdog emulator.

The test driver's ``test:///default`` state lives only while some connection to its
daemon is open; an agent killed by a test must find its guests again on restart.
Run as ``python -m gridtool.lab.keeper READY_FILE HOSTS_JSON``, where HOSTS_JSON is a
list of ``{"name", "uri", "watchdog", "watchdog_timeout"}``; reconnects if a daemon
restarts.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

import libvirt

from gridtool import logsetup
from gridtool.lab.procs import AGENT_MARKER, kill_now
from gridtool.lab.state import read_state
from gridtool.lab.watchdog import WatchdogEmulator


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
    logsetup.configure("INFO")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    hosts = json.loads(sys.argv[2])
    lab = Path(sys.argv[1]).parent

    def kill_agent(name: str) -> None:  # the reset takes the host's agent down too
        for host in (read_state(lab) or {}).get("hosts", []):
            if host["name"] == name:
                kill_now(host.get("agent_pid"), AGENT_MARKER)

    dogs = [WatchdogEmulator(Path(h["watchdog"]), h["watchdog_timeout"], h["uri"],
                             h["name"], on_reset=kill_agent).start()
            for h in hosts if h.get("watchdog")]
    hold(Path(sys.argv[1]), [h["uri"] for h in hosts], stop)
    for dog in dogs:
        dog.stop()


if __name__ == "__main__":
    main()
