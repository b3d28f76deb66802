"""An independent "never two running" checker: watch every host's libvirt directly (not
the registry) and record any instant at which one guest runs on two hosts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import libvirt


class DoubleRunChecker:
    """Samples every host every ``interval`` seconds on its own thread.

    ``overlaps`` lists ``(uuid, hosts, when)`` for each sample where a guest ran on
    more than one host; ``overlap_seconds`` adds up the sampled time they did.
    """

    def __init__(self, conns: Callable[[], dict[str, libvirt.virConnect]],
                 interval: float = 0.02) -> None:
        self._conns = conns
        self.interval = interval
        self.overlaps: list[tuple[str, tuple[str, ...], float]] = []
        self.overlap_seconds = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="double-run-checker",
                                        daemon=True)

    def __enter__(self) -> DoubleRunChecker:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> dict[str, list[str]]:
        """Running guests: uuid -> hosts running it."""
        running: dict[str, list[str]] = {}
        for host, conn in self._conns().items():
            try:
                doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
            except libvirt.libvirtError:
                continue  # a host being reset: nothing of it can run
            for dom in doms:
                running.setdefault(dom.UUIDString(), []).append(host)
        return running

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            doubles = {u: h for u, h in self.sample().items() if len(h) > 1}
            self.samples += 1
            for uuid, hosts in doubles.items():
                self.overlaps.append((uuid, tuple(sorted(hosts)), time.time()))
            if doubles:
                self.overlap_seconds += now - last
            last = now
