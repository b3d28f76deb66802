"""Ready markers: a guest whose domain XML carries one (``<metadata><gt:ready
marker=...>``, see :func:`gridtool.clone.rules.set_ready_marker`) is reported ready
(``GuestRecord.ready_at``) once the marker appears in its serial console's file.

The libvirt adapter hands every domain it describes to :meth:`ReadinessWatcher.observe`,
which stamps the record with the time the marker was seen in this run of the guest (a
run is the libvirt domain id: a restart is a new run, watched afresh) and starts
watching a running guest that is not ready yet. A thread reads the new bytes of each
watched file every ``interval`` seconds; when the marker shows up it calls
``on_ready(uuid)`` so the agent writes the guest's record again. Driver-neutral: only
the XML and a local file are read. :class:`MarkerScan` is the pure part.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gridtool import supervise
from gridtool.clone.rules import ready_spec, serial_file
from gridtool.registry.model import GuestRecord

log = logging.getLogger("gridtool.agent")

ACTIVE = frozenset({"running", "paused", "blocked"})
_DOMAIN_ID = re.compile(r"<domain\b[^>]*?\bid=['\"](-?\d+)['\"]")
READ_LIMIT = 1 << 20  # bytes read per file per poll


@dataclass
class MarkerScan:
    """Finds ``marker`` in a file read piece by piece (a marker split between two reads
    is found; a file that shrank is read again from its start)."""

    marker: bytes
    offset: int = 0
    tail: bytes = b""

    def feed(self, data: bytes) -> bool:
        """The next bytes of the file; True once the marker is in what was read."""
        window = self.tail + data
        self.offset += len(data)
        if self.marker in window:
            return True
        keep = len(self.marker) - 1
        self.tail = window[-keep:] if keep else b""
        return False

    def truncated(self, size: int) -> bool:
        """The file is now ``size`` bytes: start over if it shrank (a new boot)."""
        if size >= self.offset:
            return False
        self.offset, self.tail = 0, b""
        return True


@dataclass
class _Guest:
    run: str  # the libvirt domain id of this run
    path: str
    scan: MarkerScan
    ready_at: float = 0.0
    error: str = field(default="", repr=False)


def domain_id(xml: str) -> str:
    """The live domain id in a domain XML ("" when inactive or absent)."""
    found = _DOMAIN_ID.search(xml[:400])
    return found.group(1) if found and found.group(1) != "-1" else ""


class ReadinessWatcher:
    """Watches the serial files of this host's running guests that carry a ready marker."""

    def __init__(self, on_ready: Callable[[str], None], interval: float = 0.1,
                 clock: Callable[[], float] = time.time) -> None:
        self.on_ready, self.interval, self.clock = on_ready, interval, clock
        self._guests: dict[str, _Guest] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ReadinessWatcher:
        self._thread = supervise.thread(self._loop, "readiness", logger=log)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def observe(self, rec: GuestRecord, xml: str) -> GuestRecord:
        """``rec`` with ``ready_at`` of the guest's current run (0.0 when not ready yet or
        not watched); starts watching a running guest that carries a marker."""
        spec = ready_spec(xml) if rec.state in ACTIVE else None
        run = domain_id(xml) if spec else ""
        with self._lock:
            if not spec or not run:
                self._guests.pop(rec.uuid, None)
                return replace(rec, ready_at=0.0) if rec.ready_at else rec
            marker, path = spec
            known = self._guests.get(rec.uuid)
            if known is None or known.run != run or known.path != path:
                known = _Guest(run, path, MarkerScan(marker.encode()))
                self._guests[rec.uuid] = known
                log.info("event=ready_watch guest=%s uuid=%s path=%s", rec.name, rec.uuid, path)
            ready_at = known.ready_at
        return replace(rec, ready_at=ready_at) if ready_at != rec.ready_at else rec

    def retain(self, uuids: set[str] | frozenset[str]) -> None:
        """Forget every guest not in ``uuids`` (the domains libvirt still has)."""
        with self._lock:
            for uuid in set(self._guests) - set(uuids):
                del self._guests[uuid]

    def forget(self, uuid: str) -> None:
        with self._lock:
            self._guests.pop(uuid, None)

    def poll(self) -> list[str]:
        """Read every watched file once; the uuids that just became ready."""
        with self._lock:
            pending = [(u, g) for u, g in self._guests.items() if not g.ready_at]
        became = []
        for uuid, guest in pending:
            if self._check(guest):
                with self._lock:
                    if self._guests.get(uuid) is guest:
                        guest.ready_at = self.clock()
                        became.append(uuid)
        return became

    def _check(self, guest: _Guest) -> bool:
        try:
            with open(guest.path, "rb") as f:
                size = f.seek(0, 2)
                guest.scan.truncated(size)
                f.seek(guest.scan.offset)
                data = f.read(READ_LIMIT)
        except OSError as exc:  # not created yet, or unreadable: say so once
            if str(exc) != guest.error:
                guest.error = str(exc)
                log.debug("event=ready_watch_error path=%s error=%s", guest.path, exc)
            return False
        return bool(data) and guest.scan.feed(data)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for uuid in self.poll():
                log.info("event=guest_ready uuid=%s", uuid)
                self.on_ready(uuid)


# --- alive after a wake (warm pools) ---------------------------------------------------


def console_file(xml: str) -> str:
    """The file a domain's serial console writes to ("" when none, or unreadable XML)."""
    try:
        return serial_file(ET.fromstring(xml))
    except ET.ParseError:
        return ""


def console_size(path: str) -> int:
    """The serial file's size now (-1 when it cannot be read)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def wrote_since(before: int, now: int) -> bool:
    """The console shows output written after a wake: the file grew past ``before``
    bytes, or it was started afresh (a restore reopens a non-appending serial file)
    and holds something again. Before the wake the guest was asleep and wrote
    nothing, so this is the guest alive now, not a stale ready marker."""
    return now > before or 0 < now < before


def wait_console_output(path: str, before: int, timeout: float,
                        interval: float = 0.01) -> float | None:
    """Seconds until the serial file at ``path`` shows new output after a wake
    (``before``: its size just before the wake), None if none within ``timeout``."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        if wrote_since(before, console_size(path)):
            return time.monotonic() - began
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
