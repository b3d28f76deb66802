"""Flex policies for worker pools: pure decisions over plain data.

Every policy has the signature ``decide(state, sample, now, params) -> (Decision, state)``:
it reads one :class:`LoadSample` (the pool's load over the last interval plus its current
size), the previous :class:`FlexState`, and returns how many workers the pool should have.
No I/O, no clock: the caller passes ``now`` and persists the returned state
(``FlexState.to_dict``) between calls. ``params.policy`` picks the policy by name from
:data:`POLICIES`:

``erlang`` (default)
    Offered load A = arrival estimate x mean service time (EWMA of measured service
    times). The arrival estimate follows a slow EWMA (``slow_tau``) so that Poisson noise
    does not move the pool, but reacts within one sample to real changes: when a fast EWMA
    (``fast_tau``) is more than ``noise_z`` standard deviations of Poisson noise above the
    slow one, or this sample's own rate is that far above it (a short sample: a surge
    the feeder reported at once, :func:`gridtool.pools.feed.surge`), the estimate jumps to
    the higher of the two - this is what catches a burst; when it is that far below,
    the estimate drops to the fast one (plus that margin), the scale-down window and
    the slow level restart there - a burst that is over holds no idle workers, neither
    for the window nor while the slow EWMA forgets it. A report written at once on a
    change (``surge``: the feeder's test saw the load jump or drop) restarts the fast
    EWMA at its rate: a burst's end, reported at once, is believed at once. While the
    measured rates of the last ``trend_samples`` samples lie on a significantly rising
    line, the estimate is at least that line ``lookahead`` seconds ahead (the time new
    workers need to help) - this is what keeps up with ramps (Brown's double smoothing
    also de-lags the slow EWMA). Queue depth is a second signal: the part beyond its
    (1 - ``queue_epsilon``) quantile for the ready workers at their target load (or at
    the previous rate, if lower) is backlog, and so is what piles up beyond the ready
    workers' capacity during ``startup_delay`` (on a surge report even before a queue
    shows: it was written at once); backlog is drained over ``drain_time`` as extra
    arrival rate. Workers come from Erlang C so that the pool's target (P(wait >
    ``wait_threshold``) or mean wait) times ``margin`` (1: the target itself) holds at
    A plus *headroom*: ``error_z`` (1) times the estimate's measured forecast error, the
    root mean square over ``slow_tau`` of each sample's rate minus the estimate the
    previous decision sized for (change points left out; a fresh pool starts at one
    sample's Poisson sd, and holds it until it has its full recent history; a scale-down
    keeps at least that much). On a steady load that is the noise of one interval, so the
    target holds in most intervals, not only on average; on a slow ramp the estimate
    trails, every sample misses it upwards, and the headroom grows by that lag.
    Scale-up is immediate, to exactly that count, with workers still starting
    counted as capacity (never overshoots); it is skipped as "small" only if the current
    size misses the target by at most ``tolerance`` (relative). Scale-down goes to the
    highest recommendation for the arrivals (backlog left out: it is drained) of the last
    ``down_window`` seconds (60: a worker comes back in a startup delay, so holding idle
    ones for minutes is waste), and only if that removes more than ``tolerance`` of the
    pool. The defaults were tuned against the clairvoyant schedule on the sample traces
    (``gridtool.pools.frontier``, ``bench/frontier.py``).
``classic``
    The known baseline: unweighted mean of the last ``classic_window`` samples (rate and
    service time); one worker more when the Erlang intensity A / workers reaches
    ``classic_up`` (0.90), one fewer when it drops below ``classic_down`` (0.50, our
    reading of "well below") unless one fewer would be back at ``classic_up`` (which
    only happens for pools of one or two and would flap), otherwise hold.
``hpa``
    The Kubernetes HPA rule on the busy fraction: ``desired = ceil(current * util /
    target)``, no change while ``|util / target - 1| <= hpa_tolerance`` (0.1), starting
    workers count as idle when scaling up, scale-up limited as in the HPA defaults (to
    ``max(2 x current, current + 4)``), and scale-down to the highest recommendation of
    the stabilization window (300 s).

Counts: ``current`` is ready + starting workers; ``desired`` is the new total, always
within ``[min_workers, max_workers]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from gridtool.pools.erlang import (
    DEFAULT_SERVER_LIMIT,
    TARGET_KINDS,
    TargetKind,
    erlang_c,
    mean_wait,
    servers_needed,
    wait_metric,
)

POLICY_NAMES = ("erlang", "classic", "hpa")

#: The largest mean squared residual of the trend line, in units of the rate's Poisson
#: variance, for which the recent rates still count as a ramp.
RAMP_MISFIT = 3.0


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return dict(data)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LoadSample:
    """Load of one pool over the ``interval`` seconds ending at ``timestamp``.

    ``workers`` is the number of ready workers and ``starting`` the number requested but
    not yet ready, both at ``timestamp``. Service time is ``mean_service_time`` if given,
    else ``busy_seconds / completions``. Also the record of one load report,
    ``pools/<name>/samples/<id>``: ``source`` names the reporter, so reports of several
    workers or producers add up (``gridtool.pools.rules.aggregate``).
    """

    timestamp: float
    interval: float
    arrivals: int
    completions: int = 0
    busy_seconds: float | None = None
    mean_service_time: float | None = None
    queue_depth: int = 0
    workers: int = 0
    starting: int = 0
    source: str = ""
    surge: bool = False  # written at once on a surge (``pool feed``), not at a period's end

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0, got {self.interval}")
        counts = (self.arrivals, self.completions, self.queue_depth, self.workers, self.starting)
        if min(counts) < 0:
            raise ValueError("counts must be >= 0")
        if self.busy_seconds is not None and self.busy_seconds < 0:
            raise ValueError("busy_seconds must be >= 0")
        if self.mean_service_time is not None and not self.mean_service_time > 0:
            raise ValueError("mean_service_time must be > 0")

    @property
    def arrival_rate(self) -> float:
        """Arrivals per second over the interval."""
        return self.arrivals / self.interval

    @property
    def current(self) -> int:
        """Pool size counting workers still starting."""
        return self.workers + self.starting

    def service_time(self) -> float | None:
        """Measured mean service time, or None if the interval tells nothing."""
        if self.mean_service_time is not None:
            return self.mean_service_time
        if self.busy_seconds and self.completions:
            return self.busy_seconds / self.completions
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadSample:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class PolicyParams:
    """Per-pool flex settings (all times in seconds)."""

    policy: str = "erlang"
    min_workers: int = 1
    max_workers: int = 100
    target_kind: TargetKind = "wait_probability"
    target: float = 0.2
    wait_threshold: float = 0.0
    default_service_time: float = 1.0
    fast_tau: float = 3.0
    slow_tau: float = 60.0
    noise_z: float = 3.0
    lookahead: float = 15.0
    trend_samples: int = 6
    queue_epsilon: float = 0.01
    drain_time: float = 5.0
    startup_delay: float = 5.0
    service_tau: float = 60.0
    stabilization_window: float = 300.0
    tolerance: float = 0.15
    classic_window: int = 10
    classic_up: float = 0.9
    classic_down: float = 0.5
    hpa_target_utilization: float = 0.7
    hpa_tolerance: float = 0.1
    margin: float = 1.0
    down_window: float = 60.0
    error_z: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "policy must be one of " + ", ".join(POLICY_NAMES): self.policy in POLICY_NAMES,
            "0 <= min_workers <= max_workers": 0 <= self.min_workers <= self.max_workers,
            "target_kind must be one of " + ", ".join(TARGET_KINDS): (
                self.target_kind in TARGET_KINDS
            ),
            "target must be > 0": self.target > 0,
            "wait_threshold must be >= 0": self.wait_threshold >= 0,
            "default_service_time must be > 0": self.default_service_time > 0,
            "taus and stabilization_window must be >= 0": min(
                self.fast_tau, self.slow_tau, self.service_tau, self.stabilization_window,
                self.down_window,
            )
            >= 0,
            "drain_time must be > 0": self.drain_time > 0,
            "noise_z, lookahead and startup_delay must be >= 0": min(
                self.noise_z, self.lookahead, self.startup_delay) >= 0,
            "0 <= queue_epsilon < 1": 0 <= self.queue_epsilon < 1,
            "0 <= tolerance < 1": 0 <= self.tolerance < 1,
            "classic_window must be >= 1": self.classic_window >= 1,
            "trend_samples must be >= 3": self.trend_samples >= 3,
            "0 < classic_down < classic_up": 0 < self.classic_down < self.classic_up,
            "0 < hpa_target_utilization <= 1": 0 < self.hpa_target_utilization <= 1,
            "hpa_tolerance must be >= 0": self.hpa_tolerance >= 0,
            "margin must be > 0": self.margin > 0,
            "error_z must be >= 0": self.error_z >= 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid PolicyParams: " + "; ".join(failed))

    @property
    def sizing_target(self) -> float:
        """What the erlang policy sizes for: ``target x margin``."""
        return self.target * self.margin

    def clamp(self, workers: int) -> int:
        """Bound a worker count to ``[min_workers, max_workers]``."""
        return max(self.min_workers, min(self.max_workers, workers))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyParams:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class FlexState:
    """What a policy remembers between samples (persist it with ``to_dict``)."""

    last_timestamp: float | None = None
    fast_rate: float | None = None
    slow_rate: float | None = None
    slow2_rate: float | None = None
    service_time: float | None = None
    recent: tuple[tuple[float, float], ...] = ()
    window: tuple[tuple[float, int], ...] = ()
    estimate: float | None = None  # the arrival estimate the last decision sized for
    error_var: float | None = None  # EWMA of (measured rate - that estimate)^2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recent"] = [list(pair) for pair in self.recent]
        data["window"] = [list(pair) for pair in self.window]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlexState:
        values = _known(cls, data)
        values["recent"] = tuple((float(r), float(s)) for r, s in values.get("recent", ()))
        values["window"] = tuple((float(t), int(n)) for t, n in values.get("window", ()))
        return cls(**values)


@dataclass(frozen=True)
class Decision:
    """A policy's verdict for one sample, with the numbers behind it."""

    policy: str
    timestamp: float
    current: int
    ready: int
    starting: int
    smoothed_rate: float
    backlog_rate: float
    service_time: float
    offered_load: float
    intensity: float
    recommended: int
    desired: int
    reason: str
    predicted_wait_probability: float
    predicted_mean_wait: float
    arrival_rate: float = 0.0  # measured over the sample, before any smoothing
    headroom_rate: float = 0.0  # sized for beyond the estimate: its measured forecast error

    @property
    def change(self) -> int:
        """Workers to add (> 0) or remove (< 0)."""
        return self.desired - self.current

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("intensity", "predicted_mean_wait"):
            data[name] = _finite_or_none(data[name])
        data["change"] = self.change
        return data


