"""The pure pool planner: replacing lost workers, growing, shrinking (overflow first,
newest first), bounds, load aggregation and the flex step; properties over random pools."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.pools.flex import FlexState, LoadSample, PolicyParams, decide
from gridtool.pools.rules import (
    ENGINE_NUMBERS,
    Clone,
    Forget,
    HostInfo,
    MemberClass,
    MemberView,
    Plan,
    PoolSpec,
    PoolStatus,
    Remove,
    aggregate,
    all_reported,
    busy_sources,
    classify,
    engine_numbers,
    flex_step,
    plan,
    removal_order,
    target_size,
)
from gridtool.registry.model import DecodeError
from gridtool.registry.records import decode, encode

NOW = 1_000_000.0
SPEC = PoolSpec("web", "tmpl", min=2, max=10, desired=4)
HOSTS = (HostInfo("hv1"), HostInfo("hv2"), HostInfo("ov1", overflow=True))


def member(i: int, host: str = "hv1", state: str = "running", age: float = 100.0) -> MemberView:
    return MemberView(f"u{i}", f"web-{i}", host, NOW - age, state)


def kinds(p: Plan) -> list[str]:
    return [type(a).__name__ for a in p.actions]


def test_at_size_does_nothing() -> None:
    p = plan(SPEC, 4, [member(i) for i in range(4)], HOSTS, now=NOW)
    assert p.actions == () and (p.ready, p.starting, p.target) == (4, 0, 4)


def test_grows_to_size_avoiding_draining_hosts() -> None:
    hosts = (HostInfo("hv1"), HostInfo("hv2", draining=True))
    p = plan(SPEC, 4, [member(1)], hosts, now=NOW)
    assert p.actions == (Clone(3, ("hv2",), "1 of 4 workers"),)


def test_target_is_clamped_to_min_and_max() -> None:
    assert plan(SPEC, 50, [], HOSTS, now=NOW).actions[0].count == 10
    p = plan(SPEC, 0, [member(i) for i in range(5)], HOSTS, now=NOW)
    assert p.target == 2 and kinds(p) == ["Remove"] * 3


def test_lost_members_are_forgotten_and_replaced() -> None:
    members = [member(1), member(2), member(3, "dead"), member(4, "dead")]
    p = plan(SPEC, 4, members, HOSTS, now=NOW)
    assert p.lost == 2 and p.ready == 2
    assert p.actions[0] == Clone(2, (), "2 of 4 workers")  # replacements first
    assert [(type(a), a.uuid) for a in p.actions[1:]] == [(Forget, "u3"), (Forget, "u4")]


def test_starting_counts_as_capacity_and_broken_is_replaced() -> None:
    members = [member(1), member(2, state="shutoff", age=5), member(3, state="missing", age=5),
               member(4, state="crashed", age=300)]
    p = plan(SPEC, 4, members, HOSTS, now=NOW)
    assert (p.ready, p.starting, p.broken) == (1, 2, 1)
    assert p.actions[0] == Clone(1, (), "3 of 4 workers")
    assert p.actions[1] == Remove("u4", "web-4", "hv1", "state crashed after 30 s")


def test_shrink_removes_draining_then_overflow_then_newest() -> None:
    hosts = (HostInfo("hv1"), HostInfo("hv2", draining=True), HostInfo("ov1", overflow=True))
    members = [member(1, age=500), member(2, age=10), member(3, "ov1", age=900),
               member(4, "hv2", age=1000), member(5, age=50)]
    order = [m.uuid for m in removal_order(members, {h.name: h for h in hosts})]
    assert order == ["u4", "u3", "u2", "u5", "u1"]
    p = plan(SPEC, 2, members, hosts, now=NOW)
    assert [a.uuid for a in p.actions] == ["u4", "u3", "u2"]
    assert all(isinstance(a, Remove) and a.reason == "shrink to 2" for a in p.actions)


def test_busy_workers_go_after_idle_ones_on_the_same_kind_of_host() -> None:
    reports = [LoadSample(NOW - 20, 10, 5, 5, 9.0, source="web-2"),
               LoadSample(NOW - 10, 10, 5, 5, 1.0, source="web-2"),  # latest: idle
               LoadSample(NOW - 10, 10, 8, 8, None, 1.0, source="web-3"),  # 8 s of 10
               LoadSample(NOW - 10, 10, 8, 8, 9.0, source="web-4")]
    busy = busy_sources(reports)
    assert busy == {"web-3", "web-4"}
    members = [replace(member(i, "ov1" if i == 4 else "hv1", age=100 - i),
                       busy=f"web-{i}" in busy) for i in (1, 2, 3, 4)]
    order = [m.uuid for m in removal_order(members, {h.name: h for h in HOSTS})]
    assert order == ["u4", "u2", "u1", "u3"]  # overflow first even if busy, then idle


def test_clone_count_bounded_by_room() -> None:
    hosts = (HostInfo("hv1", free_memory_mib=300), HostInfo("hv2", free_memory_mib=128),
             HostInfo("hv3", draining=True, free_memory_mib=4096))
    p = plan(SPEC, 6, [], hosts, now=NOW, worker_memory_mib=128)
    assert p.actions == (Clone(3, ("hv3",), "0 of 6 workers"),) and p.short == 3
    full = plan(SPEC, 6, [], hosts[2:], now=NOW, worker_memory_mib=128)
    assert full.actions == () and full.short == 6


def test_classify() -> None:
    live = {h.name: h for h in HOSTS}
    assert classify(member(1), live, NOW) is MemberClass.READY
    assert classify(member(1, "gone"), live, NOW) is MemberClass.LOST
    assert classify(member(1, state="shutoff", age=1), live, NOW) is MemberClass.STARTING
    assert classify(member(1, state="shutoff", age=31), live, NOW) is MemberClass.BROKEN


def test_spec_validation_and_records_round_trip() -> None:
    assert SPEC.problems() == []
    assert "min <= max" in PoolSpec("p", "t", 5, 2, 3).problems()[0]
    assert "outside [2, 5]" in PoolSpec("p", "t", 2, 5, 9).problems()[0]
    assert "policy" in PoolSpec("p", "t", 1, 2, 1, policy="magic").problems()[0]
    assert "unknown PolicyParams" in PoolSpec("p", "t", 1, 2, 1, "flex",
                                              {"nope": 1}).problems()[0]
    flex = PoolSpec("p", "t", 1, 9, 1, "flex", {"target_kind": "mean_wait", "target": 0.5})
    assert flex.params().max_workers == 9 and flex.params().target == 0.5
    assert decode(PoolSpec, "k", encode(flex)) == flex
    sample = LoadSample(NOW, 10.0, 5, 4, None, 0.5, 1, source="w1")
    assert decode(LoadSample, "k", encode(sample)) == sample
    with pytest.raises(DecodeError, match="min"):
        decode(PoolSpec, "k", b'{"v":1,"name":"p","template":"t","min":"x","max":1,'
                              b'"desired":1}')


def test_a_round_is_due_once_every_recent_reporter_reported_since_the_last() -> None:
    a, b = (LoadSample(NOW - 1, 10, 5, 5, source="a"), LoadSample(NOW - 6, 10, 5, 5, source="b"))
    since = NOW - 3  # the last round
    assert all_reported([a], since, NOW, 15)  # one reporter: at each of its reports
    assert not all_reported([a, b], since, NOW, 15)  # b's report is before the round
    assert all_reported([a, replace(b, timestamp=NOW - 0.5)], since, NOW, 15)
    assert all_reported([a, replace(b, timestamp=NOW - 20)], since, NOW, 15), \
        "a reporter gone quiet for longer than the window is not waited for"
    assert not all_reported([replace(a, timestamp=since)], since, NOW, 15)
    assert not all_reported([], since, NOW, 15)


def test_a_round_without_reports_leaves_the_decided_until_where_it_was() -> None:
    from gridtool.pools.keeper import _decided_until

    flex = replace(SPEC, policy="flex")
    before = PoolStatus("web", NOW - 4, 4, 4, 0, samples_until=NOW - 9)
    decision = decide(FlexState(), LoadSample(NOW, 10, 50, 50, 20.0), NOW,
                      flex.params())[0]
    assert _decided_until(flex, before, None, NOW) == NOW - 9  # the next load: 9+ s
    assert _decided_until(flex, before, decision, NOW) == NOW
    assert _decided_until(flex, None, None, NOW) == 0.0  # first round: every live report
    assert _decided_until(SPEC, before, None, NOW) == 0.0  # fixed pools keep none


def test_aggregate_adds_reporters_and_is_robust_to_cadence() -> None:
    reports = [LoadSample(NOW - 12, 10, 100, 90, 45.0, source="a"),  # before the round
               LoadSample(NOW - 9, 10, 50, 50, 25.0, source="a"),
               LoadSample(NOW - 1, 10, 70, 50, 25.0, source="a"),  # two of "a" in the round
               LoadSample(NOW - 2, 5, 10, 10, None, 2.0, queue_depth=3, source="b")]
    load = aggregate(reports, NOW - 10, NOW)
    assert load is not None and load.interval == 10
    # a: 120 arrivals over 20 s = 6/s; b: 10 over 5 s = 2/s -> 8/s over the 10 s round
    assert load.arrivals == 80 and load.completions == 110
    assert load.service_time() == pytest.approx((25 + 25 + 20) / 110)
    assert load.queue_depth == 3
    assert aggregate(reports, NOW, NOW + 10) is None


def test_a_surge_report_starts_its_reporters_rate_anew() -> None:
    # pool feed on a surge: the calm 4 s before it (10/s), then 1 s of the surge (30/s)
    calm = LoadSample(NOW - 1, 4, 40, source="feed:q")
    surge = LoadSample(NOW, 1, 30, source="feed:q", surge=True)
    other = LoadSample(NOW - 2, 5, 10, source="w1")  # another reporter: 2/s, as before
    load = aggregate([calm, surge, other], NOW - 5, NOW)
    assert load is not None and load.arrival_rate == pytest.approx(30 + 2)
    without = aggregate([calm, replace(surge, surge=False), other], NOW - 5, NOW)
    assert without is not None and without.arrival_rate == pytest.approx(14 + 2)
    assert decode(LoadSample, "k", encode(surge)).surge


def test_flex_step_scales_up_at_once_and_holds_without_reports() -> None:
    spec = PoolSpec("p", "t", 1, 50, 2, "flex")
    load = aggregate([LoadSample(NOW, 10, 200, 200, 200.0, source="w")], NOW - 10, NOW)
    decision, state = flex_step(spec, FlexState(), load, 2, 0, NOW)
    assert decision is not None and decision.desired > 20 and decision.change > 0
    assert flex_step(spec, state, None, 2, 0, NOW + 10) == (None, state)
    status = PoolStatus("p", NOW, decision.desired, 2, 0, decision=decision.to_dict())
    assert target_size(spec, status) == decision.desired
    assert target_size(spec, None) == 2
    assert target_size(replace(spec, max=5), status) == 5


# --- properties -----------------------------------------------------------------------

host_names = st.sampled_from(["hv1", "hv2", "ov1", "ov2", "gone"])
members_st = st.lists(
    st.builds(lambda i, h, s, age, b: MemberView(f"u{i}", f"w{i}", h, NOW - age, s, b),
              st.integers(0, 10_000), host_names,
              st.sampled_from(["running", "shutoff", "missing", "paused", "crashed"]),
              st.floats(0, 1000), st.booleans()),
    max_size=25, unique_by=lambda m: m.uuid)
hosts_st = st.lists(st.builds(HostInfo, host_names.filter(lambda h: h != "gone"),
                              st.booleans(), st.booleans(), st.integers(0, 2048)),
                    min_size=1, max_size=4, unique_by=lambda h: h.name)
bounds = st.tuples(st.integers(0, 12), st.integers(0, 12)).map(sorted)


def apply(p: Plan, members: list[MemberView]) -> list[MemberView]:
    """Members after the plan, clones landing as starting workers."""
    gone = {a.uuid for a in p.actions if isinstance(a, Remove | Forget)}
    kept = [m for m in members if m.uuid not in gone]
    for a in p.actions:
        if isinstance(a, Clone):
            kept += [MemberView(f"new{i}", f"new{i}", "hv1", NOW, "shutoff")
                     for i in range(a.count)]
    return kept


@settings(max_examples=300, deadline=None)
@given(members_st, hosts_st, bounds, st.integers(-5, 30))
def test_property_size_within_bounds_and_idempotent(members, hosts, mm, target) -> None:
    spec = PoolSpec("p", "t", mm[0], mm[1], mm[0])
    hosts = [*hosts, HostInfo("hv1")] if "hv1" not in {h.name for h in hosts} else hosts
    p = plan(spec, target, members, hosts, now=NOW)
    assert spec.min <= p.target <= spec.max
    after = apply(p, members)
    healthy = [m for m in after if m.host in {h.name for h in hosts}
               and classify(m, {h.name: h for h in hosts}, NOW) is not MemberClass.BROKEN]
    assert len(healthy) == p.target  # exactly at size: never outside [min, max]
    again = plan(spec, target, after, hosts, now=NOW)
    assert again.actions == ()  # at size: nothing more to do


@settings(max_examples=300, deadline=None)
@given(members_st, hosts_st, bounds, st.integers(0, 30))
def test_property_shrink_empties_overflow_first_and_newest_first(members, hosts, mm,
                                                                 target) -> None:
    spec = PoolSpec("p", "t", mm[0], mm[1], mm[0])
    live = {h.name: h for h in hosts}
    p = plan(spec, target, members, hosts, now=NOW)
    shrunk = {a.uuid for a in p.actions if isinstance(a, Remove) and a.reason.startswith("shrink")}
    if not shrunk:
        return
    healthy = [m for m in members
               if classify(m, live, NOW) in (MemberClass.READY, MemberClass.STARTING)]
    kept = [m for m in healthy if m.uuid not in shrunk]
    for gone in (m for m in healthy if m.uuid in shrunk):
        g = live[gone.host]
        for k in kept:
            h = live[k.host]
            # no kept worker sits on a "more removable" host, nor is idle where a busy one
            # went, nor newer than a removed one of its kind
            assert (h.draining, h.overflow) <= (g.draining, g.overflow)
            if (h.draining, h.overflow) == (g.draining, g.overflow):
                assert k.busy >= gone.busy
                if k.busy == gone.busy:
                    assert k.created_at <= gone.created_at


# --- the numbers an outside policy engine reads ---------------------------------------


def test_engine_numbers_from_a_decision() -> None:
    spec = PoolSpec("api", "w", 2, 4, 2, "fixed")
    sample = LoadSample(100.0, 10.0, arrivals=80, completions=80, busy_seconds=40.0,
                        workers=2, starting=1)
    decision, _ = decide(FlexState(), sample, 100.0, PolicyParams(max_workers=50))
    flex = {"from": "reports", "at": 100.0, **decision.to_dict()}
    numbers = engine_numbers(spec, flex)
    assert set(numbers) == set(ENGINE_NUMBERS)
    assert numbers["arrival_rate"] == 8.0 and numbers["service_time"] == 0.5
    assert numbers["smoothed_rate"] == decision.smoothed_rate < 8.0  # a fresh estimate
    assert numbers["intensity"] == pytest.approx(decision.smoothed_rate * 0.5)
    assert numbers["utilization"] == pytest.approx(numbers["intensity"] / 3)
    assert decision.recommended > 4 and numbers["recommended"] == 4  # the pool's max
    last = numbers["last_decision"]
    assert (last["from"], last["at"], last["current"], last["direction"]) == (
        "reports", 100.0, 3, "up" if decision.desired > 3 else "hold")
    assert engine_numbers(spec, {}) == {}
    # a decision recorded before the measured rate was kept: the smoothed one stands in
    old = {k: v for k, v in flex.items() if k != "arrival_rate"}
    assert engine_numbers(spec, old)["arrival_rate"] == decision.smoothed_rate
    empty = decide(FlexState(), replace(sample, workers=0, starting=0), 100.0,
                   PolicyParams())[0]
    assert engine_numbers(spec, {"from": "manager", "at": 1.0,
                                 **empty.to_dict()})["utilization"] is None
