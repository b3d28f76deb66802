"""Seeded discrete-event simulation of a flexing worker pool replaying an arrival trace.

The pool is an M/M/c-style FIFO queue whose size ``c`` changes over time: every
``period`` seconds the simulator builds a :class:`~gridtool.pools.flex.LoadSample` and asks a
flex policy for the desired size. Added workers become ready after ``startup_delay``
seconds (clone start-up); removed workers are taken from those still starting, then idle
ones, then busy ones, which finish their job first. Service times are exponential with
mean ``service_time``. Arrival times and service times are drawn up front from ``seed``,
so every policy sees exactly the same jobs (common random numbers).

Trace formats (see :func:`parse_trace`):

CSV
    Header ``start,end,rate`` and one row per segment: Poisson arrivals at ``rate`` per
    second in ``[start, end)``; gaps have no arrivals; ``#`` lines are comments. A
    header ``time`` instead lists explicit arrival timestamps, one per row.
JSON
    ``{"segments": [[start, end, rate], ...]}`` or ``{"arrivals": [t, ...]}``, with an
    optional ``"duration"`` (default: last segment end / last arrival).

A pool may keep a *warm set* (``SimConfig.warm``), as the shipped keeper does
(:func:`gridtool.pools.rules.plan`): a scale-up wakes asleep warm workers first (ready
``wake_delay`` after the decision: a hibernated worker's measured restore), then starts
cold ones (``startup_delay``); the same round refills the set to ``min(warm, max -
desired)`` with cold clones that boot, are put to sleep by the first round that sees
them booted and can be woken from the round after (the sleep's intent done); above that
size, asleep workers are removed. A refill's boot costs worker-seconds like a starting
worker's; asleep (hibernated) workers cost none and are counted apart
(``asleep_seconds``).

The pool may be fed as ``gridtool pool feed`` feeds it (``SimConfig.probe``): the feeder
reads the queue (a stream: its arrivals) every ``probe`` seconds between its period
reports and, when :func:`gridtool.pools.feed.report_kind` says surge, reports at once
(:func:`gridtool.pools.feed.reports`); the policy then decides on what the keeper's round
makes of those reports (:func:`gridtool.pools.rules.aggregate`): the same functions as
the shipped feeder and keeper. The SLA is accounted per ``SimConfig.interval`` (10 s)
whatever the readings.

Per policy the result holds SLA-violation seconds (sampled intervals whose jobs waited
longer than ``sla_wait`` on average, the jobs grouped by arrival interval), worker-seconds
(workers provisioned, starting ones included, integrated over the trace), the number of
scale-direction reversals and a per-sample time series for plotting.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from gridtool.errors import UsageError
from gridtool.pools.feed import Reading, report_kind, reports, to_sample
from gridtool.pools.flex import Decision, FlexState, LoadSample, PolicyParams, decide
from gridtool.pools.rules import aggregate

# --- traces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Poisson arrivals at ``rate`` per second during ``[start, end)``."""

    start: float
    end: float
    rate: float

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end) or self.rate < 0:
            raise ValueError(f"bad segment {self.start}..{self.end} at rate {self.rate}")


@dataclass(frozen=True)
class Trace:
    """An arrival trace: rate segments or explicit arrival timestamps."""

    name: str
    duration: float
    segments: tuple[Segment, ...] = ()
    arrivals: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.duration > 0:
            raise ValueError("trace duration must be > 0")
        if (self.arrivals is not None) == bool(self.segments):
            raise ValueError("a trace has either segments or explicit arrivals")

    def rate_at(self, t: float) -> float:
        """Nominal arrival rate at time t (0 outside all segments)."""
        return sum(s.rate for s in self.segments if s.start <= t < s.end)

    def arrival_times(self, rng: random.Random | None = None) -> list[float]:
        """Sorted arrival times within ``[0, duration)`` (rate segments draw from ``rng``)."""
        rng = rng or random.Random(0)
        if self.arrivals is not None:
            return sorted(t for t in self.arrivals if 0 <= t < self.duration)
        times: list[float] = []
        for seg in self.segments:
            times.extend(_poisson(rng, seg.start, min(seg.end, self.duration), seg.rate))
        return sorted(times)

    def step_ups(self, factor: float) -> list[float]:
        """Times where the rate jumps by at least ``factor`` (x) from the segment before."""
        ordered = sorted(self.segments, key=lambda s: s.start)
        return [
            b.start
            for a, b in pairwise(ordered)
            if a.end == b.start and a.rate > 0 and b.rate >= factor * a.rate
        ]