Policy = Callable[[FlexState, LoadSample, float, PolicyParams], tuple[Decision, FlexState]]


# --- shared steps ---------------------------------------------------------------------


def _ewma(
    previous: float | None, value: float, dt: float, tau: float, first: float | None = None
) -> float:
    if previous is None:
        return value if first is None else first
    if tau <= 0:
        return value
    alpha = 1.0 - math.exp(-dt / tau)
    return previous + alpha * (value - previous)


def _observe(state: FlexState, sample: LoadSample, params: PolicyParams) -> FlexState:
    """Fold one sample into the smoothed rates, service time and recent history."""
    rate, dt = sample.arrival_rate, sample.interval
    measured = sample.service_time()
    service = state.service_time
    if measured is not None:
        service = _ewma(service, measured, dt, params.service_tau)
    recent_service = service if service is not None else params.default_service_time
    recent = (*state.recent, (rate, recent_service))[-_kept(params):]
    # one sample is a noisy start for the slow level: begin at its Poisson lower bound
    start = max(0.0, rate - params.noise_z * math.sqrt(rate / dt))
    # a report written at once on a change (``surge``: the feeder's significance test
    # said the load jumped or dropped here) restarts the fast level at its rate
    fast = rate if sample.surge else _ewma(state.fast_rate, rate, dt, params.fast_tau)
    return replace(
        state,
        last_timestamp=sample.timestamp,
        fast_rate=fast,
        slow_rate=(slow := _ewma(state.slow_rate, rate, dt, params.slow_tau, first=start)),
        slow2_rate=_ewma(state.slow2_rate, slow, dt, params.slow_tau),
        service_time=service,
        recent=recent,
    )


