"""An independent "never two running" checker: watch every host's libvirt directly (not
the registry) and record any instant at which one guest runs on two hosts.

A sample in which some host could not be read (its libvirt answered an error, a QEMU
pid file could not be read) cannot show an overlap on that host: it is counted as
*unknown*, not as "nothing runs there". Past ``MAX_UNKNOWN_FRACTION`` of the samples the
checker was too blind for its "0 overlaps" to mean anything, and the run fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import libvirt

#: At most 1 % of the samples may be unknown. The chaos harness keeps every libvirtd up
#: (a watchdog "reset" destroys the guests, not the daemon), so an unreadable host is an
#: accident of a loaded machine, not a fault the run injects: measured 0 in the CI tier.
#: 1 % of a 30 samples/s sampler is one blind sample every ~3 s on average, each shorter
#: than any restart the fencing protocol allows (lease TTL >= 1 s).
MAX_UNKNOWN_FRACTION = 0.01


class Unknown(Exception):
    """What runs on a host cannot be told in this sample."""


class DoubleRunChecker:
    """Samples every host every ``interval`` seconds on its own thread.

    ``overlaps`` lists ``(uuid, hosts, when)`` for each sample where a guest ran on
    more than one host; ``overlap_seconds`` adds up the sampled time they did.
    ``samples`` counts the samples of the thread, ``unknown`` those in which some host
    could not be read (``unknown_detail``: the first few reasons), ``max_gap`` is the
    longest time between two samples; ``elapsed`` the sampling time so far.
    """

    DETAIL = 20  # reasons kept in unknown_detail

    def __init__(self, conns: Callable[[], dict[str, libvirt.virConnect]],
                 interval: float = 0.02) -> None:
        self._conns = conns
        self.interval = interval
        self.overlaps: list[tuple[str, tuple[str, ...], float]] = []
        self.overlap_seconds = 0.0
        self.samples = 0
        self.unknown = 0
        self.unknown_detail: list[str] = []
        self.max_gap = 0.0
        self._started = 0.0
        self._stopped = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="double-run-checker",
                                        daemon=True)

    def __enter__(self) -> DoubleRunChecker:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self._stopped:
            self._stopped = time.monotonic()

    # -- reading the hosts -------------------------------------------------

    def running_on(self, host: str, conn: libvirt.virConnect) -> list[str]:
        """UUIDs of the guests running on ``host``; raises ``Unknown`` when it cannot
        tell (subclasses refine what "running" means)."""
        try:
            return [d.UUIDString()
                    for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)]
        except libvirt.libvirtError as exc:
            raise Unknown(f"libvirt: {exc}") from exc

    def observe(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Running guests (uuid -> hosts running it) and the hosts that could not be
        read (host -> why)."""
        running: dict[str, list[str]] = {}
        unknown: dict[str, str] = {}
        for host, conn in self._conns().items():
            try:
                uuids = self.running_on(host, conn)
            except Unknown as exc:
                unknown[host] = str(exc)
                continue
            for uuid in uuids:
                running.setdefault(uuid, []).append(host)
        return running, unknown

    def sample(self) -> dict[str, list[str]]:
        """Running guests: uuid -> hosts running it (a host that cannot be read shows
        nothing here: callers waiting for a guest to run just wait longer)."""
        return self.observe()[0]

    # -- the numbers -------------------------------------------------------

    @property
    def elapsed(self) -> float:
        if not self._started:
            return 0.0
        return (self._stopped or time.monotonic()) - self._started

    @property
    def rate(self) -> float:
        """Samples per second of the sampling thread so far."""
        return self.samples / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def unknown_fraction(self) -> float:
        return self.unknown / self.samples if self.samples else 0.0

    def assert_safe(self) -> None:
        """No guest ran on two hosts at any sample, and enough samples could tell (a
        blind checker proves nothing)."""
        assert self.overlaps == [], f"double run: {self.overlaps}"
        assert not self.blind, f"the checker was blind: {self.unknown_detail}"

    @property
    def blind(self) -> bool:
        """True when more than ``MAX_UNKNOWN_FRACTION`` of the samples were unknown (or
        there was no sample at all): the overlap count cannot be trusted."""
        return self.samples == 0 or self.unknown_fraction > MAX_UNKNOWN_FRACTION

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            running, unknown = self.observe()
            now = time.monotonic()
            doubles = {u: h for u, h in running.items() if len(h) > 1}
            self.samples += 1
            if unknown:
                self.unknown += 1
                if len(self.unknown_detail) < self.DETAIL:
                    self.unknown_detail.extend(f"{h}: {why}" for h, why in unknown.items())
            for uuid, hosts in doubles.items():
                self.overlaps.append((uuid, tuple(sorted(hosts)), time.time()))
            if doubles:
                self.overlap_seconds += now - last
            self.max_gap = max(self.max_gap, now - last)
            last = now
        self._stopped = time.monotonic()
