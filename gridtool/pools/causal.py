"""What any causal flex policy can reach on a trace with sudden steps up: a bound.

A causal policy decides at its samples from what it has measured. At a step up of the
arrival rate (a jump by at least :data:`STEP_FACTOR`), nothing it has seen says the
step is coming, so the workers it has until the first reading that shows it (see
:func:`detection`) and the startup delay after it are the ones it holds in calm time.

The *informed oracle* is a schedule better placed than any causal policy: it knows the
whole trace, except that it learns of each step only at the first reading after the
step (the feeder's next reading when it reports a surge at once, else the next period's
sample), and until then holds a constant floor (at least what the calm load needs). From that
sample on it is clairvoyant again, adding at once the workers that drain the queue the
step built within ``drain`` seconds of their start-up. It sizes every interval for the
SLA times its own ``margin`` (like the erlang policy's headroom for one interval's
noise). Sweeping floor, margin and drain and replaying each schedule in the simulator on
the same jobs gives the cost/violation points this family reaches; a causal policy whose
calm-time size varies is, on average over where the steps fall, a mix of floors.
:func:`causal_bound` reports the cheapest point within the violation share, and the
fewest violations within the cost ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gridtool.pools.flex import PolicyParams
from gridtool.pools.frontier import (
    Schedule,
    clairvoyant_schedule,
    interval_needs,
    interval_rates,
    schedule_cost,
)
from gridtool.pools.queuesim import SimConfig, Trace, simulate_schedule

#: A rise of the arrival rate by at least this factor from one segment to the next is a
#: step that no earlier sample foretells.
STEP_FACTOR = 1.5
#: The oracle's sweep: its sizing margin, queue drain time (s), floor above the calm need.
MARGINS = (1.0, 0.7, 0.5, 0.35)
DRAINS = (5.0,)
FLOOR_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16)


def _level(schedule: Schedule, t: float) -> int:
    return next(n for at, n in reversed(schedule) if at <= t)


def oracle_schedule(
    needs: Sequence[int], steps: Sequence[tuple[float, float]], cfg: SimConfig,
    duration: float, floor: int, drain: float,
) -> Schedule:
    """The informed oracle's provisioning as ``(time, workers)`` steps.

    ``needs`` are per-interval worker needs (the oracle's sizing), ``steps`` the
    ``(time, rate)`` of each unforeseen step up. Outside the blind spans it provisions
    ``max(floor, clairvoyant)``; in a blind span ``[step - delay, first reading after the
    step)`` it cannot have started anything for the step, so it holds what it held
    before; from that reading it adds, for ``drain`` seconds after their start-up, the
    workers that empty the queue the step built by then.
    """
    delay, detect = cfg.startup_delay, detection(cfg)
    full = clairvoyant_schedule(needs, cfg.interval, delay, duration)
    cuts = {at for at, _ in full} | {0.0}
    spans: list[tuple[float, float, int, float, int]] = []
    for at, rate in steps:
        seen = (math.floor(at / detect) + 1) * detect
        held = max(floor, _level(full, max(0.0, at - delay - 1e-9)) if at > delay else floor)
        ready = seen + delay
        backlog = max(0.0, rate * (ready - at) - held * (ready - at) / cfg.service_time)
        extra = math.ceil(backlog * cfg.service_time / drain)
        spans.append((max(0.0, at - delay), seen, held, ready + drain, extra))
        cuts |= {max(0.0, at - delay), seen, ready + drain}
    steps_out: Schedule = []
    for t in sorted(c for c in cuts if c < duration):
        workers = max(floor, _level(full, t))
        for start, seen, held, drained, extra in spans:
            if start <= t < seen:
                workers = held
            elif seen <= t < drained:
                workers = max(floor, _level(full, t)) + extra
        if not steps_out or steps_out[-1][1] != workers:
            steps_out.append((t, workers))
    return steps_out


def detection(cfg: SimConfig) -> float:
    """How often a causal policy can learn of a step: at each of the feeder's readings
    (``probe``: a surge is reported at once), else at each period's report."""
    return cfg.probe if cfg.probe > 0 else cfg.period


@dataclass(frozen=True)
class OraclePoint:
    """One informed-oracle run: its settings, cost and SLA-violation seconds."""

    floor: int
    margin: float
    drain: float
    worker_seconds: float
    violation_seconds: float


@dataclass(frozen=True)
class CausalBound:
    """The informed oracle's reach on one trace, against the clairvoyant cost."""

    trace: str
    duration: float
    steps: int
    clairvoyant_cost: float
    points: tuple[OraclePoint, ...]

    def cheapest_within(self, violation_share: float) -> OraclePoint | None:
        """The cheapest run with at most this share of the time in violation."""
        ok = [p for p in self.points if p.violation_seconds <= violation_share * self.duration]
        return min(ok, key=lambda p: p.worker_seconds, default=None)

    def fewest_within(self, cost_ratio: float) -> OraclePoint | None:
        """The run with the fewest violation seconds at most this cost ratio."""
        ok = [p for p in self.points if p.worker_seconds <= cost_ratio * self.clairvoyant_cost]
        return min(ok, key=lambda p: (p.violation_seconds, p.worker_seconds), default=None)

    def summary(self, cost_ratio: float, violation_share: float) -> dict[str, Any]:
        """The two extreme points as ratios and shares, and whether the target is
        reachable at all by the family (some run within both)."""
        cheap, few = self.cheapest_within(violation_share), self.fewest_within(cost_ratio)
        return {
            "trace": self.trace, "steps": self.steps,
            "min_cost_ratio_at_share": (cheap.worker_seconds / self.clairvoyant_cost
                                        if cheap else None),
            "min_share_at_cost_ratio": (few.violation_seconds / self.duration
                                        if few else None),
            "reachable": any(p.worker_seconds <= cost_ratio * self.clairvoyant_cost
                             and p.violation_seconds <= violation_share * self.duration
                             for p in self.points),
        }


def unforeseen_steps(trace: Trace) -> list[tuple[float, float]]:
    """``(time, new rate)`` of every rise by at least :data:`STEP_FACTOR`."""
    times = trace.step_ups(STEP_FACTOR)
    return [(t, trace.rate_at(t)) for t in times]


def causal_bound(trace: Trace, params: PolicyParams, cfg: SimConfig) -> CausalBound | None:
    """Sweep the informed oracle (floor, margin, drain) on ``trace``, replaying each run
    in the simulator; None for traces without an unforeseen step."""
    steps = unforeseen_steps(trace)
    if not steps:
        return None
    count = math.ceil(trace.duration / cfg.interval)
    rates = interval_rates(((s.start, s.end, s.rate) for s in trace.segments), cfg.interval,
                           count)
    exact = interval_needs(rates, cfg.service_time, cfg.sla_wait, params)
    ideal = schedule_cost(clairvoyant_schedule(exact, cfg.interval, cfg.startup_delay,
                                               trace.duration), trace.duration)
    points = []
    for margin in MARGINS:
        needs = interval_needs(rates, cfg.service_time, cfg.sla_wait * margin, params)
        calm = min(needs)
        for lift in FLOOR_STEPS:
            for drain in DRAINS:
                floor = params.clamp(calm + lift)
                schedule = oracle_schedule(needs, steps, cfg, trace.duration, floor, drain)
                run = simulate_schedule(trace, schedule, cfg, name="oracle")
                points.append(OraclePoint(floor, margin, drain, run.worker_seconds,
                                          run.sla_violation_seconds))
    return CausalBound(trace.name, trace.duration, len(steps), ideal, tuple(points))