def _kept(params: PolicyParams) -> int:
    """How many recent samples a state holds (the classic window, the trend line)."""
    return max(params.classic_window, params.trend_samples)


def _service_time(state: FlexState, params: PolicyParams) -> float:
    return state.service_time if state.service_time is not None else params.default_service_time


def _intensity(load: float, workers: int) -> float:
    if workers > 0:
        return load / workers
    return math.inf if load > 0 else 0.0


def _predict(workers: int, load: float, service: float) -> tuple[float, float]:
    """Erlang C P(wait) and mean wait for ``workers`` at ``load``."""
    if load <= 0:
        return 0.0, 0.0
    return erlang_c(workers, load), mean_wait(workers, load, service)


def _window(
    before: FlexState, state: FlexState, now: float, current: int, rec: int, length: float
) -> tuple[int, FlexState]:
    """Record ``rec`` and return the highest recommendation of the last ``length`` s.

    A fresh state starts the window with the current size, so nothing scales down during
    the first window after a (re)start.
    """
    horizon = now - length
    seed = ((now, current),) if before.last_timestamp is None else ()
    window = tuple((t, n) for t, n in (*before.window, *seed) if t > horizon)
    window = (*window, (now, rec))
    return max(n for _, n in window), replace(state, window=window)


def _finish(
    policy: str,
    sample: LoadSample,
    now: float,
    params: PolicyParams,
    numbers: tuple[float, float, float],
    recommended: int,
    desired: int,
    reason: str,
    headroom: float = 0.0,
) -> Decision:
    """Clamp ``desired`` and assemble the Decision; numbers = (rate, backlog rate, s)."""
    rate, backlog, service = numbers
    load = (rate + backlog) * service
    bounded = params.clamp(desired)
    if bounded != desired or params.clamp(recommended) != recommended:
        reason = f"{reason}; bounded to [{params.min_workers}, {params.max_workers}]"
    p_wait, wait = _predict(bounded, load, service)
    return Decision(
        policy=policy,
        timestamp=now,
        current=sample.current,
        ready=sample.workers,
        starting=sample.starting,
        smoothed_rate=rate,
        backlog_rate=backlog,
        service_time=service,
        offered_load=load,
        intensity=_intensity(load, sample.current),
        recommended=recommended,
        desired=bounded,
        reason=reason,
        predicted_wait_probability=p_wait,
        predicted_mean_wait=wait,
        arrival_rate=sample.arrival_rate,
        headroom_rate=headroom,
    )


