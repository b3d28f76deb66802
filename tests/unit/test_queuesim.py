"""Trace parsing and the seeded flex-pool simulator."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gridtool.errors import UsageError
from gridtool.pools.erlang import mean_wait
from gridtool.pools.flex import Decision, LoadSample, PolicyParams
from gridtool.pools.queuesim import (
    Segment,
    SimConfig,
    SimResult,
    Trace,
    count_reversals,
    dump_trace_csv,
    load_trace,
    parse_trace,
    plot,
    simulate,
    simulate_policies,
    simulate_schedule,
)

SPIKE = Trace(
    "spike",
    600.0,
    segments=(Segment(0, 200, 5.0), Segment(200, 400, 25.0), Segment(400, 600, 5.0)),
)
PARAMS = PolicyParams(max_workers=80, target_kind="mean_wait", target=0.5)
CONFIG = SimConfig(service_time=1.0, sla_wait=0.5, initial_workers=7, seed=3)


# --- traces -----------------------------------------------------------------------------


def test_parse_csv_segments_with_comments() -> None:
    text = "# a comment\nstart,end,rate\n0,60,2.5\n\n60,120,10\n"
    trace = parse_trace(text, name="t")
    assert trace.duration == 120
    assert trace.segments == (Segment(0, 60, 2.5), Segment(60, 120, 10))
    assert trace.rate_at(30) == 2.5 and trace.rate_at(60) == 10 and trace.rate_at(500) == 0
    assert parse_trace(dump_trace_csv(trace), name="t") == trace


def test_parse_explicit_arrivals_csv_and_json() -> None:
    csv_trace = parse_trace("time\n0.5\n1.5\n7\n", name="a")
    assert csv_trace.arrivals == (0.5, 1.5, 7.0)
    doc = {"name": "j", "duration": 20, "arrivals": [3, 1, 2]}
    json_trace = parse_trace(json.dumps(doc), fmt="json")
    assert (json_trace.name, json_trace.duration) == ("j", 20.0)
    assert json_trace.arrival_times() == [1.0, 2.0, 3.0]


def test_parse_json_segments() -> None:
    trace = parse_trace('{"segments": [[0, 10, 1], [10, 30, 4]]}', name="s", fmt="json")
    assert trace.duration == 30 and trace.rate_at(15) == 4


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("begin,end,rate\n0,1,1\n", "csv"),
        ("start,end,rate\n0,1\n", "csv"),
        ("start,end,rate\n5,1,1\n", "csv"),
        ("start,end,rate\n0,1,-3\n", "csv"),
        ("start,end,rate\n0,x,1\n", "csv"),
        ('{"segments": 3}', "json"),
        ("{", "json"),
        ("start,end,rate\n0,1,1\n", "yaml"),
    ],
)
def test_parse_rejects_bad_traces(text: str, fmt: str) -> None:
    with pytest.raises(ValueError):
        parse_trace(text, fmt=fmt)


def test_load_trace_files(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("start,end,rate\n0,100,3\n")
    assert load_trace(path).name == "mine"
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(UsageError, match=r"bad\.json"):
        load_trace(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="missing"):
        load_trace(tmp_path / "missing.csv")


def test_sample_traces_load() -> None:
    root = Path(__file__).resolve().parents[2] / "bench" / "traces"
    for name in ("steady", "spike", "diurnal", "bursty"):
        path = root / f"{name}.csv"
        assert path.stat().st_size < 10_000
        assert load_trace(path).duration == 3600
    assert load_trace(root / "spike.csv").step_ups(4.0) == [600.0]


def test_step_ups() -> None:
    assert SPIKE.step_ups(4.0) == [200]
    assert SPIKE.step_ups(6.0) == []


def test_count_reversals() -> None:
    assert count_reversals([]) == 0
    assert count_reversals([1, 0, 3, 0, 2]) == 0
    assert count_reversals([2, 0, -1, 1, 0, -3]) == 3


# --- simulation -------------------------------------------------------------------------


def test_simulation_is_deterministic_for_a_seed() -> None:
    first = simulate(SPIKE, PARAMS, CONFIG)
    again = simulate(SPIKE, PARAMS, CONFIG)
    assert first == again
    assert first.to_dict() == again.to_dict()
    other = simulate(SPIKE, PARAMS, replace(CONFIG, seed=4))
    assert other.to_dict() != first.to_dict()


def test_policies_see_the_same_jobs() -> None:
    results = simulate_policies(SPIKE, PARAMS, ("erlang", "classic", "hpa"), CONFIG)
    assert [r.policy for r in results] == ["erlang", "classic", "hpa"]
    assert len({r.jobs for r in results}) == 1
    arrivals = {tuple(p.arrival_rate for p in r.series) for r in results}
    assert len(arrivals) == 1


def test_fixed_pool_matches_erlang_c() -> None:
    trace = Trace("steady", 7200.0, segments=(Segment(0, 7200, 8.0),))
    fixed = PolicyParams(policy="classic", min_workers=10, max_workers=10)
    result = simulate(trace, fixed, SimConfig(service_time=1.0, seed=11))
    assert result.worker_seconds == pytest.approx(10 * 7200)
    assert result.scale_ups == result.scale_downs == result.reversals == 0
    assert abs(result.jobs - 8 * 7200) < 4 * (8 * 7200) ** 0.5
    assert result.mean_wait == pytest.approx(mean_wait(10, 8.0, 1.0), rel=0.2)


def test_erlang_reacts_to_the_spike_and_counts_cost() -> None:
    erlang, classic = simulate_policies(SPIKE, PARAMS, ("erlang", "classic"), CONFIG)
    assert erlang.samples_to_scale_up(200) == 1
    assert erlang.sla_violation_seconds < classic.sla_violation_seconds
    peak = max(p.workers for p in erlang.series)
    assert peak >= 25
    assert 7 * 600 < erlang.worker_seconds < peak * 600


def test_a_surge_is_decided_at_the_feeders_next_reading_by_the_feeders_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gridtool.pools import feed

    SPIKE_AT = 203.0  # 3 s into an interval: a period report sees it 7 s later
    trace = Trace("spike", 600.0, segments=(Segment(0, SPIKE_AT, 5.0),
                                            Segment(SPIKE_AT, 400, 25.0)))
    def first_up(result: SimResult) -> Decision:
        return next(d for d in result.decisions if d.timestamp > SPIKE_AT and d.change > 0)

    period = simulate(trace, PARAMS, CONFIG)
    assert first_up(period).timestamp == 210.0 and period.edge_reports == 0
    calls: list[tuple[int, float]] = []
    shipped = feed.surge

    def rule(last: LoadSample, arrivals: int, elapsed: float, **z: float) -> bool:
        calls.append((arrivals, elapsed))
        return shipped(last, arrivals, elapsed, **z)

    monkeypatch.setattr(feed, "surge", rule)  # the feeder's rule is the one it calls
    probed = simulate(trace, PARAMS, replace(CONFIG, probe=1.0))
    first = first_up(probed)
    assert SPIKE_AT < first.timestamp <= SPIKE_AT + 2  # a reading or two in, not 7 s
    # sized for the surge's own rate (its report starts at the last calm reading), not
    # for the 10 s mean of calm and surge
    assert first.arrival_rate > 15 and first.desired >= 25 and probed.edge_reports >= 1
    assert calls and all(0 < e < CONFIG.period for _, e in calls)  # between period reports
    assert probed.sla_violation_seconds <= period.sla_violation_seconds
    # the spike's two intervals wait far less (2.4 s and 1.2 s against 4.7 s and 2.9 s;
    # both are over the SLA either way: it is seen 1 s in, the workers start 5 s later)
    waits = {p.time: p.mean_wait or 0.0 for p in period.series}
    assert all((p.mean_wait or 0.0) < waits[p.time] / 1.5
               for p in probed.series if p.time in (210.0, 220.0))
    # the accounting stays per 10 s interval whatever the readings
    assert len(probed.series) == len(period.series) == 60


def test_startup_delay_keeps_new_workers_starting() -> None:
    slow_start = replace(CONFIG, startup_delay=15.0, initial_workers=1)
    result = simulate(SPIKE, PARAMS, slow_start)
    first, second = result.decisions[0], result.decisions[1]
    assert first.change > 0
    assert second.starting == first.change and second.ready == 1


def test_a_warm_set_wakes_first_and_is_refilled_as_the_keeper_does() -> None:
    """Warm workers are ready ``wake_delay`` after the scale-up, cold ones after the
    start-up; the round refills the set with clones that boot (costing worker-seconds),
    are put to sleep by the first round that sees them booted and can be woken from the
    round after; asleep workers cost no worker-seconds and are counted apart."""
    slow = replace(CONFIG, startup_delay=15.0, initial_workers=None)
    steps = [(0.0, 1), (10.0, 3), (20.0, 5), (40.0, 7)]
    cold = simulate_schedule(SPIKE, steps, slow)
    warm = simulate_schedule(SPIKE, steps, replace(slow, warm=2))
    at = {p.time: (p.ready, p.workers) for p in warm.series}
    assert at[20.0] == (3, 5), "2 woken at once at 10 s; the 2 more at 20 s are cold"
    assert {p.time: p.ready for p in cold.series}[20.0] == 1
    assert at[30.0] == (3, 5), "the refills of 10 s boot, sleep at 30 s: none awake yet"
    assert at[50.0] == (7, 7), "the refills were woken at 40 s"
    assert {p.time: p.ready for p in cold.series}[50.0] == 5
    # the same provisioning, plus 2 refills at 10 s and 2 at 40 s booting for 20 s each
    assert warm.worker_seconds - cold.worker_seconds == pytest.approx(80.0)
    assert cold.asleep_seconds == 0 and warm.asleep_seconds == pytest.approx(
        2 * 10 + 2 * (600 - 70))


def test_empty_pool_censors_waits() -> None:
    trace = Trace("t", 100.0, segments=(Segment(0, 100, 1.0),))
    none = PolicyParams(policy="classic", min_workers=0, max_workers=0)
    result = simulate(trace, none, SimConfig(seed=1, sla_wait=0.5))
    assert result.worker_seconds == 0
    assert result.jobs > 0 and result.mean_wait > 10
    assert result.sla_violation_seconds == 100


def test_explicit_arrivals_are_replayed() -> None:
    trace = Trace("a", 50.0, arrivals=(1.0, 2.0, 2.5, 40.0, 60.0))
    result = simulate(trace, PARAMS, SimConfig(initial_workers=1, period=10.0))
    assert result.jobs == 4  # the one at 60 s is past the end
    assert [p.arrival_rate for p in result.series][:2] == [0.3, 0.0]


def test_result_to_dict_is_json() -> None:
    result = simulate(SPIKE, PARAMS, CONFIG)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["policy"] == "erlang"
    assert len(data["series"]["time"]) == len(data["series"]["workers"]) == 60
    assert set(result.summary()) >= {"sla_violation_seconds", "worker_seconds", "reversals"}


# --- plotting ---------------------------------------------------------------------------


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = simulate_policies(SPIKE, PARAMS, ("erlang", "classic"), CONFIG)
    out = plot(results, tmp_path / "flex.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError, match="matplotlib"):
        plot([], tmp_path / "x.png")