def _poisson(rng: random.Random, start: float, end: float, rate: float) -> Iterable[float]:
    if rate <= 0:
        return
    t = start + rng.expovariate(rate)
    while t < end:
        yield t
        t += rng.expovariate(rate)


def _trace_from(
    name: str, rows: list[tuple[float, ...]], kind: str, duration: float | None
) -> Trace:
    if kind == "arrivals":
        times = tuple(row[0] for row in rows)
        end = duration if duration is not None else (max(times, default=0.0) + 1e-9)
        return Trace(name, end, arrivals=times)
    segments = tuple(Segment(*row) for row in rows)
    end = duration if duration is not None else max((s.end for s in segments), default=0.0)
    return Trace(name, end, segments=segments)


def parse_trace(text: str, *, name: str = "trace", fmt: str = "csv") -> Trace:
    """Parse a trace from CSV or JSON text (formats in the module docstring)."""
    try:
        if fmt == "json":
            return _parse_json(text, name)
        if fmt == "csv":
            return _parse_csv(text, name)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"trace {name}: {exc}") from exc
    raise ValueError(f"unknown trace format {fmt!r} (csv or json)")


def _parse_csv(text: str, name: str) -> Trace:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header = [h.strip() for h in next(reader, [])]
    if header == ["start", "end", "rate"]:
        kind = "segments"
    elif header == ["time"]:
        kind = "arrivals"
    else:
        raise ValueError(f"CSV header must be 'start,end,rate' or 'time', got {header}")
    rows = [tuple(float(cell) for cell in row) for row in reader]
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} columns")
    return _trace_from(name, rows, kind, None)


def _parse_json(text: str, name: str) -> Trace:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a JSON trace is an object with 'segments' or 'arrivals'")
    duration = data.get("duration")
    duration = float(duration) if duration is not None else None
    name = data.get("name", name)
    if "arrivals" in data:
        return _trace_from(name, [(float(t),) for t in data["arrivals"]], "arrivals", duration)
    rows = [tuple(float(v) for v in seg) for seg in data["segments"]]
    return _trace_from(name, rows, "segments", duration)


def load_trace(path: str | Path) -> Trace:
    """Read a ``.csv`` or ``.json`` trace file; UsageError on unreadable or bad files."""
    path = Path(path)
    fmt = "json" if path.suffix.lower() == ".json" else "csv"
    try:
        return parse_trace(path.read_text(), name=path.stem, fmt=fmt)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load trace {path}: {exc}") from exc


def dump_trace_csv(trace: Trace) -> str:
    """Render a segment trace as CSV text (the inverse of ``parse_trace``)."""
    lines = ["start,end,rate"]
    lines += [f"{s.start:g},{s.end:g},{s.rate:g}" for s in trace.segments]
    return "\n".join(lines) + "\n"


# --- simulation -----------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """Simulation knobs (seconds)."""

    service_time: float = 1.0
    startup_delay: float = 5.0
    period: float = 10.0
    sla_wait: float = 0.5
    initial_workers: int | None = None
    seed: int = 0
    warm: int = 0  # the pool's warm set (asleep workers kept beside the serving ones)
    wake_delay: float = 0.9  # decision -> ready of a woken warm worker (hibernate, measured)
    probe: float = 0.0  # the feeder reads the queue this often (0: only every period)
    interval: float = 10.0  # the SLA's accounting interval (jobs grouped by arrival)

    def __post_init__(self) -> None:
        if not (self.service_time > 0 and self.period > 0 and self.sla_wait >= 0):
            raise ValueError("service_time and period must be > 0, sla_wait >= 0")
        if self.startup_delay < 0 or self.wake_delay < 0 or self.warm < 0 or self.probe < 0:
            raise ValueError("startup_delay, wake_delay, warm and probe must be >= 0")
        if not self.interval > 0:
            raise ValueError("interval must be > 0")