# --- erlang ---------------------------------------------------------------------------


def _target_metric(workers: int, load: float, service: float, params: PolicyParams) -> float:
    """The pool's target metric (P(wait > threshold) or mean wait) at ``workers``."""
    if load <= 0:
        return 0.0
    kind, threshold = params.target_kind, params.wait_threshold
    return wait_metric(workers, load, service, kind=kind, threshold=threshold)


def _erlang_workers(load: float, service: float, params: PolicyParams) -> int:
    """Workers Erlang C asks for (``DEFAULT_SERVER_LIMIT + 1`` for absurd loads)."""
    try:
        return servers_needed(
            load, service, params.sizing_target, kind=params.target_kind,
            threshold=params.wait_threshold,
        )
    except ValueError:
        return DEFAULT_SERVER_LIMIT + 1


def _erlang_step(
    current: int, rec: int, held: int, metric: float, params: PolicyParams
) -> tuple[int, str]:
    """Apply scale-up-at-once, tolerance band and scale-down stabilization."""
    if rec > current:
        if metric <= params.sizing_target * (1 + params.tolerance):
            return current, f"hold: {current} misses target by <= tolerance (rec {rec})"
        return rec, f"scale up: Erlang C needs {rec} > {current}"
    if held >= current:
        return current, f"hold: window max {held} >= {current}"
    if current - held <= params.tolerance * current:
        return current, f"hold: {current} -> {held} within tolerance {params.tolerance:g}"
    return held, f"scale down to window max {held} (rec {rec})"


def _alpha(interval: float, tau: float) -> float:
    return 1.0 - math.exp(-interval / tau) if tau > 0 else 1.0


def _rise_sd(variance: float, alpha: float) -> float:
    """Noise sd of EWMA - EWMA(EWMA) for white noise of the given per-sample variance."""
    b2 = (1.0 - alpha) ** 2
    s0, s1, s2 = 1 / (1 - b2), 1 / (1 - b2) ** 2, (1 + b2) / (1 - b2) ** 3
    return alpha * math.sqrt(variance * max(0.0, s0 - 2 * alpha * s1 + alpha**2 * s2))


