"""The host's heartbeat: one small key (``heartbeats/<host>``) rewritten every
:data:`HEARTBEAT_S` under the host's lease, so that the manager can see a host stop before
its lease expires (the lease's keepalives are invisible to other clients). The manager
suspects a host whose heartbeat stops changing only where a fence makes acting on that
safe (:func:`gridtool.fencing.recovery.suspect`). Cost: one put of about 30 bytes per host
per second."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from gridtool import supervise
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.registry.keys import Keys
from gridtool.registry.store import Store

log = logging.getLogger("gridtool.agent")

#: Seconds between two heartbeats.
HEARTBEAT_S = 1.0


class Heartbeat:
    """Writes ``host``'s heartbeat under ``lease()`` (None: no lease, no beat) on its own
    thread until :meth:`stop`."""

    def __init__(self, store: Store, keys: Keys, host: str,
                 lease: Callable[[], int | None], interval: float = HEARTBEAT_S) -> None:
        self.store = store
        self.key = keys.heartbeat(host)
        self.host = host
        self.lease = lease
        self.interval = interval
        self._stop = threading.Event()
        self._failing = False
        self._thread = supervise.thread(self._loop, "heartbeat", logger=log)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> bool:
        """Write one heartbeat; False when there is no lease or the write failed."""
        lease = self.lease()
        if lease is None:
            return False
        body = json.dumps({"v": 1, "at": round(time.time(), 3)}).encode()
        try:
            self.store.put(self.key, body, lease)
        except (RegistryUnavailable, AuthError) as exc:
            if not self._failing:
                log.warning("event=heartbeat_failed host=%s error=%s", self.host,
                            " ".join(str(exc).split()))
            self._failing = True
            return False
        self._failing = False
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.beat()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