@dataclass(frozen=True)
class SeriesPoint:
    """Pool state at one sample (``mean_wait`` is over jobs arriving in the interval)."""

    time: float
    arrival_rate: float
    workers: int
    ready: int
    queue_depth: int
    mean_wait: float | None
    desired: int


@dataclass(frozen=True)
class SimResult:
    """Outcome of replaying one trace under one policy."""

    policy: str
    trace: str
    sla_wait: float
    sla_violation_seconds: float
    worker_seconds: float
    reversals: int
    scale_ups: int
    scale_downs: int
    jobs: int
    mean_wait: float
    waited_fraction: float
    series: tuple[SeriesPoint, ...]
    decisions: tuple[Decision, ...]
    asleep_seconds: float = 0.0  # warm workers asleep, integrated (not in worker_seconds)
    edge_reports: int = 0  # reports written at once on a surge (``SimConfig.probe``)

    def samples_to_scale_up(self, after: float) -> int | None:
        """1-based index, among samples taken after ``after``, of the first scale-up."""
        later = [d for d in self.decisions if d.timestamp > after]
        return next((i for i, d in enumerate(later, 1) if d.change > 0), None)

    def summary(self) -> dict[str, Any]:
        """The headline numbers (no series)."""
        skip = ("series", "decisions")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def to_dict(self) -> dict[str, Any]:
        """Summary plus the series as columns (``{"time": [...], "workers": [...]}``)."""
        data = self.summary()
        names = [f.name for f in fields(SeriesPoint)]
        data["series"] = {name: [getattr(p, name) for p in self.series] for name in names}
        return data


def count_reversals(changes: Iterable[int]) -> int:
    """How often the sign of the non-zero changes flips (up then down or down then up)."""
    signs = [1 if c > 0 else -1 for c in changes if c]
    return sum(1 for a, b in pairwise(signs) if a != b)


_DEPART, _READY, _SET, _SAMPLE, _PROBE = 0, 1, 2, 3, 4