def _arrival_estimate(
    before: FlexState, after: FlexState, interval: float, params: PolicyParams
) -> tuple[float, str]:
    """Arrival rate to size for, and whether it ``dropped`` or ``jumped`` significantly
    (else ""): the slow EWMA,
    de-lagged along its trend (Brown's double smoothing) when the rise is significant,
    moved to the fast EWMA when that one is more than ``noise_z`` sd of Poisson noise
    above (towards it when below), and at least the recent ramp projected ahead.

    Noise levels come from the previous slow rate (the sample itself on a fresh state), so
    the estimate is monotone in this sample's arrivals.
    """
    fast, slow = after.fast_rate or 0.0, after.slow_rate or 0.0
    level = before.slow_rate if before.slow_rate is not None else fast  # first: its own
    variance = level / interval  # Poisson: variance of one sample's rate
    rise = slow - (after.slow2_rate if after.slow2_rate is not None else slow)
    slow_alpha = _alpha(interval, params.slow_tau)
    if params.slow_tau > 0 and rise > params.noise_z * _rise_sd(variance, slow_alpha):
        projected = slow + rise * (1 + params.lookahead / params.slow_tau)
        slow = max(slow, min(projected, fast))  # never beyond the latest evidence
    fast_alpha = _alpha(interval, params.fast_tau)
    margin = params.noise_z * math.sqrt(variance * fast_alpha / (2.0 - fast_alpha))
    now = after.recent[-1][0] if after.recent else fast
    # a jump: the fast EWMA, or this sample alone (a short one: a surge reported at once),
    # significantly above the slow level; then the estimate is the higher of the two
    jumped = before.slow_rate is not None and (  # fresh: cautious
        fast - margin > slow or now - params.noise_z * math.sqrt(variance) > slow)
    estimate = max(fast, now) if jumped else min(max(slow, fast - margin), fast + margin)
    if slow > fast + margin:  # a significant drop: no trend, and it says so
        return estimate, "dropped"
    trend = _trend_projection(before, now, interval, variance, params)
    return max(estimate, trend), "jumped" if jumped else ""


def _trend_projection(
    state: FlexState, rate: float, interval: float, variance: float, params: PolicyParams
) -> float:
    """The least-squares line through the ``trend_samples`` measured rates before this
    sample, ``lookahead`` seconds past this sample, while its slope is a significant rise
    (``noise_z`` sd of Poisson noise), the rates do lie on a line (``RAMP_MISFIT``) and
    this sample's ``rate`` is at most ``noise_z`` sd below it; 0 otherwise. This is what
    keeps up with a ramp: the smoothed estimates stop at the latest evidence, a ramp has
    moved on by the time new workers help. (Fitted on earlier samples only, this one
    only confirms: so the estimate stays monotone in its arrivals.)"""
    rates = [r for r, _ in state.recent[-params.trend_samples :]]
    count = len(rates)
    if count < 3:
        return 0.0
    middle = (count - 1) / 2
    spread = math.fsum((i - middle) ** 2 for i in range(count))
    slope = math.fsum((i - middle) * r for i, r in enumerate(rates)) / spread  # per sample
    if slope <= params.noise_z * math.sqrt(variance / spread):
        return 0.0
    mean = math.fsum(rates) / count
    misfit = math.fsum((r - mean - slope * (i - middle)) ** 2 for i, r in enumerate(rates))
    if misfit > RAMP_MISFIT * variance * (count - 2):
        return 0.0  # a step or a burst, not a line: the other signals handle those
    if rate < mean + slope * (middle + 1) - params.noise_z * math.sqrt(variance):
        return 0.0  # this sample does not confirm the line
    return mean + slope * (middle + 1 + params.lookahead / interval)


def _target_load(workers: int, service: float, params: PolicyParams) -> float:
    """Highest offered load at which ``workers`` still meet the target (bisection)."""
    low, high = 0.0, float(workers)
    for _ in range(40):
        middle = (low + high) / 2
        if _target_metric(workers, middle, service, params) <= params.sizing_target:
            low = middle
        else:
            high = middle
    return low


