"""``gridtool pool feed``'s loop: read a broker's queue every period, write load reports.

The shell around :mod:`gridtool.pools.feed`: each period it reads the queue through a
:class:`gridtool.pools.brokers.QueueSource`, turns the reading and the previous one into a
load report (``pools/<name>/samples/``, as ``pool report`` writes them, source
``feed:<queue>``) and writes its heartbeat (``pools/<name>/feed``). A failed read writes
no report (the pool holds its size), logs ``event=pool_feed_failed``, records the error
in the heartbeat (``gridtool check``: ``POOL_FEED_STALE`` once it is old) and retries
with jittered exponential backoff up to one period. A registry that does not answer
costs that period's report and nothing else. The pool's deletion ends the loop
(NotFound, exit 3); a clean stop deletes the heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from gridtool.backoff import Backoff
from gridtool.errors import (
    BadReading,
    BrokerUnavailable,
    GridtoolError,
    NotFound,
    QueueGone,
    RegistryUnavailable,
)
from gridtool.pools import feed
from gridtool.pools import shell as pools
from gridtool.pools.brokers import QueueSource
from gridtool.pools.feed import FeedStatus, Reading
from gridtool.registry.keys import Keys
from gridtool.registry.records import encode
from gridtool.registry.store import Store

log = logging.getLogger("gridtool.pools.feeder")

#: The first retry's delay after a failed read (seconds; it doubles up to one period).
FIRST_RETRY = 1.0


class Feeder:
    """Feeds one pool from one queue (``step`` once, or ``run`` until stopped)."""

    def __init__(self, store: Store, keys: Keys, pool: str, source: QueueSource, *,
                 broker: str, queue: str, period: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.keys, self.pool, self.source = store, keys, pool, source
        self.period, self.clock = period, clock
        self.name = f"feed:{queue}"
        self.backoff = Backoff(first=min(FIRST_RETRY, period), limit=period)
        self.prev: Reading | None = None
        self.error: GridtoolError | None = None  # the last read's failure (None: it worked)
        self.status = FeedStatus(pool, broker, queue, period, pools.default_source(),
                                 started=clock())

    def step(self) -> float:
        """One reading (and report); the seconds to wait before the next one."""
        start = self.clock()
        try:
            reading = self.source.read()
        except (BrokerUnavailable, QueueGone, BadReading) as exc:
            # the next good reading is a new baseline: no report spans a gap
            self.error, self.prev = exc, None
            self.status = feed.failed(self.status, str(exc), self.clock())
            delay = self.backoff.next()
            log.warning("event=pool_feed_failed pool=%s queue=%s failures=%d retry_s=%.1f "
                        "error=%s", self.pool, self.status.queue, self.status.failures,
                        delay, exc)
            self._heartbeat()
            return delay
        if self.status.failures:
            log.info("event=pool_feed_recovered pool=%s queue=%s after=%d", self.pool,
                     self.status.queue, self.status.failures)
        self.error = None
        self.backoff.reset()
        sample = None if self.prev is None else feed.to_sample(self.prev, reading, self.name)
        reported = False
        if sample is not None:
            try:
                pools.report(self.store, self.keys, self.pool, arrivals=sample.arrivals,
                             completions=sample.completions,
                             busy_seconds=sample.busy_seconds,
                             queue_depth=sample.queue_depth, interval=sample.interval,
                             source=self.name, timestamp=sample.timestamp)
                reported = True
            except RegistryUnavailable as exc:
                log.warning("event=pool_feed_report_lost pool=%s error=%s", self.pool, exc)
        elif self.prev is not None:
            log.warning("event=pool_feed_reset pool=%s queue=%s %s", self.pool,
                        self.status.queue, reading.describe())
        self.prev = reading
        self.status = feed.succeeded(self.status, reading, reported)
        self._heartbeat()
        return max(0.0, self.period - (self.clock() - start))

    def run(self, stop: threading.Event) -> None:
        """Step every period until ``stop`` (then delete the heartbeat)."""
        log.info("event=pool_feed_start pool=%s broker=%s queue=%s period=%g", self.pool,
                 self.status.broker, self.status.queue, self.period)
        try:
            while not stop.is_set():
                stop.wait(self.step())
        finally:
            self.source.close()
            with contextlib.suppress(RegistryUnavailable):
                self.store.delete(self.keys.pool_feed(self.pool))
            log.info("event=pool_feed_stop pool=%s", self.pool)

    def _heartbeat(self) -> None:
        """Write the heartbeat; NotFound once the pool is gone (the loop ends)."""
        try:
            if self.store.get(self.keys.pool(self.pool)) is None:
                raise NotFound(f"unknown pool {self.pool!r}")
            self.store.put(self.keys.pool_feed(self.pool), encode(self.status))
        except RegistryUnavailable as exc:
            log.warning("event=pool_feed_heartbeat_lost pool=%s error=%s", self.pool, exc)