class _Pool:
    """Mutable simulation state; lives only inside :func:`simulate`."""

    def __init__(self, jobs: tuple[list[float], list[float]], cfg: SimConfig, n: int, end: float,
                 most: int):
        self.arrivals, self.services = jobs
        self.most = most  # the pool's maximum (serving plus warm never exceeds it)
        self.asleep = max(0, min(cfg.warm, most - n))
        self.refills: list[float] = []  # when each refilled warm worker can be woken
        self.asleep_seconds = 0.0
        self.cfg, self.end = cfg, end
        self.starts: list[float | None] = [None] * len(self.arrivals)
        self.events: list[tuple[float, int, int, int]] = []
        self.seq = 0
        self.queue: list[int] = []
        self.qhead = 0
        self.idle, self.busy, self.draining = n, 0, 0
        self.starting: dict[int, float] = {}
        self.next_worker = 0
        self.now = 0.0
        self.worker_seconds = 0.0
        self.busy_seconds = 0.0
        self.completed = 0
        self.completed_service = 0.0

    # bookkeeping
    def push(self, t: float, kind: int, data: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, data))

    def advance(self, t: float) -> None:
        """Move the clock to t; worker-seconds are only charged up to the trace end."""
        charged = max(0.0, min(t, self.end) - min(self.now, self.end))
        self.worker_seconds += charged * (self.idle + self.busy + len(self.starting))
        self.asleep_seconds += charged * self.asleep
        self.busy_seconds += (t - self.now) * self.busy
        self.now = t

    @property
    def ready(self) -> int:
        return self.idle + self.busy - self.draining

    @property
    def size(self) -> int:
        """Workers provisioned and not leaving: ready plus starting."""
        return self.ready + len(self.starting)

    @property
    def queue_depth(self) -> int:
        return len(self.queue) - self.qhead

    # job flow
    def start_job(self, job: int) -> None:
        self.starts[job] = self.now
        self.push(self.now + self.services[job], _DEPART, job)

    def arrive(self, job: int) -> None:
        if self.idle:
            self.idle -= 1
            self.busy += 1
            self.start_job(job)
        else:
            self.queue.append(job)

    def depart(self, job: int) -> None:
        self.completed += 1
        self.completed_service += self.services[job]
        if self.draining:
            self.draining -= 1
            self.busy -= 1
        elif self.queue_depth:
            self.start_job(self.queue[self.qhead])
            self.qhead += 1
        else:
            self.busy -= 1
            self.idle += 1

    def worker_ready(self, worker: int) -> None:
        if self.starting.pop(worker, None) is None:
            return  # cancelled while starting
        self.idle += 1
        if self.queue_depth:
            self.idle -= 1
            self.busy += 1
            self.start_job(self.queue[self.qhead])
            self.qhead += 1

    # scaling
    def scale(self, change: int) -> None:
        if change > 0:
            undrain = min(change, self.draining)
            self.draining -= undrain
            woken = min(change - undrain, self.asleep)  # warm workers first
            self.asleep -= woken
            for i in range(change - undrain):
                delay = self.cfg.wake_delay if i < woken else self.cfg.startup_delay
                self.next_worker += 1
                self.starting[self.next_worker] = self.now + delay
                self.push(self.now + delay, _READY, self.next_worker)
        elif change < 0:
            self.shrink(-change)

    def wakeable(self, t: float) -> None:
        """Refilled warm workers whose sleep is done by the round at ``t`` join the set."""
        self.asleep += sum(1 for at in self.refills if at <= t)
        self.refills = [at for at in self.refills if at > t]

    def tend_warm(self, t: float, size: int) -> None:
        """The round's refill (cold clones booted, then put to sleep by the first round
        that sees them booted, wakeable from the next) or trim of the warm set."""
        want = max(0, min(self.cfg.warm, self.most - size))
        have = self.asleep + len(self.refills)
        if want < have:
            self.asleep -= min(self.asleep, have - want)
        period = self.cfg.period
        booted = t + period * math.ceil(self.cfg.startup_delay / period)  # its sleep sent
        for _ in range(want - have):
            self.refills.append(booted + period)
            self.worker_seconds += max(0.0, min(booted, self.end) - min(t, self.end))

    def shrink(self, count: int) -> None:
        for worker in sorted(self.starting, key=self.starting.__getitem__, reverse=True):
            if not count:
                return
            del self.starting[worker]
            count -= 1
        take = min(count, self.idle)
        self.idle -= take
        self.draining += min(count - take, self.busy - self.draining)

    def take_sample(self, t: float, since: float, arrivals: int) -> LoadSample:
        completed, service = self.completed, self.completed_service
        sample = LoadSample(
            timestamp=t,
            interval=t - since,
            arrivals=arrivals,
            completions=completed,
            busy_seconds=self.busy_seconds,
            mean_service_time=service / completed if completed else None,
            queue_depth=self.queue_depth,
            workers=self.ready,
            starting=len(self.starting),
        )
        self.completed, self.completed_service, self.busy_seconds = 0, 0.0, 0.0
        return sample


def _draw_jobs(trace: Trace, cfg: SimConfig) -> tuple[list[float], list[float]]:
    rng = random.Random(cfg.seed)
    arrivals = trace.arrival_times(rng)
    service_rng = random.Random(cfg.seed + 1_000_003)
    services = [service_rng.expovariate(1.0 / cfg.service_time) for _ in arrivals]
    return arrivals, services


def simulate(trace: Trace, params: PolicyParams, cfg: SimConfig | None = None) -> SimResult:
    """Replay ``trace`` with the policy ``params.policy``; deterministic for a seed."""
    cfg = cfg or SimConfig()
    initial = params.clamp(cfg.initial_workers if cfg.initial_workers is not None else 0)
    return _run(trace, cfg, params.policy, initial, _PolicyDriver(params), (),
                params.max_workers)


def simulate_schedule(
    trace: Trace, schedule: Sequence[tuple[float, int]], cfg: SimConfig | None = None,
    *, name: str = "clairvoyant",
) -> SimResult:
    """Replay ``trace`` with the pool sized by a fixed ``schedule`` of ``(time, workers)``
    steps (the first at time 0; workers then added start at once and are ready after
    the startup delay), instead of a policy. Same jobs as :func:`simulate` for a seed."""
    cfg = cfg or SimConfig()
    if not schedule or schedule[0][0] != 0:
        raise ValueError("a schedule starts at time 0")
    return _run(trace, cfg, name, schedule[0][1], _ScheduleDriver(schedule), schedule[1:],
                max(n for _, n in schedule) + cfg.warm)


