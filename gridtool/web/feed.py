"""The one etcd watch behind every open page: list, watch, probe, and list again after
a fault (the thin shell around ``Mirror``).

Every second the feed asks the endpoints for their status: the answer goes to the check's
findings, and when no endpoint answers, nor a read with retries, the registry is down
(the page's banner). When it answers
again, the feed reads everything afresh and watches from there, so nothing that changed
meanwhile is missed (and a compaction, a "reset" event, is handled the same way).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gridtool import supervise
from gridtool.errors import GridtoolError
from gridtool.registry.mirror import Bounds, Mirror, RegistryState, read_prefixes
from gridtool.registry.store import Event, Store, Watch

log = logging.getLogger("gridtool.web")


class Feed:
    """Keeps ``mirror`` equal to the registry under its prefix, on one thread."""

    def __init__(self, store: Store, mirror: Mirror, interval: float = 1.0,
                 clock: Callable[[], float] = time.time, bounds: Bounds | None = None) -> None:
        self._store = store
        self._mirror = mirror
        self._bounds = bounds
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._resync = threading.Event()
        self._thread = supervise.thread(self._run, "web feed", logger=log)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            watch: Watch | None = None
            try:
                self._resync.clear()
                items, revision = read_prefixes(self._store, self._mirror.prefixes,
                                                self._bounds)
                self._mirror.reset(items, revision)
                watch = self._store.watch_prefix(self._mirror.prefix, self._on_event,
                                                 revision + 1)
                self._probe()
                while not self._stop.wait(self._interval) and not self._resync.is_set():
                    self._probe()
            except GridtoolError as exc:
                self._down(str(exc))
            finally:
                if watch is not None:
                    watch.cancel()
            if not self._resync.is_set():
                self._stop.wait(self._interval)

    def _on_event(self, event: Event) -> None:
        if event.kind == "reset":
            self._resync.set()
        else:
            self._mirror.apply((event,))

    def _probe(self) -> None:
        """Ask every endpoint for its status (the check's findings); when none answers,
        try a read with the store's retries before calling the registry down (it raises
        GridtoolError then)."""
        statuses = tuple(self._store.status())
        if not any(s.healthy for s in statuses):
            self._store.get(self._mirror.prefix)
        self._mirror.set_state(RegistryState(up=True, error="", since=self._since(True),
                                             endpoints=statuses,
                                             alarms=tuple(self._store.alarms())))

    def _down(self, error: str) -> None:
        if self._mirror.state.up or not self._mirror.state.since:
            log.warning("event=web_registry_down error=%s", error)
        self._mirror.set_state(RegistryState(up=False, error=error,
                                             since=self._since(False)))

    def _since(self, up: bool) -> float:
        """When the registry's current up-or-down spell began."""
        state = self._mirror.state
        return state.since if state.up == up and state.since else self._clock()
