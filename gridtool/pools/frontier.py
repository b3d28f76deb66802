"""The flex policies against the best possible schedule: the clairvoyant schedule, the
parameter sweeps and the cost/SLA frontiers (pure; the simulator replays the results).

Clairvoyant schedule
    It knows the whole trace and the startup delay ``d``. Per sampling interval ``k`` it
    computes ``need[k]``, the fewest ready workers whose Erlang C mean wait at that
    interval's arrival rate meets the SLA, then provisions, at every time ``t``,

        ``L(t) = max(need(s) for s in [t, t + d))``   (``need(t)`` itself when d = 0)

    workers: each requirement shifted ``d`` earlier, and the envelope. See
    :func:`clairvoyant_schedule` for why no schedule is cheaper.

Sweeps and frontiers
    Each policy's main parameters (:data:`SWEEPS`) are varied one grid at a time; each
    run gives a point (worker-seconds, SLA-violation seconds). A policy's frontier is its
    Pareto set: the points no other point of the same policy beats on both. A point lies
    *on or beyond* a frontier when no frontier point costs at most as much and violates
    less (:func:`beats`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise, product
from pathlib import Path
from typing import Any

from gridtool.errors import UsageError
from gridtool.pools.erlang import servers_needed
from gridtool.pools.flex import PolicyParams
from gridtool.pools.queuesim import SimConfig, Trace, simulate, simulate_schedule

Schedule = list[tuple[float, int]]

# --- the clairvoyant schedule ---------------------------------------------------------


def interval_needs(
    rates: Sequence[float], service_time: float, sla_wait: float, params: PolicyParams
) -> list[int]:
    """Per interval, the fewest workers (within the pool's bounds) whose Erlang C mean
    wait at that interval's arrival rate is at most ``sla_wait``."""
    def need(rate: float) -> int:
        load = rate * service_time
        if load <= 0 or sla_wait <= 0:
            return params.clamp(0 if load <= 0 else params.max_workers)
        return params.clamp(servers_needed(load, service_time, sla_wait, kind="mean_wait"))

    return [need(rate) for rate in rates]


def clairvoyant_schedule(
    needs: Sequence[int], period: float, delay: float, duration: float
) -> Schedule:
    """The cheapest provisioning that has ``needs[k]`` workers ready throughout interval
    ``[k * period, (k + 1) * period)``, as ``(time, workers)`` steps from time 0.

    Workers added at ``t`` are paid from ``t`` and ready at ``t + delay``; the ones there
    at time 0 are ready at once; cost is charged over ``[0, duration)``.

    Optimal. Lower bound: a worker ready at some ``s`` in ``[t, t + d)`` was already
    provisioned at ``t`` (one started after ``t`` is ready at ``t + d`` at the earliest),
    so any feasible schedule provisions at least ``need(s)`` workers at ``t`` for every
    such ``s``: at least ``L(t)``. Achievable: give worker ``j`` the set where
    ``need >= j``; that set's intervals shifted ``d`` earlier and gaps shorter than ``d``
    closed are exactly where ``L >= j``, so worker ``j`` starts ``d`` before each of its
    intervals (or at 0) and is ready for all of it. Provisioning ``L`` therefore costs
    ``integral of L``, which no schedule beats. (``tests/unit/test_frontier.py`` checks this
    against every schedule of tiny traces.)
    """
    if period <= 0 or delay < 0 or duration <= 0:
        raise ValueError("period and duration must be > 0, delay >= 0")
    if not needs:
        return [(0.0, 0)]
    count = len(needs)
    cuts = {0.0, duration}
    for k in range(count + 1):
        for at in (k * period, k * period - delay):
            if 0 < at < duration:
                cuts.add(at)
    steps: Schedule = []
    for start, end in pairwise(sorted(cuts)):
        middle = (start + end) / 2
        first = min(int(middle // period), count - 1)
        last = min(int((middle + delay) // period) if delay > 0 else first, count - 1)
        workers = max(needs[first : last + 1])
        if not steps or steps[-1][1] != workers:
            steps.append((start, workers))
    return steps


def schedule_cost(schedule: Schedule, duration: float) -> float:
    """Worker-seconds of a schedule over ``[0, duration)``."""
    ends = [t for t, _ in schedule[1:]] + [duration]
    return math.fsum((end - t) * n for (t, n), end in zip(schedule, ends, strict=True))


def interval_rates(
    segments: Iterable[tuple[float, float, float]], period: float, count: int
) -> list[float]:
    """Mean nominal arrival rate of each interval ``[k * period, (k + 1) * period)``."""
    totals = [0.0] * count
    for start, end, rate in segments:
        for k in range(max(0, int(start // period)), min(count, math.ceil(end / period))):
            overlap = min(end, (k + 1) * period) - max(start, k * period)
            totals[k] += max(0.0, overlap) * rate
    return [total / period for total in totals]


# --- sweeps and frontiers -------------------------------------------------------------

# the main parameters of each policy, the grid each is swept over
SWEEPS: dict[str, dict[str, tuple[float, ...]]] = {
    "classic": {"classic_up": (0.6, 0.7, 0.8, 0.9, 0.95), "classic_window": (1, 3, 10)},
    "hpa": {"hpa_target_utilization": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)},
    "erlang": {"margin": (0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5, 2.0)},
}


def sweep(base: PolicyParams, policy: str) -> list[tuple[str, PolicyParams]]:
    """Every setting of ``policy``'s swept parameters, labelled ``name=value,...``."""
    grid = SWEEPS[policy]
    names = list(grid)
    settings = []
    for values in product(*(grid[n] for n in names)):
        changes: dict[str, Any] = dict(zip(names, values, strict=True))
        if "classic_window" in changes:
            changes["classic_window"] = int(changes["classic_window"])
        if "classic_up" in changes:  # keep the down threshold below the up one
            changes["classic_down"] = min(base.classic_down, changes["classic_up"] - 0.1)
        label = ",".join(f"{n}={v:g}" for n, v in zip(names, values, strict=True))
        settings.append((label, replace(base, policy=policy, **changes)))
    return settings


@dataclass(frozen=True)
class Point:
    """One run on the cost/SLA plane."""

    policy: str
    setting: str
    worker_seconds: float
    violation_seconds: float
    default: bool = False


def pareto(points: Iterable[Point]) -> list[Point]:
    """The points no other point beats (at most the cost and fewer violations, or less
    cost and at most the violations), cheapest first; equal points keep the first."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.worker_seconds, p.violation_seconds)):
        if not front or p.violation_seconds < front[-1].violation_seconds:
            front.append(p)
    return front


def beats(point: Point, front: Sequence[Point]) -> Point | None:
    """The frontier point that beats ``point`` (costs at most as much and violates less),
    or None when ``point`` lies on or beyond the frontier."""
    better = [p for p in front if p.worker_seconds <= point.worker_seconds
              and p.violation_seconds < point.violation_seconds]
    return min(better, key=lambda p: p.violation_seconds, default=None)


# --- one trace's frontiers, by simulation ---------------------------------------------


@dataclass(frozen=True)
class TraceFrontier:
    """One trace: every swept run, each policy's frontier, the default erlang run and the
    clairvoyant schedule (its exact cost, and its run in the simulator)."""

    trace: str
    duration: float
    points: tuple[Point, ...]
    clairvoyant_cost: float
    clairvoyant: Point

    def front(self, policy: str) -> list[Point]:
        return pareto(p for p in self.points if p.policy == policy)

    @property
    def default(self) -> Point:
        return next(p for p in self.points if p.default)

    def checks(self, cost_ratio: float, violation_share: float) -> dict[str, Any]:
        """The default erlang run against the other frontiers and the clairvoyant cost."""
        ours = self.default
        beaten = {name: beats(ours, self.front(name)) for name in ("classic", "hpa")}
        ratio = ours.worker_seconds / self.clairvoyant_cost if self.clairvoyant_cost else math.inf
        share = ours.violation_seconds / self.duration
        return {
            "beyond_classic": beaten["classic"] is None,
            "beyond_hpa": beaten["hpa"] is None,
            "beaten_by": {k: v.setting for k, v in beaten.items() if v is not None},
            "cost_ratio": ratio,
            "violation_share": share,
            "within_clairvoyant": ratio <= cost_ratio and share <= violation_share,
        }

    def to_dict(self) -> dict[str, Any]:
        fronts = {name: [p.setting for p in self.front(name)] for name in SWEEPS}
        return {"trace": self.trace, "duration": self.duration,
                "points": [vars(p) for p in self.points], "frontiers": fronts,
                "clairvoyant_cost": self.clairvoyant_cost, "clairvoyant": vars(self.clairvoyant)}


def trace_frontier(trace: Trace, base: PolicyParams, cfg: SimConfig) -> TraceFrontier:
    """Sweep every policy on ``trace`` (same jobs for every run), plus ``base`` itself as
    the erlang default, plus the clairvoyant schedule replayed in the simulator."""
    runs = [(name, label, params) for name in SWEEPS for label, params in sweep(base, name)]
    runs.append(("erlang", "default", replace(base, policy="erlang")))
    points = []
    for name, label, params in runs:
        result = simulate(trace, params, cfg)
        points.append(Point(name, label, result.worker_seconds, result.sla_violation_seconds,
                            default=label == "default"))
    schedule = clairvoyant_for(trace, base, cfg)
    ideal = simulate_schedule(trace, schedule, cfg)
    return TraceFrontier(
        trace.name, trace.duration, tuple(points), schedule_cost(schedule, trace.duration),
        Point("clairvoyant", "", ideal.worker_seconds, ideal.sla_violation_seconds))


def clairvoyant_for(trace: Trace, params: PolicyParams, cfg: SimConfig) -> Schedule:
    """The clairvoyant schedule of ``trace`` under ``cfg`` (its SLA and its accounting
    interval, startup delay and service time) and the pool's bounds. Rates: the trace's
    nominal segment rates, or its arrivals per interval when it lists arrivals."""
    count = math.ceil(trace.duration / cfg.interval)
    if trace.arrivals is not None:
        rates = [0.0] * count
        for t in trace.arrival_times():
            rates[min(int(t // cfg.interval), count - 1)] += 1 / cfg.interval
    else:
        rates = interval_rates(((s.start, s.end, s.rate) for s in trace.segments),
                               cfg.interval, count)
    needs = interval_needs(rates, cfg.service_time, cfg.sla_wait, params)
    return clairvoyant_schedule(needs, cfg.interval, cfg.startup_delay, trace.duration)


# --- tables and the plot --------------------------------------------------------------

FRONTIER_HEADER = ("policy", "setting", "worker-s", "x clairvoyant", "SLA-viol s", "% of time")


def frontier_rows(result: TraceFrontier) -> tuple[list[tuple[object, ...]], tuple[str, ...]]:
    """One trace's frontier table: the clairvoyant (exact cost, then its simulated run),
    each policy's frontier points, cheapest first, and the erlang default (marked ``*``
    when it is itself on the erlang frontier)."""
    ideal = result.clairvoyant_cost

    def row(point: Point, setting: str) -> tuple[object, ...]:
        share = point.violation_seconds / result.duration
        return (point.policy, setting, round(point.worker_seconds),
                f"{point.worker_seconds / ideal:.2f}" if ideal else "-",
                round(point.violation_seconds), f"{share:.1%}")

    rows = [("clairvoyant", "exact minimum cost", round(ideal), "1.00", "-", "-"),
            row(result.clairvoyant, "simulated")]
    for name in SWEEPS:
        rows += [row(p, p.setting) for p in result.front(name)]
    ours = result.default
    mark = "*" if beats(ours, result.front("erlang")) is None else ""
    rows.append(row(ours, f"DEFAULT{mark}"))
    return rows, FRONTIER_HEADER


def plot_frontiers(results: Sequence[TraceFrontier], path: str | Path) -> Path:
    """Draw each trace's frontiers in a panel of its own (worker-seconds against
    SLA-violation seconds), the clairvoyant point and the erlang default marked. The file
    type follows the suffix (.svg, .png). Needs matplotlib; UsageError if missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError(
            "plotting needs matplotlib, which is not installed: pip install matplotlib"
        ) from exc
    columns = min(2, len(results))
    rows = math.ceil(len(results) / columns)
    fig = Figure(figsize=(6 * columns, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, result in zip(axes, results, strict=False):
        _panel(ax, result)
    for ax in axes[len(results):]:
        ax.set_visible(False)
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def _panel(ax: Any, result: TraceFrontier) -> None:
    for name in SWEEPS:
        every = [p for p in result.points if p.policy == name and not p.default]
        line = ax.plot([p.worker_seconds for p in result.front(name)],
                       [p.violation_seconds for p in result.front(name)],
                       marker="o", drawstyle="steps-post", label=f"{name} frontier")[0]
        ax.scatter([p.worker_seconds for p in every], [p.violation_seconds for p in every],
                   s=10, alpha=0.35, color=line.get_color())
    ours, ideal = result.default, result.clairvoyant
    ax.scatter([ours.worker_seconds], [ours.violation_seconds], marker="*", s=180,
               color="black", zorder=5, label="erlang default")
    ax.scatter([ideal.worker_seconds], [ideal.violation_seconds], marker="D", s=60,
               color="red", zorder=5, label="clairvoyant (simulated)")
    ax.axvline(result.clairvoyant_cost, color="red", linestyle=":", linewidth=1,
               label="clairvoyant cost")
    ax.set_xscale("log")
    ax.set_title(f"trace {result.trace}")
    ax.set_xlabel("worker-seconds")
    ax.set_ylabel("SLA-violation seconds")
    ax.legend(loc="upper right", fontsize="small")
