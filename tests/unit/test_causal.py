"""The informed oracle: its schedule by hand, and its sweep on a small trace."""

from __future__ import annotations

from gridtool.pools.causal import (
    DRAINS,
    FLOOR_STEPS,
    MARGINS,
    causal_bound,
    oracle_schedule,
    unforeseen_steps,
)
from gridtool.pools.flex import PolicyParams
from gridtool.pools.queuesim import SimConfig, parse_trace

CFG = SimConfig(service_time=1.0, startup_delay=5.0, period=10.0, sla_wait=0.5,
                initial_workers=7, seed=3)
PARAMS = PolicyParams(max_workers=200, target_kind="mean_wait", target=0.5)


def test_oracle_is_blind_until_the_first_sample_after_a_step() -> None:
    needs = [2, 2, 2, 6, 6, 2, 2, 2]
    # the clairvoyant starts the 4 extra workers at 25; the oracle cannot before the
    # sample at 40 shows the step; then it adds what drains the queue of 15 s at 6/s on
    # 2 workers (60 jobs) within 5 s: 12 more, until 50
    schedule = oracle_schedule(needs, [(30.0, 6.0)], CFG, 80.0, floor=2, drain=5.0)
    assert schedule == [(0.0, 2), (40.0, 18), (50.0, 2)]
    # a higher floor holds through the blind span
    held = oracle_schedule(needs, [(30.0, 6.0)], CFG, 80.0, floor=6, drain=5.0)
    assert held == [(0.0, 6)]


def test_unforeseen_steps_are_big_rises_only() -> None:
    trace = parse_trace("start,end,rate\n0,50,5\n50,60,6\n60,90,20\n90,200,5\n")
    assert unforeseen_steps(trace) == [(60.0, 20.0)]
    assert causal_bound(parse_trace("start,end,rate\n0,100,5\n"), PARAMS, CFG) is None


def test_causal_bound_sweeps_and_pays_for_the_blind_span() -> None:
    trace = parse_trace("start,end,rate\n0,150,5\n150,200,25\n200,400,5\n", name="step")
    bound = causal_bound(trace, PARAMS, CFG)
    assert bound is not None and bound.steps == 1
    assert len(bound.points) == len(MARGINS) * len(FLOOR_STEPS) * len(DRAINS)
    lowest = min(bound.points, key=lambda p: p.floor)
    highest = max(bound.points, key=lambda p: (p.floor, -p.margin))
    assert lowest.violation_seconds >= 20  # the step's interval and the one after it
    assert highest.violation_seconds < lowest.violation_seconds
    assert highest.worker_seconds > lowest.worker_seconds
    summary = bound.summary(1.3, 0.05)
    assert summary["trace"] == "step" and summary["reachable"] in (True, False)
    cheap = bound.cheapest_within(1.0)
    assert cheap is not None and cheap.worker_seconds == min(p.worker_seconds
                                                             for p in bound.points)
