"""The clairvoyant schedule (against an exhaustive search), the sweeps and the frontiers."""

from __future__ import annotations

import functools
import itertools

import pytest

from gridtool.pools.erlang import mean_wait, servers_needed
from gridtool.pools.flex import PolicyParams
from gridtool.pools.frontier import (
    SWEEPS,
    Point,
    beats,
    clairvoyant_for,
    clairvoyant_schedule,
    interval_needs,
    interval_rates,
    pareto,
    schedule_cost,
    sweep,
)
from gridtool.pools.queuesim import Segment, SimConfig, Trace, simulate_schedule

# --- the clairvoyant schedule against every schedule --------------------------------------


def cheapest_by_search(needs: tuple[int, ...], period: int, delay: int) -> int:
    """The least worker-seconds over every schedule, on a 1 s grid: each worker is off,
    or on for s seconds (ready once s >= delay; those on at time 0 are ready at once).
    Workers are alike, so a state is the sorted tuple of their statuses; the search
    tries every next status of every worker (off, start, keep on) at every second."""
    steps = len(needs) * period
    workers = max(needs, default=0) + 1  # one spare: the search may use it, never needs it
    off = -1

    def choices(status: int, t: int) -> tuple[int, ...]:
        if status == off:
            return (off, delay if t == 0 else 0)  # start: ready at once only at time 0
        return (off, min(status + 1, delay))

    @functools.cache
    def best(t: int, state: tuple[int, ...]) -> float:
        if t == steps:
            return 0
        cheapest = float("inf")
        for nxt in itertools.product(*(choices(s, t) for s in state)):
            ready = sum(1 for s in nxt if s != off and s >= delay)
            if ready < needs[t // period]:
                continue
            paid = sum(1 for s in nxt if s != off)
            cheapest = min(cheapest, paid + best(t + 1, tuple(sorted(nxt))))
        return cheapest

    start = tuple([off] * workers)
    # at time 0 the statuses are chosen from "off": time 0 starts are ready at once
    return int(best(0, start))


TINY = [needs for needs in itertools.product(range(3), repeat=3)]


@pytest.mark.parametrize("delay", [0, 1, 2, 3])
def test_clairvoyant_is_the_cheapest_schedule(delay: int) -> None:
    for needs in TINY:
        schedule = clairvoyant_schedule(needs, 2, delay, 6)
        exact = schedule_cost(schedule, 6)
        assert exact == cheapest_by_search(needs, 2, delay), (needs, delay, schedule)


def test_clairvoyant_envelope_by_hand() -> None:
    # need 2, 0, 0, 5, 1 per 10 s; 5 s delay: the 5 are bought at 25, the gap 10..25
    # stays empty, the last interval keeps 1 of them
    schedule = clairvoyant_schedule([2, 0, 0, 5, 1], 10.0, 5.0, 50.0)
    assert schedule == [(0.0, 2), (10.0, 0), (25.0, 5), (40.0, 1)]
    assert schedule_cost(schedule, 50.0) == 2 * 10 + 5 * 15 + 1 * 10
    # a gap shorter than the delay is cheaper to keep than to restart
    assert clairvoyant_schedule([3, 0, 3], 10.0, 15.0, 30.0) == [(0.0, 3)]
    assert clairvoyant_schedule([3, 0, 3], 10.0, 0.0, 30.0) == [(0.0, 3), (10.0, 0),
                                                                (20.0, 3)]


def test_clairvoyant_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        clairvoyant_schedule([1], 0.0, 1.0, 10.0)
    with pytest.raises(ValueError):
        clairvoyant_schedule([1], 10.0, -1.0, 10.0)
    assert clairvoyant_schedule([], 10.0, 5.0, 10.0) == [(0.0, 0)]


def test_interval_rates_and_needs() -> None:
    rates = interval_rates([(0, 15, 10.0), (15, 30, 20.0)], 10.0, 3)
    assert rates == pytest.approx([10.0, 15.0, 20.0])
    params = PolicyParams(min_workers=1, max_workers=30)
    needs = interval_needs([0.0, *rates, 1000.0], 1.0, 0.5, params)
    assert needs[0] == 1 and needs[-1] == 30  # bounded by the pool
    assert needs[1:4] == [servers_needed(r, 1.0, 0.5, kind="mean_wait") for r in rates]
    assert all(mean_wait(n, r, 1.0) <= 0.5 < mean_wait(n - 1, r, 1.0)
               for n, r in zip(needs[1:4], rates, strict=True))


def test_clairvoyant_run_in_the_simulator() -> None:
    trace = Trace("step", 600.0, segments=(Segment(0, 300, 8.0), Segment(300, 600, 16.0)))
    cfg = SimConfig(service_time=1.0, startup_delay=5.0, period=10.0, sla_wait=0.5, seed=3)
    params = PolicyParams(min_workers=1, max_workers=50)
    schedule = clairvoyant_for(trace, params, cfg)
    low, high = (servers_needed(r, 1.0, 0.5, kind="mean_wait") for r in (8.0, 16.0))
    assert schedule == [(0.0, low), (295.0, high)]
    result = simulate_schedule(trace, schedule, cfg)
    assert result.worker_seconds == pytest.approx(schedule_cost(schedule, 600.0))
    assert result.scale_ups == 1 and result.scale_downs == 0
    assert [p.workers for p in result.series][29:31] == [high, high]
    assert [p.ready for p in result.series][28:30] == [low, high]
    with pytest.raises(ValueError):
        simulate_schedule(trace, [(5.0, 1)], cfg)


# --- sweeps and frontiers -------------------------------------------------------------


def test_sweep_covers_the_grid() -> None:
    base = PolicyParams()
    for policy, grid in SWEEPS.items():
        settings = sweep(base, policy)
        size = 1
        for values in grid.values():
            size *= len(values)
        assert len(settings) == size == len({label for label, _ in settings})
        assert {p.policy for _, p in settings} == {policy}
    labels = dict(sweep(base, "classic"))
    assert labels["classic_up=0.6,classic_window=1"].classic_down == pytest.approx(0.5)
    assert labels["classic_up=0.6,classic_window=3"].classic_window == 3


def test_pareto_and_beats() -> None:
    points = [Point("p", "a", 10, 50), Point("p", "b", 20, 10), Point("p", "c", 20, 30),
              Point("p", "d", 30, 10), Point("p", "e", 40, 0)]
    front = pareto(points)
    assert [p.setting for p in front] == ["a", "b", "e"]
    assert beats(Point("x", "", 25, 20), front) == points[1]
    assert beats(Point("x", "", 20, 10), front) is None  # equal: on the frontier
    assert beats(Point("x", "", 15, 20), front) is None  # cheaper than b: beyond
    assert beats(Point("x", "", 50, 5), front) == points[4]
