"""Queue-fed pools, pure: a broker's queue readings turned into the pool's load reports.

Functional core of ``gridtool pool feed`` (no broker, no etcd, no clock): the shell
(:mod:`gridtool.pools.feeder`) reads the queue once per sampling period through an
adapter (:mod:`gridtool.pools.brokers`) and calls :func:`to_sample` with the previous
and the current :class:`Reading`.

Rules:

- A reading has the queue's ``depth`` (jobs waiting, not yet taken) and, where the
  broker knows them, ``in_service`` (taken, not acknowledged: a Redis stream group's
  pending entries) and ``added`` (the queue's cumulative arrivals counter: a stream's
  entries-added). Negative numbers are refused (:class:`ValueError`).
- With ``added`` known: arrivals are its increase, and completions what arrived and is
  neither waiting nor in service any more (``Δadded - Δdepth - Δin_service``).
  Without it (Redis lists, AMQP queues: depth only), arrivals are the backlog's growth,
  a lower bound, and completions are unknown (0); the flex policy then scales on the
  backlog (its queue-depth term) rather than on a measured rate.
- Busy seconds, with ``in_service`` known: the mean number in service over the
  interval times its length (one job per worker), so the service time is measured.
- Missing data never moves the pool: on a failed read, a counter that went backwards
  (the queue was deleted and made again), or a zero-length interval, no report is
  written (:func:`to_sample` returns None), and a pool without reports holds its size
  (:func:`gridtool.pools.rules.flex_step`). After a failed read the next good reading is
  a new baseline, so no report spans a gap.
- Reports come every period and, between them, at once on a surge: the feeder reads the
  queue every ``probe`` seconds (one LLEN, XINFO or passive declare), and when the
  arrivals since the last report exceed what that report's rate predicts by more than
  :data:`SURGE_Z` sd of Poisson noise, or those since the previous reading by more than
  :data:`SURGE_LATEST_Z` sd (:func:`surge`, :func:`report_kind`) it writes the
  report at once: the calm up to its last quiet reading, then the surge from there,
  marked ``surge`` (:func:`reports`), and the leading manager runs the pool's round at
  once. A drop (arrivals since the last report short of its rate by :data:`SURGE_Z` sd,
  :func:`drop`: a burst is over) is reported at once the same way, marked ``surge``
  too (the field means "the load changed here"), so the pool gives the burst's workers
  back within seconds, not at the period's end. The simulator
  (:mod:`gridtool.pools.queuesim`, ``SimConfig.probe``) applies the same rule. The
  next period report covers the time since the surge's report.
- The feeder writes a heartbeat, :class:`FeedStatus`, with each report and failure;
  ``gridtool check`` reports ``POOL_FEED_STALE`` when its last good reading is older than
  :data:`STALE_PERIODS` periods (:func:`stale`).
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, replace

from gridtool.pools.flex import LoadSample

SCHEMES = ("redis", "amqp")
DEFAULT_PORTS = {"redis": 6379, "amqp": 5672}
#: A feed whose last good reading is older than this many periods is stale.
STALE_PERIODS = 3


# --- the broker's address ---------------------------------------------------------------


@dataclass(frozen=True)
class BrokerURL:
    """``redis://[:PASSWORD@]HOST[:PORT][/DB]`` or ``amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST]``."""

    scheme: str
    host: str
    port: int
    db: int = 0  # redis
    vhost: str = "/"  # amqp
    user: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        """The URL without its password (for logs and the heartbeat record)."""
        auth = f"{self.user}@" if self.user else ""
        tail = f"/{self.db}" if self.scheme == "redis" else \
            f"/{urllib.parse.quote(self.vhost, safe='')}"
        return f"{self.scheme}://{auth}{self.host}:{self.port}{tail}"