def _excess_queue(
    sample: LoadSample, previous: float | None, service: float, params: PolicyParams
) -> float:
    """Queue depth beyond its (1 - queue_epsilon) quantile for the ready workers running
    at their target load, or at the highest rate the previous sample allows (``noise_z``
    sd of Poisson noise above its fast rate) if lower: the backlog that M/M/c noise does
    not explain."""
    ready, depth = sample.workers, float(sample.queue_depth)
    if params.queue_epsilon <= 0 or ready == 0 or depth == 0:
        return depth
    load = _target_load(ready, service, params)
    if previous is not None:  # the highest rate the previous sample's noise allows
        high = previous + params.noise_z * math.sqrt(previous / sample.interval)
        load = min(load, high * service)
    p_wait = erlang_c(ready, load) if load > 0 else 0.0
    if p_wait <= params.queue_epsilon:
        return depth
    normal = math.log(params.queue_epsilon / p_wait) / math.log(load / ready)
    return max(0.0, depth - normal)


def _backlog(
    state: FlexState, sample: LoadSample, rate: float, service: float, params: PolicyParams,
    surged: bool,
) -> float:
    """Jobs to drain once new workers are ready: the excess queue, grown by what arrives
    beyond the ready workers' capacity during the ``startup_delay`` (after a ``surged``
    report, also before any queue shows: one reported at once has not built one yet)."""
    excess = _excess_queue(sample, state.fast_rate, service, params)
    if excess <= 0 and not surged:
        return 0.0
    return excess + max(0.0, rate - sample.workers / service) * params.startup_delay


def _track_error(
    before: FlexState, after: FlexState, sample: LoadSample, estimate: float, change: str,
    params: PolicyParams,
) -> FlexState:
    """Record ``estimate`` and fold this sample's forecast error (its measured rate minus
    the estimate the previous decision sized for) into the mean squared error, an EWMA
    over ``slow_tau``. Change points (a report written at once, a significant jump or
    drop) add no error: the pool was sized for the load before them, and the gates above
    handle them. A fresh state starts at the Poisson variance of one sample's rate and
    keeps it while its first samples come in, until it holds its full recent
    history: the slow level climbs from its deliberately low start (``_observe``) then,
    and those errors are the start's, not the load's (a constant load's headroom rose by
    them, then faded: a scale-up and a scale-down under an unchanging load)."""
    error_var = before.error_var
    if error_var is None:
        error_var = max(estimate, 0.0) / sample.interval
    elif before.estimate is not None and not (change or sample.surge) and \
            len(before.recent) >= _kept(params):
        error = sample.arrival_rate - before.estimate
        error_var = _ewma(error_var, error * error, sample.interval, params.slow_tau)
    return replace(after, estimate=estimate, error_var=error_var)


def decide_erlang(
    state: FlexState, sample: LoadSample, now: float, params: PolicyParams
) -> tuple[Decision, FlexState]:
    """Erlang C sizing on the gated arrival estimate plus backlog; see the module doc."""
    observed = _observe(state, sample, params)
    service = _service_time(observed, params)
    rate, change = _arrival_estimate(state, observed, sample.interval, params)
    observed = _track_error(state, observed, sample, rate, change, params)
    headroom = params.error_z * math.sqrt(observed.error_var or 0.0)
    dropped = change == "dropped"
    # a surge reported at once (``pool feed``) that the estimate believes: no queue yet
    surged = sample.surge and change == "jumped"
    backlog = _backlog(state, sample, rate, service, params, surged) / params.drain_time
    load = (rate + backlog) * service  # offered: what the Decision reports
    sized = load + headroom * service  # sized for: the estimate's error beyond it
    current = sample.current
    raw = _erlang_workers(sized, service, params)
    rec = params.clamp(raw)
    # the window remembers what the arrivals need: a backlog is gone once drained
    # a scale-down never follows the headroom below a period report's Poisson noise: a
    # run of samples closer to the estimate than that is luck, not a smaller load
    floor = 0.0 if sample.surge else params.error_z * math.sqrt(max(rate, 0.0) / sample.interval)
    steady = params.clamp(_erlang_workers((rate + max(headroom, floor)) * service, service,
                                          params))
    remembered = replace(state, window=()) if dropped else state
    if dropped:  # the slow level's history is the load before the drop: restart it
        observed = replace(observed, slow_rate=observed.fast_rate,
                           slow2_rate=observed.fast_rate)
    held, new_state = _window(remembered, observed, now, current, steady, params.down_window)
    held = max(held, rec)
    metric = _target_metric(current, sized, service, params)
    desired, reason = _erlang_step(current, rec, held, metric, params)
    numbers = (rate, backlog, service)
    decision = _finish("erlang", sample, now, params, numbers, raw, desired, reason,
                       headroom=headroom)
    return decision, new_state


