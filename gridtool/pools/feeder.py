"""``gridtool pool feed``'s loop: read a broker's queue, write load reports.

The shell around :mod:`gridtool.pools.feed`: it reads the queue through a
:class:`gridtool.pools.brokers.QueueSource` every ``probe`` seconds (every ``period``
when ``probe`` is 0) and writes a load report (``pools/<name>/samples/``, as ``pool
report`` writes them, source ``feed:<queue>``) at each period's end, and at once when a
reading shows a surge (:func:`gridtool.pools.feed.report_kind`; the report is marked
``surge``, and the leading manager runs the pool's round at once). Each report covers the
time since the one before. With each report it writes its heartbeat
(``pools/<name>/feed``). A failed read writes
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
from gridtool.pools.flex import LoadSample
from gridtool.registry.keys import Keys
from gridtool.registry.records import encode
from gridtool.registry.store import Store

log = logging.getLogger("gridtool.pools.feeder")

#: The first retry's delay after a failed read (seconds; it doubles up to one period).
FIRST_RETRY = 1.0
#: Seconds between readings: a surge is reported this soon (``pool feed --probe``).
DEFAULT_PROBE = 1.0


class Feeder:
    """Feeds one pool from one queue (``step`` once, or ``run`` until stopped)."""

    def __init__(self, store: Store, keys: Keys, pool: str, source: QueueSource, *,
                 broker: str, queue: str, period: float, probe: float = DEFAULT_PROBE,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.keys, self.pool, self.source = store, keys, pool, source
        self.period, self.probe, self.clock = period, min(probe, period), clock
        self.name = f"feed:{queue}"
        self.backoff = Backoff(first=min(FIRST_RETRY, period), limit=period)
        self.prev: Reading | None = None  # the reading the next report starts from
        self.last: LoadSample | None = None  # the last report written
        self.calm: Reading | None = None  # the last reading since ``prev`` with no surge
        self.due = 0.0  # when the period's report is due (the reading's clock)
        self.error: GridtoolError | None = None  # the last read's failure (None: it worked)
        self.status = FeedStatus(pool, broker, queue, period, pools.default_source(),
                                 started=clock())

    def step(self) -> float:
        """One reading (and a report when one is due); the seconds to wait before the
        next reading."""
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
        prev = self.prev
        sample = None if prev is None else feed.to_sample(prev, reading, self.name)
        if prev is None or sample is None:  # a new baseline: the first, after a gap or reset
            if prev is not None:
                log.warning("event=pool_feed_reset pool=%s queue=%s %s", self.pool,
                            self.status.queue, reading.describe())
            self.prev, self.calm, self.due = reading, None, reading.at + self.period
            self.status = feed.succeeded(self.status, reading, False)
            self._heartbeat()
            return self._wait()
        latest = None if self.calm is None else feed.to_sample(self.calm, reading, self.name)
        kind = feed.report_kind(self.last, sample, reading.at >= self.due - self._slack,
                                latest)
        if not kind:
            self.calm = reading
            self.status = feed.succeeded(self.status, reading, False)
            return self._wait()
        written = feed.reports(prev, self.calm, reading, kind, self.name)
        reported = all([self._report(s) for s in written])
        if kind == feed.PERIOD:
            self.due = max(self.due + self.period, reading.at + self._slack)
        self.prev, self.last, self.calm = reading, written[-1], None
        self.status = feed.succeeded(self.status, reading, reported)
        self._heartbeat()
        return self._wait()

    @property
    def _slack(self) -> float:
        """A reading this close before the period's end is at its end (timer jitter)."""
        return min(0.05, self.period / 10)

    def _wait(self) -> float:
        """Seconds to the next reading: a probe's, or the period report's if sooner."""
        until_due = max(0.0, self.due - self.clock())
        return min(until_due, self.probe) if self.probe > 0 else until_due

    def _report(self, sample: LoadSample) -> bool:
        """Write ``sample`` as the pool's load report (False: the registry did not answer)."""
        try:
            pools.report(self.store, self.keys, self.pool, arrivals=sample.arrivals,
                         completions=sample.completions, busy_seconds=sample.busy_seconds,
                         queue_depth=sample.queue_depth, interval=sample.interval,
                         source=self.name, timestamp=sample.timestamp, surge=sample.surge)
        except RegistryUnavailable as exc:
            log.warning("event=pool_feed_report_lost pool=%s error=%s", self.pool, exc)
            return False
        if sample.surge:
            log.info("event=pool_feed_surge pool=%s queue=%s arrivals=%d interval=%.1f "
                     "depth=%d", self.pool, self.status.queue, sample.arrivals,
                     sample.interval, sample.queue_depth)
        return True

    def run(self, stop: threading.Event) -> None:
        """Read and report until ``stop`` (then delete the heartbeat)."""
        log.info("event=pool_feed_start pool=%s broker=%s queue=%s period=%g probe=%g",
                 self.pool, self.status.broker, self.status.queue, self.period, self.probe)
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