def parse_url(url: str) -> BrokerURL:
    """A broker URL, or ValueError with a one-line reason."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed broker URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"broker URL {url!r}: scheme must be one of "
                         f"{', '.join(s + '://' for s in SCHEMES)}")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r}: no query or fragment expected")
    path = parts.path.removeprefix("/")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    common = dict(scheme=scheme, host=parts.hostname, port=port or DEFAULT_PORTS[scheme],
                  user=user, password=password)
    if scheme == "redis":
        if path and not path.isdigit():
            raise ValueError(f"broker URL {url!r}: the path must be a database number")
        return BrokerURL(**common, db=int(path or 0))  # type: ignore[arg-type]
    return BrokerURL(**common, vhost=urllib.parse.unquote(path) if path else "/")  # type: ignore[arg-type]


# --- readings and reports ---------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """The queue at one instant (``at``: Unix time)."""

    at: float
    depth: int
    in_service: int | None = None
    added: int | None = None
    consumers: int | None = None

    def __post_init__(self) -> None:
        counts = [c for c in (self.depth, self.in_service, self.added, self.consumers)
                  if c is not None]
        if min(counts) < 0:
            raise ValueError(f"the broker reported a negative count ({self.describe()})")

    def describe(self) -> str:
        """key=value text of the numbers (for logs)."""
        return " ".join(f"{k}={v}" for k, v in (
            ("depth", self.depth), ("in_service", self.in_service), ("added", self.added),
            ("consumers", self.consumers)) if v is not None)


def to_sample(prev: Reading, cur: Reading, source: str) -> LoadSample | None:
    """The load report for ``(prev.at, cur.at]``; None when the readings cannot give one
    (no time passed, or a counter went backwards: the queue was reset)."""
    interval = cur.at - prev.at
    if interval <= 0:
        return None
    known_service = prev.in_service is not None and cur.in_service is not None
    held = (cur.depth - prev.depth) + (
        (cur.in_service or 0) - (prev.in_service or 0) if known_service else 0)
    if prev.added is not None and cur.added is not None:
        arrivals = cur.added - prev.added
        completions = arrivals - held
        if arrivals < 0 or completions < 0:
            return None
    else:
        arrivals, completions = max(0, held), 0
    busy = ((prev.in_service or 0) + (cur.in_service or 0)) / 2 * interval \
        if known_service else None
    return LoadSample(timestamp=cur.at, interval=interval, arrivals=arrivals,
                      completions=completions, busy_seconds=busy, queue_depth=cur.depth,
                      source=source)


# --- when to report ------------------------------------------------------------------------

#: Sd of Poisson noise by which arrivals must exceed the last report's rate to report now.
SURGE_Z = 4.0
#: ... and at least this many jobs beyond it.
SURGE_JOBS = 5
#: Sd for the latest reading's own interval (one test each reading: 4 sd there gave the
#: steady sample trace false surges, 1.21x the clairvoyant instead of 1.08x; from 5 sd
#: on, every sample trace is as without the test).
SURGE_LATEST_Z = 5.0
#: ``report_kind``: the period is over (its regular report), a surge or a drop (both
#: reported at once, marked ``surge``: the load changed, its rate starts anew there).
PERIOD, SURGE, DROP = "period", "surge", "drop"


def surge(last: LoadSample, arrivals: int, elapsed: float, *, z: float = SURGE_Z,
          jobs: int = SURGE_JOBS) -> bool:
    """A surge: the ``arrivals`` counted in the ``elapsed`` seconds since the ``last``
    report exceed what its rate predicts by more than ``z`` sd of Poisson noise (of the
    two counts) and more than ``jobs``. The one rule of the feeder and the simulator."""
    return _beyond(last, arrivals, elapsed, z, jobs) > 0


def drop(last: LoadSample, arrivals: int, elapsed: float, *, z: float = SURGE_Z,
         jobs: int = SURGE_JOBS) -> bool:
    """A drop, :func:`surge`'s mirror: the ``arrivals`` fall short of what the ``last``
    report's rate predicts by more than ``z`` sd of Poisson noise and more than ``jobs``
    (the end of a burst, seen at once instead of at the period's end)."""
    return _beyond(last, arrivals, elapsed, z, jobs) < 0


def _beyond(last: LoadSample, arrivals: int, elapsed: float, z: float, jobs: int) -> int:
    """+1 (-1) when ``arrivals`` in ``elapsed`` s lie significantly above (below) the
    ``last`` report's rate, 0 within its noise."""
    if elapsed <= 0:
        return 0
    expected = last.arrival_rate * elapsed
    noise = math.sqrt(expected * (1 + elapsed / last.interval))
    excess = arrivals - expected
    return int(math.copysign(1, excess)) if abs(excess) > max(jobs, z * noise) else 0


def report_kind(last: LoadSample | None, sample: LoadSample, period_over: bool,
                latest: LoadSample | None = None) -> str:
    """What a reading makes of ``sample`` (the queue since the last report) and
    ``latest`` (the queue since the last quiet reading, the previous one):
    :data:`PERIOD` once the period is over, :data:`SURGE` when either is a :func:`surge`
    against the ``last`` report (the latest reading at :data:`SURGE_LATEST_Z`),
    :data:`DROP` when ``sample`` is a :func:`drop` against it, "" (no report yet)
    otherwise. (Tested on the time since the report alone, a step a few seconds after it
    was diluted by the calm before it: seen 3-4 s late in the middle of a period; the
    latest reading sees it sooner. A drop is tested on the time since the report only:
    one second of a lower rate is within 5 sd of the higher one.)"""
    if period_over:
        return PERIOD
    if last is None:
        return ""
    if surge(last, sample.arrivals, sample.interval) or (latest is not None and surge(
            last, latest.arrivals, latest.interval, z=SURGE_LATEST_Z)):
        return SURGE
    return DROP if drop(last, sample.arrivals, sample.interval) else ""


def reports(prev: Reading, calm: Reading | None, cur: Reading, kind: str,
            source: str) -> list[LoadSample]:
    """The reports a reading of ``kind`` (:func:`report_kind`) writes, oldest first: the
    period's, from ``prev`` (the last report's reading) to ``cur``; on a surge, the calm
    up to ``calm`` (the last reading that showed none) and the surge from there, marked
    ``surge`` (so its rate is the surge's, not diluted by the calm before it:
    :func:`gridtool.pools.rules.aggregate` starts a reporter's rate anew at it); on a
    drop, the time since ``prev``, marked ``surge`` likewise (the rate before it is the
    burst it ended, and the manager decides on it at once)."""
    if not kind:
        return []
    if kind == SURGE and calm is not None and prev.at < calm.at < cur.at:
        quiet, part = to_sample(prev, calm, source), to_sample(calm, cur, source)
        if quiet is not None and part is not None:
            return [quiet, replace(part, surge=True)]
    whole = to_sample(prev, cur, source)
    return [] if whole is None else [replace(whole, surge=kind in (SURGE, DROP))]


# --- the heartbeat ------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedStatus:
    """``pools/<name>/feed``: the feeder's heartbeat, written every period.

    ``last_ok``: the last good reading (0: none yet); ``failures``: failed reads since;
    ``error``: the last failure's one-line reason ("" after a good reading).
    """

    pool: str
    broker: str
    queue: str
    period: float
    source: str
    started: float
    last_attempt: float = 0.0
    last_ok: float = 0.0
    failures: int = 0
    error: str = ""
    depth: int | None = None
    reports: int = 0


def succeeded(status: FeedStatus, reading: Reading, reported: bool) -> FeedStatus:
    return replace(status, last_attempt=reading.at, last_ok=reading.at, failures=0,
                   error="", depth=reading.depth, reports=status.reports + int(reported))


def failed(status: FeedStatus, error: str, now: float) -> FeedStatus:
    return replace(status, last_attempt=now, failures=status.failures + 1, error=error)


def stale(status: FeedStatus, now: float) -> float | None:
    """Seconds since the feed last read its queue, when that is more than
    :data:`STALE_PERIODS` periods (None while it is fresh)."""
    since = status.last_ok or status.started
    age = now - since
    return age if age > STALE_PERIODS * status.period else None
