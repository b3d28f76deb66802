"""Flex policies: plain-data types, each policy's rules, and properties over all policies."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.pools.erlang import servers_needed
from gridtool.pools.flex import (
    POLICIES,
    POLICY_NAMES,
    Decision,
    FlexState,
    LoadSample,
    PolicyParams,
    decide,
    get_policy,
)

PERIOD = 10.0


def sample(
    t: float,
    arrivals: int,
    workers: int,
    *,
    starting: int = 0,
    queue: int = 0,
    service: float = 1.0,
    busy: float | None = None,
) -> LoadSample:
    """A sample whose busy time follows the load unless given."""
    if busy is None:
        busy = min(arrivals * service, workers * PERIOD)
    return LoadSample(
        timestamp=t,
        interval=PERIOD,
        arrivals=arrivals,
        completions=arrivals,
        busy_seconds=busy,
        mean_service_time=service,
        queue_depth=queue,
        workers=workers,
        starting=starting,
    )


def run(
    params: PolicyParams, samples: list[LoadSample], state: FlexState | None = None
) -> tuple[list[Decision], FlexState]:
    state = state or FlexState()
    decisions = []
    for s in samples:
        decision, state = decide(state, s, s.timestamp, params)
        decisions.append(decision)
    return decisions, state


# --- plain data -------------------------------------------------------------------------


def test_load_sample_service_time_and_round_trip() -> None:
    s = LoadSample(timestamp=5.0, interval=10.0, arrivals=30, completions=20, busy_seconds=50.0)
    assert s.arrival_rate == 3.0
    assert s.service_time() == 2.5
    assert replace(s, mean_service_time=4.0).service_time() == 4.0
    assert LoadSample(timestamp=0, interval=1, arrivals=0).service_time() is None
    assert LoadSample.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize(
    "bad",
    [
        {"interval": 0.0},
        {"arrivals": -1},
        {"workers": -2},
        {"busy_seconds": -1.0},
        {"mean_service_time": 0.0},
    ],
)
def test_load_sample_validation(bad: dict) -> None:
    values = {"timestamp": 0.0, "interval": 10.0, "arrivals": 1} | bad
    with pytest.raises(ValueError):
        LoadSample(**values)


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown"):
        LoadSample.from_dict({"timestamp": 0, "interval": 1, "arrivals": 0, "cpu": 3})
    with pytest.raises(ValueError, match="unknown"):
        PolicyParams.from_dict({"policy": "erlang", "speed": 9})


@pytest.mark.parametrize(
    "bad",
    [
        {"policy": "magic"},
        {"min_workers": 5, "max_workers": 2},
        {"target": 0.0},
        {"target_kind": "p99"},
        {"tolerance": 1.0},
        {"classic_down": 0.95},
        {"hpa_target_utilization": 1.5},
    ],
)
def test_params_validation(bad: dict) -> None:
    with pytest.raises(ValueError, match="invalid PolicyParams"):
        PolicyParams(**bad)


def test_params_and_state_round_trip_through_json() -> None:
    params = PolicyParams(policy="hpa", max_workers=40, target_kind="mean_wait", target=0.5)
    assert PolicyParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    decisions, state = run(PolicyParams(), [sample(10 * k, 100, 12) for k in range(1, 15)])
    assert FlexState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert json.loads(json.dumps(decisions[-1].to_dict()))["desired"] == decisions[-1].desired


def test_decision_to_dict_has_no_infinities() -> None:
    params = PolicyParams(min_workers=0, max_workers=0)
    decision, _ = decide(FlexState(), sample(10, 50, 0), 10, params)
    data = decision.to_dict()
    assert data["intensity"] is None and data["predicted_mean_wait"] is None
    json.dumps(data, allow_nan=False)


def test_registry() -> None:
    assert tuple(POLICIES) == POLICY_NAMES == ("erlang", "classic", "hpa")
    assert get_policy("hpa") is POLICIES["hpa"]
    with pytest.raises(ValueError, match="unknown flex policy"):
        get_policy("nope")
    decision, _ = decide(FlexState(), sample(10, 100, 12), 10, PolicyParams(policy="classic"))
    assert decision.policy == "classic"


# --- erlang -----------------------------------------------------------------------------

ERLANG = PolicyParams(max_workers=200, target_kind="mean_wait", target=0.5)


def steady_state(
    params: PolicyParams, workers: int = 12, until: int = 40, arrivals: int = 100
) -> FlexState:
    """Feed a constant load (default 10 arrivals/s: 10 erlangs) for a while."""
    return run(params, [sample(PERIOD * k, arrivals, workers) for k in range(1, until)])[1]


def test_erlang_sizes_by_erlang_c() -> None:
    decision, _ = decide(steady_state(ERLANG), sample(400, 100, 12), 400, ERLANG)
    assert decision.offered_load == pytest.approx(10.0, rel=1e-3)
    assert decision.smoothed_rate == pytest.approx(10.0, rel=1e-3)
    assert decision.recommended == servers_needed(10.0, 1.0, 0.5, kind="mean_wait") == 12
    assert decision.desired == 12
    assert decision.intensity == pytest.approx(10 / 12, rel=1e-3)
    assert decision.predicted_mean_wait <= 0.5


def test_erlang_fresh_state_starts_from_a_cautious_estimate() -> None:
    # one 10 s sample of 100 arrivals: Poisson sd of the rate is 1/s, so start lower
    decision, state = decide(FlexState(), sample(10, 100, 12), 10, ERLANG)
    assert 7.0 <= decision.smoothed_rate < 10.0
    assert decision.desired == 12  # the window starts with the current size: no cut
    assert state.fast_rate == 10.0 and state.slow_rate == pytest.approx(7.0)


def test_erlang_scales_up_at_once_on_a_spike() -> None:
    state = steady_state(ERLANG)
    decision, _ = decide(state, sample(400, 500, 12, queue=300), 400, ERLANG)
    assert decision.change > 0
    assert decision.desired >= 40  # reacts to most of the 5x step within one sample
    assert "scale up" in decision.reason


def test_erlang_counts_starting_workers_as_capacity() -> None:
    state = steady_state(ERLANG)
    first, state = decide(state, sample(400, 500, 12), 400, ERLANG)
    started = first.desired - 12
    # the next sample sees the same load while the new workers are still starting
    again, _ = decide(state, sample(410, 500, 12, starting=started), 410, ERLANG)
    assert again.current == first.desired
    assert again.desired - again.current <= again.recommended - first.desired + 1
    assert again.desired <= max(first.desired, again.recommended)


def test_erlang_holds_through_a_dip_within_noise_for_the_window() -> None:
    params = replace(ERLANG, tolerance=0.0)  # only the window holds
    state = steady_state(params, workers=23, until=30, arrivals=200)
    low_start = 300.0  # 20/s -> 15/s: below the 3 sd gate of one sample's noise
    low = [sample(low_start + PERIOD * k, 150, 23) for k in range(1, 40)]
    decisions, _ = run(params, low, state)
    assert any(d.recommended < 23 for d in decisions[:5])  # within the window
    downs = [d for d in decisions if d.change < 0]
    assert downs, "never scaled down"
    assert downs[0].timestamp >= low_start + params.down_window - PERIOD
    assert "window" in downs[0].reason


def test_erlang_scales_down_at_once_after_a_significant_drop() -> None:
    # 50/s -> 10/s is far beyond one sample's noise: the window's burst-time
    # recommendations no longer hold the pool (they did for down_window before)
    state = steady_state(ERLANG, workers=60, until=30, arrivals=500)
    first, _ = decide(state, sample(310, 100, 60), 310, ERLANG)
    assert first.change < 0
    assert first.desired <= 25
    assert first.smoothed_rate < 20


def test_erlang_gives_a_burst_back_at_once_on_a_drop_report_and_forgets_it() -> None:
    # calm 10/s, a burst at 30/s sized for, then the feeder's drop report 3 s after the
    # burst ended (10/s, marked as a change): believed at once, not through the fast
    # EWMA's 3 s inertia (which still said 18/s and held the burst's workers)
    state = steady_state(ERLANG)
    burst = [sample(400 + PERIOD * k, 300, 40) for k in range(3)]
    decisions, state = run(ERLANG, burst, state)
    assert decisions[-1].desired >= servers_needed(30.0, 1.0, 0.5, kind="mean_wait")
    report = replace(sample(423, 30, 40), interval=3.0, busy_seconds=30.0, surge=True)
    ended, state = decide(state, report, 423, ERLANG)
    assert ended.smoothed_rate < 16 and ended.desired <= 18
    # and the slow level restarts at the new one: the next period's estimate is the calm
    # rate, not the slow EWMA still remembering the burst
    after, _ = decide(state, sample(430, 100, ended.desired), 430, ERLANG)
    assert after.smoothed_rate == pytest.approx(10.0, abs=1.0)


def test_erlang_sizes_beyond_its_estimate_by_the_measured_forecast_error() -> None:
    # a constant load: each sample is what the estimate said, the headroom fades to ~0
    state = steady_state(ERLANG, until=60)
    calm, _ = decide(state, sample(600, 100, 12), 600, ERLANG)
    assert calm.headroom_rate < 0.05 and calm.recommended == 12
    # a load noisier than Poisson (8/s and 12/s in turn, each within the gates' 3 sd, so
    # the estimate stays near 10/s): each sample misses the estimate by about 2/s, and the
    # measured error becomes headroom: sized for about 12/s, not 10/s
    noisy = [sample(600 + PERIOD * k, 80 if k % 2 else 120, 12) for k in range(1, 41)]
    decisions, _ = run(ERLANG, noisy, state)
    last = decisions[-1]
    assert abs(last.smoothed_rate - 10.0) < 1.0
    assert 1.5 < last.headroom_rate < 2.5
    load = (last.smoothed_rate + last.headroom_rate) * 1.0
    assert last.recommended == servers_needed(load, 1.0, 0.5, kind="mean_wait")
    assert last.recommended > servers_needed(last.smoothed_rate, 1.0, 0.5, kind="mean_wait")
    # a change point adds no error: the jump after a calm spell is sized for its level
    # and leaves the headroom as it was (the gates handle steps, not the margin)
    jump, after = decide(state, sample(610, 300, 12), 610, ERLANG)
    assert jump.headroom_rate == pytest.approx(calm.headroom_rate, abs=0.05)
    assert after.error_var == state.error_var


def test_erlang_projects_a_significant_ramp_past_the_last_sample() -> None:
    # +1/s per sample: the new workers serve a rate beyond the latest evidence
    ramp = [sample(PERIOD * k, 100 + 10 * k, 30) for k in range(1, 12)]
    decisions, _ = run(ERLANG, ramp)
    last = decisions[-1]
    assert last.smoothed_rate > last.arrival_rate + 1.0
    assert last.smoothed_rate <= last.arrival_rate + 1.0 * (1 + ERLANG.lookahead / PERIOD) + 1


def test_erlang_ramp_must_be_confirmed_by_the_latest_sample() -> None:
    ramp = [sample(PERIOD * k, 100 + 10 * k, 30) for k in range(1, 11)]
    _, state = run(ERLANG, ramp)
    fell, _ = decide(state, sample(110, 100, 30), 110, ERLANG)  # back to 10/s: no ramp
    assert fell.smoothed_rate < 19.0  # the line would say 21 + 1.5 x 1


def test_erlang_does_not_project_a_step() -> None:
    # a step is no line: after it the estimate sizes for the new level, not beyond
    step = [sample(PERIOD * k, 100 if k < 8 else 300, 40) for k in range(1, 12)]
    decisions, _ = run(ERLANG, step)
    assert all(d.smoothed_rate <= d.arrival_rate + 0.5 for d in decisions[8:])


def state_fast(state: FlexState, rate: float) -> float:
    """The fast EWMA after one more sample at ``rate``."""
    alpha = 1 - math.exp(-PERIOD / ERLANG.fast_tau)
    return (state.fast_rate or 0.0) + alpha * (rate - (state.fast_rate or 0.0))


def test_erlang_sizes_for_the_new_level_after_a_jump() -> None:
    state = steady_state(ERLANG)
    jump, _ = decide(state, sample(400, 300, 12), 400, ERLANG)
    assert state_fast(state, 30.0) < 30.0
    assert jump.smoothed_rate == pytest.approx(30.0)  # the sample itself, not the EWMA


def test_erlang_believes_a_short_surge_report_and_sizes_for_its_pile_up() -> None:
    # a surge reported at once, 1 s into it: 30 jobs in 1 s against a calm 10/s, no
    # queue yet. The fast EWMA has moved a quarter of the way; the sample is 6 sd above
    # the slow level: the pool is sized for 30/s plus what piles up on the 12 ready
    # workers until new ones start (18/s for 5 s, drained over 5 s).
    state = steady_state(ERLANG)
    surge = replace(sample(391, 30, 12), interval=1.0, busy_seconds=12.0, surge=True)
    decision, _ = decide(state, surge, 391, ERLANG)
    assert decision.smoothed_rate == pytest.approx(30.0)
    assert decision.backlog_rate == pytest.approx((30 - 12) * ERLANG.startup_delay
                                                  / ERLANG.drain_time)
    assert decision.desired > servers_needed(30.0, 1.0, ERLANG.sizing_target,
                                             kind="mean_wait")
    # not marked a surge (a worker's own short report): believed, but no pile-up before
    # a queue shows
    short, _ = decide(state, replace(surge, surge=False), 391, ERLANG)
    assert short.smoothed_rate == pytest.approx(30.0) and short.backlog_rate == 0
    # one calm second is no surge: the estimate stays at the slow level
    calm, _ = decide(state, replace(sample(391, 12, 12), interval=1.0), 391, ERLANG)
    assert calm.smoothed_rate < 11 and calm.desired == 12


def test_erlang_backlog_grows_over_the_startup_delay() -> None:
    # 300 queued, 30/s arriving on 12 ready workers: 90 more before new ones help
    state = steady_state(ERLANG)
    decision, _ = decide(state, sample(400, 300, 12, queue=300), 400, ERLANG)
    growth = (decision.smoothed_rate - 12) * ERLANG.startup_delay
    queued = decision.backlog_rate * ERLANG.drain_time
    assert 300 < queued <= 300 + growth


def test_erlang_backlog_not_hidden_by_a_big_pool() -> None:
    # 52 ready workers just added for a 26/s burst: 61 queued jobs are backlog, not the
    # queue 52 workers would show at their target load
    state = run(ERLANG, [sample(PERIOD * k, 100, 13) for k in range(1, 30)]
                + [sample(300, 260, 13, queue=116)])[1]
    decision, _ = decide(state, sample(310, 290, 52, queue=61), 310, ERLANG)
    assert decision.backlog_rate > 5.0
    assert decision.desired > 40


def test_erlang_tolerance_ignores_small_decreases() -> None:
    state = steady_state(ERLANG, workers=13, until=60)
    decision, _ = decide(state, sample(600, 100, 13), 600, ERLANG)
    assert decision.recommended == 12
    assert decision.desired == 13
    assert "tolerance" in decision.reason or "window" in decision.reason


def test_erlang_bounds() -> None:
    params = replace(ERLANG, min_workers=3, max_workers=20)
    big, _ = decide(FlexState(), sample(10, 5000, 5), 10, params)
    assert big.desired == 20 and big.recommended > 400 and "bounded" in big.reason
    idle, _ = decide(FlexState(), sample(10, 0, 0), 10, params)
    assert idle.desired == 3


def test_erlang_wait_probability_target() -> None:
    params = PolicyParams(target_kind="wait_probability", target=0.2, max_workers=100,
                          margin=1.0)
    state = steady_state(params, workers=56, arrivals=480)
    decision, _ = decide(state, sample(400, 480, 56), 400, params)
    assert decision.recommended == servers_needed(48.0, 1.0, 0.2) == 56
    tight = replace(params, margin=0.5)
    decision, _ = decide(steady_state(tight, workers=56, arrivals=480), sample(400, 480, 56),
                         400, tight)
    assert decision.recommended == servers_needed(48.0, 1.0, 0.1) > 56


def test_erlang_ignores_normal_queue_noise_but_not_backlog() -> None:
    state = steady_state(ERLANG)
    calm, _ = decide(state, sample(400, 100, 12, queue=3), 400, ERLANG)
    assert calm.backlog_rate == 0.0
    jammed, _ = decide(state, sample(400, 100, 12, queue=300), 400, ERLANG)
    assert jammed.backlog_rate > 5.0
    assert jammed.desired > calm.desired


# --- classic ----------------------------------------------------------------------------

CLASSIC = PolicyParams(policy="classic", max_workers=100)


def test_classic_steps_by_one_on_intensity() -> None:
    up, _ = decide(FlexState(), sample(10, 100, 11), 10, CLASSIC)  # 10/11 = 0.91
    assert (up.change, round(up.intensity, 2)) == (1, 0.91)
    hold, _ = decide(FlexState(), sample(10, 100, 12), 10, CLASSIC)  # 0.83
    assert hold.change == 0
    down, _ = decide(FlexState(), sample(10, 100, 21), 10, CLASSIC)  # 0.48
    assert down.change == -1


def test_classic_uses_unweighted_mean_of_last_ten() -> None:
    samples = [sample(PERIOD * k, 100, 12) for k in range(1, 12)]
    samples.append(sample(120, 600, 12))  # 5x spike in the last sample only
    decisions, _ = run(CLASSIC, samples)
    assert decisions[-1].smoothed_rate == pytest.approx((9 * 10 + 60) / 10)
    assert decisions[-1].change == 1  # one step, however large the spike


# --- hpa --------------------------------------------------------------------------------

HPA = PolicyParams(policy="hpa", max_workers=100)


def test_hpa_formula_and_tolerance() -> None:
    # 10 workers 90 % busy, target 70 %: ceil(10 * 0.9 / 0.7) = 13
    d, _ = decide(FlexState(), sample(10, 90, 10, busy=90.0), 10, HPA)
    assert d.desired == 13
    # 75 % busy is within 10 % of 70 %: no change
    d, _ = decide(FlexState(), sample(10, 75, 10, busy=75.0), 10, HPA)
    assert d.desired == 10 and "tolerance" in d.reason


def test_hpa_scale_up_limit_and_stabilized_scale_down() -> None:
    d, _ = decide(FlexState(), sample(10, 1000, 10, busy=100.0), 10, HPA)
    assert d.desired == 15  # busy fraction saturates at 1: ceil(10 * 1 / 0.7)
    low_target = replace(HPA, hpa_target_utilization=0.3)
    d, _ = decide(FlexState(), sample(10, 1000, 10, busy=100.0), 10, low_target)
    assert (d.desired, "rate-limited" in d.reason) == (20, True)  # not 34: at most 2x / +4
    state = run(HPA, [sample(PERIOD * k, 90, 10, busy=90.0) for k in range(1, 3)])[1]
    d, state = decide(state, sample(30, 20, 13, busy=20.0), 30, HPA)
    assert d.recommended < 13 and d.desired == 13 and "stabilized" in d.reason
    later = [sample(30 + PERIOD * k, 20, 13, busy=20.0) for k in range(1, 35)]
    decisions, _ = run(HPA, later, state)
    assert decisions[-1].desired < 13


def test_hpa_starting_workers_count_as_idle() -> None:
    d, _ = decide(FlexState(), sample(10, 100, 10, starting=5, busy=100.0), 10, HPA)
    # ratio over 15 workers: 100 / 150 / 0.7 = 0.95 -> within tolerance
    assert d.desired == 15


# --- properties over every policy -------------------------------------------------------

policies = st.sampled_from(POLICY_NAMES)


@st.composite
def bounded_params(draw: st.DrawFn) -> PolicyParams:
    low = draw(st.integers(min_value=0, max_value=20))
    high = draw(st.integers(min_value=low, max_value=low + 60))
    kind = draw(st.sampled_from(("wait_probability", "mean_wait")))
    target = draw(st.floats(min_value=0.01, max_value=0.9))
    return PolicyParams(
        policy=draw(policies), min_workers=low, max_workers=high, target_kind=kind, target=target
    )


@st.composite
def samples(draw: st.DrawFn, t: float) -> LoadSample:
    workers = draw(st.integers(min_value=0, max_value=80))
    service = draw(st.floats(min_value=0.1, max_value=5.0))
    return sample(
        t,
        draw(st.integers(min_value=0, max_value=800)),
        workers,
        starting=draw(st.integers(min_value=0, max_value=10)),
        queue=draw(st.integers(min_value=0, max_value=500)),
        service=service,
        busy=draw(st.floats(min_value=0.0, max_value=workers * PERIOD)),
    )


@st.composite
def histories(draw: st.DrawFn) -> list[LoadSample]:
    count = draw(st.integers(min_value=1, max_value=12))
    return [draw(samples(PERIOD * k)) for k in range(1, count + 1)]


@settings(max_examples=150, deadline=None)
@given(params=bounded_params(), history=histories())
def test_desired_never_leaves_bounds(params: PolicyParams, history: list[LoadSample]) -> None:
    decisions, _ = run(params, history)
    for d in decisions:
        assert params.min_workers <= d.desired <= params.max_workers


@settings(max_examples=150, deadline=None)
@given(
    params=bounded_params(),
    history=histories(),
    extra_arrivals=st.integers(min_value=0, max_value=800),
    extra_queue=st.integers(min_value=0, max_value=300),
    extra_busy=st.floats(min_value=0.0, max_value=200.0),
)
def test_more_load_never_fewer_workers(
    params: PolicyParams,
    history: list[LoadSample],
    extra_arrivals: int,
    extra_queue: int,
    extra_busy: float,
) -> None:
    *before, last = history
    _, state = run(params, before)
    heavier = replace(
        last,
        arrivals=last.arrivals + extra_arrivals,
        queue_depth=last.queue_depth + extra_queue,
        busy_seconds=(last.busy_seconds or 0.0) + extra_busy,
    )
    light, _ = decide(state, last, last.timestamp, params)
    heavy, _ = decide(state, heavier, last.timestamp, params)
    assert heavy.recommended >= light.recommended
    assert heavy.desired >= light.desired


@settings(max_examples=60, deadline=None)
@given(
    params=bounded_params(),
    arrivals=st.integers(min_value=0, max_value=600),
    service=st.floats(min_value=0.1, max_value=3.0),
    workers=st.integers(min_value=0, max_value=80),
)
def test_no_reversal_under_constant_load(
    params: PolicyParams, arrivals: int, service: float, workers: int
) -> None:
    """Closed loop: new workers start for one sample, then serve; load never changes."""
    assert_no_reversal(params, arrivals, service, workers)


def test_no_reversal_while_a_fresh_estimate_settles() -> None:
    """Found by the property above: the slow level climbs from its deliberately low
    start, those misses were measured as forecast error, the headroom rose (4 -> 5
    workers) and faded once the samples matched (5 -> 4) under an unchanging load."""
    params = PolicyParams(max_workers=5, target_kind="mean_wait", target=0.01)
    assert_no_reversal(params, arrivals=193, service=0.1015625, workers=0)


def assert_no_reversal(params: PolicyParams, arrivals: int, service: float,
                       workers: int) -> None:
    state, ready, starting, signs = FlexState(), workers, 0, []
    for k in range(1, 80):
        s = sample(PERIOD * k, arrivals, ready, starting=starting, service=service)
        decision, state = decide(state, s, s.timestamp, params)
        if decision.change:
            signs.append(math.copysign(1, decision.change))
        ready, starting = _apply(ready, starting, decision.change)
    assert all(a == b for a, b in pairwise(signs)), signs


def _apply(ready: int, starting: int, change: int) -> tuple[int, int]:
    """Starting workers become ready; a change adds starting ones or removes workers."""
    ready += starting
    if change >= 0:
        return ready, change
    return ready + change, 0