# --- classic --------------------------------------------------------------------------


def decide_classic(
    state: FlexState, sample: LoadSample, now: float, params: PolicyParams
) -> tuple[Decision, FlexState]:
    """Mean of the last N samples; +1 at intensity >= classic_up, -1 below classic_down."""
    observed = _observe(state, sample, params)
    window = observed.recent[-params.classic_window :]
    count = len(window)
    rate = sum(r for r, _ in window) / count
    service = sum(s for _, s in window) / count
    current = sample.current
    load = rate * service
    intensity = _intensity(load, current)
    if intensity >= params.classic_up:
        rec, reason = current + 1, f"scale up: intensity {intensity:.2f} >= {params.classic_up}"
    elif (
        current > 0
        and intensity < params.classic_down
        and _intensity(load, current - 1) < params.classic_up
    ):
        rec, reason = current - 1, f"scale down: intensity {intensity:.2f} < {params.classic_down}"
    else:
        rec, reason = current, f"hold: intensity {intensity:.2f}"
    decision = _finish("classic", sample, now, params, (rate, 0.0, service), rec, rec, reason)
    return decision, observed


# --- hpa ------------------------------------------------------------------------------


def _hpa_recommend(sample: LoadSample, service: float, params: PolicyParams) -> tuple[int, str]:
    """Kubernetes HPA replica calculation on the busy fraction of the pool."""
    current, ready = sample.current, sample.workers
    busy = sample.busy_seconds
    if busy is None:
        busy = sample.completions * service
    if ready == 0:
        if current == 0 and (sample.arrivals or sample.queue_depth):
            return 1, "scale up: load on an empty pool"
        return current, "hold: no ready workers to measure"
    target = params.hpa_target_utilization
    ratio = busy / (sample.interval * ready) / target
    if abs(ratio - 1) <= params.hpa_tolerance:
        return current, f"hold: usage ratio {ratio:.2f} within tolerance"
    if ratio > 1 and sample.starting:
        ratio = busy / (sample.interval * current) / target  # starting workers count idle
        if ratio <= 1 + params.hpa_tolerance:
            return current, f"hold: usage ratio {ratio:.2f} counting starting workers"
    rec = math.ceil(ratio * current)
    limit = max(2 * current, current + 4)
    if rec > limit:
        return limit, f"scale up: ratio {ratio:.2f}, rate-limited to {limit}"
    return rec, f"usage ratio {ratio:.2f} -> {rec}"


def decide_hpa(
    state: FlexState, sample: LoadSample, now: float, params: PolicyParams
) -> tuple[Decision, FlexState]:
    """Kubernetes HPA: ceil(current x util / target), tolerance, down-stabilization."""
    observed = _observe(state, sample, params)
    service = _service_time(observed, params)
    current = sample.current
    rec, reason = _hpa_recommend(sample, service, params)
    rec = params.clamp(rec)
    held, new_state = _window(state, observed, now, current, rec,
                              params.stabilization_window)
    if rec >= current:
        desired = rec
    else:
        desired = min(current, held)
        reason = f"{reason}; stabilized to window max {desired}"
    numbers = (sample.arrival_rate, 0.0, service)
    decision = _finish("hpa", sample, now, params, numbers, rec, desired, reason)
    return decision, new_state


# --- registry -------------------------------------------------------------------------

POLICIES: dict[str, Policy] = {
    "erlang": decide_erlang,
    "classic": decide_classic,
    "hpa": decide_hpa,
}
assert tuple(POLICIES) == POLICY_NAMES


def get_policy(name: str) -> Policy:
    """Look a policy up by name (ValueError for unknown names)."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown flex policy {name!r}; known: {', '.join(POLICIES)}") from None


def decide(
    state: FlexState, sample: LoadSample, now: float, params: PolicyParams
) -> tuple[Decision, FlexState]:
    """Run the policy named by ``params.policy``."""
    return get_policy(params.policy)(state, sample, now, params)
