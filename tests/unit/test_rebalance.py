"""Tests of the pure rebalance and drain planners: examples plus hypothesis properties."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.placement.rebalance import (
    Move,
    Stuck,
    balanced_hosts,
    drain_plan,
    imbalance,
    mean_use_pct,
    plan_rebalance,
    use_pct,
)
from gridtool.placement.rules import (
    DEFAULT_POLICY,
    GuestNeeds,
    HostView,
    PlacementPolicy,
    add_guest,
    passes,
    remove_guest,
)

PROPS = settings(max_examples=100, deadline=None)
STRICT = PlacementPolicy(cpu_ratio=1.0)  # generated clusters are valid under every policy


def host(name: str, total: int = 16384, cpus: int = 8, guests: Sequence[GuestNeeds] = (), **kw):
    """A host whose free memory is exactly what its guests leave."""
    h = HostView(name, total, total, cpus, **kw)
    for g in guests:
        h = add_guest(h, g)
    return h


def vm(name: str, memory: int, group: str | None = None, movable: bool = True) -> GuestNeeds:
    return GuestNeeds(name, memory, 1, anti_affinity=group, movable=movable)


# --------------------------------------------------------------------------- strategies

_GUEST_SPEC = st.tuples(
    st.sampled_from([512, 1024, 2048, 4096, 6144]),
    st.integers(0, 3),  # vcpus
    st.sampled_from([None, None, "web", "db"]),
    st.sampled_from([True, True, True, True, False]),  # movable
    st.sampled_from([frozenset(), frozenset(), frozenset({"san-a"})]),  # storage
)
_HOST_SPEC = st.tuples(
    st.sampled_from([8192, 16384, 32768]),
    st.sampled_from([2, 4, 8]),
    st.sampled_from([frozenset(), frozenset(), frozenset({"overflow"})]),
    st.sampled_from([frozenset({"san-a"}), frozenset({"san-a"}), frozenset()]),
    st.sampled_from([True] * 9 + [False]),  # up
    st.sampled_from([False] * 9 + [True]),  # draining
    st.lists(_GUEST_SPEC, max_size=10),
)


def _host(i: int, spec: tuple) -> HostView:
    total, cpus, labels, storage, up, draining, guest_specs = spec
    h = HostView(f"h{i}", total, total, cpus, labels=labels, storage=storage)
    for j, (memory, vcpus, group, movable, needs) in enumerate(guest_specs):
        g = GuestNeeds(f"h{i}g{j}", memory, vcpus, needs, group, movable=movable)
        if passes(g, h, STRICT):
            h = add_guest(h, g)
    return replace(h, up=up, draining=draining)


clusters = st.lists(_HOST_SPEC, min_size=1, max_size=8).map(
    lambda specs: [_host(i, spec) for i, spec in enumerate(specs)]
)
policies = st.builds(
    PlacementPolicy,
    memory_ratio=st.sampled_from([1.0, 1.25]),
    cpu_ratio=st.sampled_from([1.0, 4.0]),
)


def within_capacity(h: HostView, policy: PlacementPolicy) -> bool:
    return (
        h.used_memory_mib <= h.total_memory_mib * policy.memory_ratio
        and h.vcpus_allocated <= h.cpus * policy.cpu_ratio
    )


def anti_affinity_holds(hosts: Sequence[HostView]) -> bool:
    return all(
        max(Counter(g.anti_affinity for g in h.guests if g.anti_affinity).values(), default=0) <= 1
        for h in hosts
    )


def guest_names(hosts: Sequence[HostView]) -> Counter[str]:
    return Counter(g.name for h in hosts for g in h.guests)


# --------------------------------------------------------------------------- properties


@PROPS
@given(clusters, st.sampled_from([0.0, 5.0, 10.0, 25.0]), st.integers(0, 12), policies)
def test_rebalance_plan_is_safe_and_never_increases_imbalance(
    hosts: list[HostView], threshold: float, max_moves: int, policy: PlacementPolicy
) -> None:
    plan = plan_rebalance(hosts, threshold, max_moves, policy)
    assert len(plan.moves) <= max_moves
    balanced = {h.name for h in balanced_hosts(hosts, policy)}
    state = {h.name: h for h in hosts}
    for move in plan.moves:  # replay: every step is legal when it happens
        g = next(g for g in state[move.source].guests if g.name == move.guest)
        assert g.movable and move.gain_mib > 0
        assert {move.source, move.target} <= balanced and move.source != move.target
        assert passes(g, state[move.target], policy)
        state[move.source] = remove_guest(state[move.source], g.name)
        state[move.target] = add_guest(state[move.target], g)
    assert list(state.values()) == list(plan.hosts_after)
    assert all(within_capacity(h, policy) for h in plan.hosts_after)
    assert anti_affinity_holds(plan.hosts_after)
    assert guest_names(plan.hosts_after) == guest_names(hosts)
    after = balanced_hosts(plan.hosts_after, policy)
    mean = mean_use_pct(balanced_hosts(hosts, policy))
    assert plan.mean_pct == pytest.approx(mean) == pytest.approx(mean_use_pct(after))
    assert plan.imbalance_after == pytest.approx(imbalance(after, mean))
    assert plan.imbalance_after <= plan.imbalance_before + 1e-9
    for h in after:
        distance = abs(use_pct(h) - mean)
        if distance > threshold + 1e-3:
            assert h.name in plan.unresolved
        elif distance < threshold - 1e-3:
            assert h.name not in plan.unresolved
    assert plan == plan_rebalance(hosts, threshold, max_moves, policy)  # deterministic


@PROPS
@given(clusters, st.data(), policies)
def test_drain_plan_moves_guests_off_the_host_safely(
    hosts: list[HostView], data: st.DataObject, policy: PlacementPolicy
) -> None:
    drained = data.draw(st.sampled_from(hosts)).name
    plan = drain_plan(drained, hosts, policy)
    before = next(h for h in hosts if h.name == drained)
    moved, stuck = [m.guest for m in plan.moves], [s.guest for s in plan.stuck]
    assert sorted(moved + stuck) == sorted(g.name for g in before.guests)
    assert all(m.source == drained and m.target != drained for m in plan.moves)
    assert all(g.name in stuck for g in before.guests if not g.movable)
    after = {h.name: h for h in plan.hosts_after}
    assert sorted(g.name for g in after[drained].guests) == sorted(stuck)
    assert after[drained].draining
    for m in plan.moves:
        assert m.guest in {g.name for g in after[m.target].guests}
    assert all(within_capacity(h, policy) for h in plan.hosts_after)
    assert anti_affinity_holds(plan.hosts_after)
    assert guest_names(plan.hosts_after) == guest_names(hosts)


# --------------------------------------------------------------------------- examples


def test_moves_the_guest_that_best_closes_the_gap() -> None:
    hot = host("hot", guests=[vm("big", 8192), vm("mid", 4096), vm("small", 2048)])
    cold = host("cold")
    plan = plan_rebalance([hot, cold], threshold_pct=10.0)
    # mean 43.75 %: moving "big" puts both hosts in band in one move
    assert [(m.guest, m.source, m.target) for m in plan.moves] == [("big", "hot", "cold")]
    assert plan.mean_pct == pytest.approx(43.75)
    assert (plan.imbalance_before, plan.imbalance_after) == pytest.approx((43.75, 6.25))
    assert (plan.outside_before, plan.outside_after) == (2, 0)
    assert plan.moves[0].gain_mib == pytest.approx(2 * (14336 - 0.5375 * 16384))


def test_balanced_cluster_needs_no_moves() -> None:
    hosts = [host("a", guests=[vm("x", 4096)]), host("b", guests=[vm("y", 5120)])]
    plan = plan_rebalance(hosts, threshold_pct=5.0)
    assert plan.moves == () and plan.hosts_after == tuple(hosts)
    assert plan.imbalance_before == plan.imbalance_after == pytest.approx(3.125)


def test_max_moves_and_fewest_moves() -> None:
    hot = host("hot", guests=[vm(f"g{i}", 2048) for i in range(7)])
    hosts = [hot, host("c1"), host("c2")]
    full = plan_rebalance(hosts, threshold_pct=10.0, max_moves=50)
    # band is 3140..6417 MiB: "hot" must shed at least 4 of its 2048 MiB guests
    assert len(full.moves) == 4 and full.outside_after == 0
    assert [h.used_memory_mib for h in full.hosts_after] == [6144, 4096, 4096]
    assert plan_rebalance(hosts, threshold_pct=10.0, max_moves=1).moves == full.moves[:1]
    assert plan_rebalance(hosts, threshold_pct=10.0, max_moves=0).moves == ()
    with pytest.raises(ValueError):
        plan_rebalance(hosts, threshold_pct=-1.0)


def test_never_moves_pinned_guests_or_breaks_anti_affinity() -> None:
    hot = host("hot", guests=[vm("pinned", 8192, movable=False), vm("web1", 4096, "web")])
    peer = host("peer", guests=[vm("web2", 1024, "web")])
    plan = plan_rebalance([hot, peer], threshold_pct=5.0)
    assert plan.moves == () and plan.unresolved == ("hot", "peer")
    free = host("free")
    plan = plan_rebalance([hot, peer, free], threshold_pct=5.0)
    assert [(m.guest, m.target) for m in plan.moves] == [("web1", "free")]


def test_never_increases_imbalance_even_when_a_move_would_swap_the_extremes() -> None:
    hosts = [host("a", guests=[vm("only", 12288)]), host("b")]
    plan = plan_rebalance(hosts, threshold_pct=10.0)
    assert plan.moves == () and plan.imbalance_after == plan.imbalance_before == 37.5


def test_refuses_a_helpful_move_that_would_overshoot_a_small_host() -> None:
    g = GuestNeeds("g", 3072, 1, storage=frozenset({"san-a"}))
    hosts = [
        host("src", total=32768, storage={"san-a"}, guests=[g, vm("pin1", 19866, movable=False)]),
        host("small", total=8192, storage={"san-a"}, guests=[vm("pin2", 3686, movable=False)]),
        host("huge", total=1048576, guests=[vm("pin3", 524288, movable=False)]),  # no san-a
    ]
    # g -> small removes out-of-band MiB (src 70 % -> 61 %) but puts small at 82.5 %,
    # farther from the ~50.6 % mean than src ever was: imbalance would grow
    plan = plan_rebalance(hosts, threshold_pct=10.0)
    assert plan.moves == () and plan.imbalance_after == plan.imbalance_before


def test_overflow_draining_and_down_hosts_are_left_alone() -> None:
    hosts = [
        host("hot", guests=[vm("a", 6144), vm("b", 6144)]),
        host("warm", guests=[vm("c", 2048)]),
        host("ovf", labels={"overflow"}),
        host("drn", draining=True),
        host("down", up=False),
    ]
    plan = plan_rebalance(hosts, threshold_pct=5.0)
    assert plan.mean_pct == pytest.approx(100 * 14336 / 32768)
    assert [(m.guest, m.target) for m in plan.moves] == [("a", "warm")]
    assert plan.hosts_after[2:] == tuple(hosts[2:])


def test_drain_plan_places_largest_first_and_explains_stuck_guests() -> None:
    source = host(
        "src",
        guests=[vm("web1", 4096, "web"), vm("pin", 512, movable=False), vm("huge", 10240)],
    )
    hosts = [
        source,
        host("peer", total=8192, guests=[vm("web2", 1024, "web")]),
        host("spare", total=8192),
    ]
    plan = drain_plan("src", hosts)
    assert plan.moves == (Move("web1", "src", "spare"),)
    assert plan.stuck == (
        Stuck("huge", "no host passes the filters (draining on 1, memory on 3)"),
        Stuck("pin", "guest is not movable"),
    )
    assert [g.name for g in plan.hosts_after[0].guests] == ["pin", "huge"]
    assert use_pct(plan.hosts_after[2]) == 50.0
    with pytest.raises(KeyError):
        drain_plan("nope", hosts, DEFAULT_POLICY)