class _PolicyDriver:
    """Asks the flex policy at every sample."""

    def __init__(self, params: PolicyParams):
        self.params, self.state = params, FlexState()
        self.decisions: list[Decision] = []

    def sample(self, sample: LoadSample, t: float) -> int:
        decision, self.state = decide(self.state, sample, t, self.params)
        self.decisions.append(decision)
        return decision.desired

    def changes(self) -> list[int]:
        return [d.change for d in self.decisions]


class _ScheduleDriver:
    """Follows a fixed schedule; samples only read the pool."""

    def __init__(self, schedule: Sequence[tuple[float, int]]):
        self.schedule = schedule
        self.decisions: list[Decision] = []

    def sample(self, sample: LoadSample, t: float) -> int:
        return next(n for at, n in reversed(self.schedule) if at <= t)

    def changes(self) -> list[int]:
        return [b[1] - a[1] for a, b in pairwise(self.schedule)]


_Driver = _PolicyDriver | _ScheduleDriver


def _run(
    trace: Trace, cfg: SimConfig, name: str, initial: int, driver: _Driver,
    sets: Sequence[tuple[float, int]], most: int,
) -> SimResult:
    jobs = _draw_jobs(trace, cfg)
    arrivals = jobs[0]
    pool = _Pool(jobs, cfg, initial, trace.duration, most)
    sample_times = [cfg.period * k for k in range(1, int(trace.duration // cfg.period) + 1)]
    for t in sample_times:
        pool.push(t, _SAMPLE, 0)
    for t in probe_times(cfg, trace.duration):
        pool.push(t, _PROBE, 0)
    for t, size in sets:
        pool.push(t, _SET, size)
    points: list[tuple[float, LoadSample, int]] = []
    next_job = 0
    prev = Reading(0.0, 0, added=0)  # the feeder's reading at its last report
    calm: Reading | None = None  # the last reading since then that showed no surge
    reported: LoadSample | None = None  # the feeder's last report
    edges = 0
    while pool.events or next_job < len(arrivals):
        if next_job < len(arrivals) and (
            not pool.events or arrivals[next_job] <= pool.events[0][0]
        ):
            pool.advance(arrivals[next_job])
            pool.arrive(next_job)
            next_job += 1
            continue
        t, kind, _, data = heapq.heappop(pool.events)
        pool.advance(t)
        if kind == _DEPART:
            pool.depart(data)
        elif kind == _READY:
            pool.worker_ready(data)
        elif kind == _SET:
            pool.wakeable(t)
            pool.scale(data - pool.size)
        else:
            reading = Reading(t, 0, added=next_job)  # the feeder's, of a stream
            candidate = to_sample(prev, reading, "feed")
            latest = None if calm is None else to_sample(calm, reading, "feed")
            got = "" if candidate is None else report_kind(reported, candidate,
                                                           kind == _SAMPLE, latest)
            if not got:  # no report before the period's
                calm = reading
                continue
            written = reports(prev, calm, reading, got, "feed")
            load = aggregate(written, prev.at, t)  # as the keeper's round sees them
            since, reported, prev, calm = prev.at, written[-1], reading, None
            pool.wakeable(t)
            sample = replace(pool.take_sample(t, since, load.arrivals if load else 0),
                             surge=bool(load and load.surge))
            desired = driver.sample(sample, t)
            pool.scale(desired - sample.current)
            pool.tend_warm(t, desired)
            if kind == _SAMPLE:
                points.append((t, sample, desired))
            else:
                edges += 1
    return _result(trace, name, cfg, pool, driver, points, edges)


def probe_times(cfg: SimConfig, duration: float) -> list[float]:
    """When the feeder reads the queue between its period reports (every ``probe``
    seconds, none at a period's end: the period report is written then)."""
    if cfg.probe <= 0:
        return []
    times = (j * cfg.probe for j in range(1, int(duration // cfg.probe) + 1))
    return [t for t in times if abs(t / cfg.period - round(t / cfg.period)) > 1e-9]


def _result(
    trace: Trace,
    name: str,
    cfg: SimConfig,
    pool: _Pool,
    driver: _Driver,
    points: list[tuple[float, LoadSample, int]],
    edges: int,
) -> SimResult:
    waits = _waits(pool, trace.duration)
    count = int(trace.duration // cfg.interval)
    interval_waits = _interval_waits(pool.arrivals, waits, cfg.interval, count)
    series = tuple(
        SeriesPoint(
            time=t,
            arrival_rate=sample.arrival_rate,
            workers=sample.current,
            ready=sample.workers,
            queue_depth=sample.queue_depth,
            mean_wait=_round(_covering(interval_waits, t, cfg.interval)),
            desired=desired,
        )
        for t, sample, desired in points
    )
    violations = sum(1 for w in interval_waits if w is not None and w > cfg.sla_wait)
    changes = driver.changes()
    return SimResult(
        policy=name,
        trace=trace.name,
        sla_wait=cfg.sla_wait,
        sla_violation_seconds=violations * cfg.interval,
        worker_seconds=pool.worker_seconds,
        reversals=count_reversals(changes),
        scale_ups=sum(1 for c in changes if c > 0),
        scale_downs=sum(1 for c in changes if c < 0),
        jobs=len(waits),
        mean_wait=math.fsum(waits) / len(waits) if waits else 0.0,
        waited_fraction=sum(1 for w in waits if w > 1e-12) / len(waits) if waits else 0.0,
        series=series,
        decisions=tuple(driver.decisions),
        asleep_seconds=pool.asleep_seconds,
        edge_reports=edges,
    )


def _covering(waits: Sequence[float | None], t: float, interval: float) -> float | None:
    """The mean wait of the accounting interval that ends at or last before ``t``."""
    index = min(len(waits), math.ceil(t / interval - 1e-9)) - 1
    return waits[index] if index >= 0 else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _waits(pool: _Pool, end: float) -> list[float]:
    """Queueing delay per job; jobs never started (empty pool) are censored at ``end``."""
    return [
        (start if start is not None else max(end, arrival)) - arrival
        for arrival, start in zip(pool.arrivals, pool.starts, strict=True)
    ]


def _interval_waits(
    arrivals: Sequence[float], waits: Sequence[float], period: float, count: int
) -> list[float | None]:
    sums = [0.0] * count
    jobs = [0] * count
    for arrival, wait in zip(arrivals, waits, strict=True):
        index = int(arrival // period)
        if index < count:
            sums[index] += wait
            jobs[index] += 1
    return [s / n if n else None for s, n in zip(sums, jobs, strict=True)]


def simulate_policies(
    trace: Trace, params: PolicyParams, policies: Iterable[str], cfg: SimConfig | None = None
) -> list[SimResult]:
    """Replay one trace under several policies (same jobs for each)."""
    return [simulate(trace, replace(params, policy=name), cfg) for name in policies]


# --- plotting -------------------------------------------------------------------------


def plot(results: Sequence[SimResult], path: str | Path) -> Path:
    """Plot workers and interval mean wait per trace and policy into an image file.

    Needs matplotlib (an optional extra); raises UsageError if it is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError(
            "plotting needs matplotlib, which is not installed: pip install matplotlib"
        ) from exc
    traces = list(dict.fromkeys(r.trace for r in results))
    fig = Figure(figsize=(12, 4.5 * len(traces)), layout="constrained")
    axes = fig.subplots(2 * len(traces), 1, squeeze=False)[:, 0]
    for row, name in enumerate(traces):
        _plot_trace(axes[2 * row], axes[2 * row + 1], [r for r in results if r.trace == name])
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def _plot_trace(top: Any, bottom: Any, results: list[SimResult]) -> None:
    first = results[0]
    times = [p.time for p in first.series]
    top.set_title(f"trace {first.trace}")
    top.plot(times, [p.arrival_rate for p in first.series], color="0.7", label="arrivals/s")
    for result in results:
        top.step(times, [p.workers for p in result.series], where="post", label=result.policy)
        waits = [p.mean_wait if p.mean_wait is not None else math.nan for p in result.series]
        bottom.plot(times, waits, label=result.policy)
    top.set_ylabel("workers / arrivals per s")
    top.legend(loc="upper left")
    bottom.axhline(first.sla_wait, color="red", linestyle="--", label="SLA")
    bottom.set_yscale("symlog", linthresh=max(first.sla_wait, 1e-3))
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("mean wait (s)")
    bottom.set_xlabel("time (s)")
    bottom.legend(loc="upper left")
