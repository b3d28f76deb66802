"""Tests of the pure placement allocator: examples plus hypothesis properties."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.placement.rules import (
    DEFAULT_POLICY,
    FILTER_CODES,
    Fleet,
    GuestNeeds,
    HostView,
    Placement,
    PlacementPolicy,
    Weigher,
    add_guest,
    apply_placement,
    explain,
    is_overflow,
    passes,
    passing,
    place,
    place_many,
    remove_guest,
    score,
    tiebreak,
    verdicts,
)

PROPS = settings(max_examples=100, deadline=None)

LABELS = ("ssd", "gpu", "overflow")
STORAGE = ("san-a", "san-b")
GROUPS = ("web", "db", "cache")


def host(name: str, total: int = 16384, free: int | None = None, cpus: int = 8, **kw) -> HostView:
    """A host with sensible defaults (all memory free unless told)."""
    return HostView(name, total, total if free is None else free, cpus, **kw)


def guest(name: str = "vm", memory: int = 1024, vcpus: int = 1, **kw) -> GuestNeeds:
    return GuestNeeds(name, memory, vcpus, **kw)


# --------------------------------------------------------------------------- strategies


def _subsets(items: Sequence[str], max_size: int) -> list[frozenset[str]]:
    return [frozenset(c) for n in range(max_size + 1) for c in combinations(items, n)]


# Cheap flat strategies (sampled_from over precomputed values) keep generation fast.
_GUEST_SPEC = st.tuples(
    st.integers(0, 24).map(lambda n: n * 512),  # memory
    st.integers(0, 12),  # vcpus
    st.sampled_from(_subsets(STORAGE, 1)),
    st.sampled_from([None, *GROUPS]),
    st.sampled_from([frozenset(), frozenset(), *_subsets(LABELS[:2], 1)[1:]]),  # required
    st.sampled_from(_subsets(LABELS[:2], 2)),  # preferred
    st.sampled_from([True, True, True, True, False]),  # movable
)


def _guest(name: str, spec: tuple) -> GuestNeeds:
    memory, vcpus, storage, group, required, preferred, movable = spec
    return GuestNeeds(name, memory, vcpus, storage, group, required, preferred, movable)


def guests(name: str) -> st.SearchStrategy[GuestNeeds]:
    """A guest whose needs only use a small vocabulary, so filters often collide."""
    return _GUEST_SPEC.map(lambda spec: _guest(name, spec))


def guest_lists(prefix: str, max_size: int) -> st.SearchStrategy[list[GuestNeeds]]:
    """Up to ``max_size`` guests with unique names ``<prefix>0``, ``<prefix>1``, ..."""
    return st.lists(_GUEST_SPEC, max_size=max_size).map(
        lambda specs: [_guest(f"{prefix}{i}", spec) for i, spec in enumerate(specs)]
    )


STRICT = PlacementPolicy(cpu_ratio=1.0)  # clusters are valid under every generated policy


def _host_spec(
    totals: Sequence[int], cpus: Sequence[int], labels: Sequence[frozenset[str]]
) -> st.SearchStrategy[tuple]:
    return st.tuples(
        st.sampled_from(totals),
        st.sampled_from([0, 0, 512]),  # memory not available to guests
        st.sampled_from(cpus),
        st.sampled_from(labels),
        st.sampled_from(_subsets(STORAGE, 2)),
        st.sampled_from([True] * 9 + [False]),  # up
        st.sampled_from([False] * 9 + [True]),  # draining
        st.lists(_GUEST_SPEC, max_size=5),
    )


_HOST_SPEC = _host_spec([4096, 8192, 16384], [1, 2, 4, 8], _subsets(LABELS, 3))
# few profiles, many hosts each: exercises the Fleet index's chunked scans and tie runs
_DENSE_HOST_SPEC = _host_spec([8192], [4], [frozenset(), frozenset({"ssd"}), frozenset(LABELS)])


def _host(i: int, spec: tuple) -> HostView:
    total, overhead, cpus, labels, storage, up, draining, guest_specs = spec
    h = HostView(f"h{i}", total, total - overhead, cpus, labels=labels, storage=storage)
    for j, guest_spec in enumerate(guest_specs):
        g = _guest(f"h{i}g{j}", guest_spec)
        if passes(g, h, STRICT):
            h = add_guest(h, g)
    return replace(h, up=up, draining=draining)


def clusters(
    min_hosts: int = 1, max_hosts: int = 7, spec: st.SearchStrategy[tuple] = _HOST_SPEC
) -> st.SearchStrategy[list[HostView]]:
    """Valid clusters: hosts within capacity, anti-affinity respected, unique guest names."""
    return st.lists(spec, min_size=min_hosts, max_size=max_hosts).map(
        lambda specs: [_host(i, spec) for i, spec in enumerate(specs)]
    )


policies = st.builds(
    PlacementPolicy,
    weigher=st.sampled_from(Weigher),
    memory_ratio=st.sampled_from([1.0, 1.5]),
    cpu_ratio=st.sampled_from([1.0, 4.0]),
    cpu_weight=st.sampled_from([0.0, 0.5]),
    preferred_label_weight=st.sampled_from([0.0, 1.0]),
)


def within_capacity(h: HostView, policy: PlacementPolicy) -> bool:
    return (
        h.used_memory_mib <= h.total_memory_mib * policy.memory_ratio
        and h.vcpus_allocated <= h.cpus * policy.cpu_ratio
    )


def anti_affinity_holds(hosts: Sequence[HostView]) -> bool:
    for h in hosts:
        groups = Counter(g.anti_affinity for g in h.guests if g.anti_affinity is not None)
        if any(n > 1 for n in groups.values()):
            return False
    return True


# --------------------------------------------------------------------------- properties


@PROPS
@given(clusters(), guests("new"), policies)
def test_chosen_host_passes_every_filter_and_ranks_first(
    hosts: list[HostView], g: GuestNeeds, policy: PlacementPolicy
) -> None:
    p = place(g, hosts, policy)
    by_name = {v.host: v for v in p.verdicts}
    if p.host is None:
        assert all(not v.passed for v in p.verdicts)
        assert p.reason
        return
    chosen = by_name[p.host]
    assert chosen.passed and chosen.score is not None
    assert passes(g, next(h for h in hosts if h.name == p.host), policy)
    rivals = [v for v in p.verdicts if v.passed and v.overflow == chosen.overflow]
    assert all(v.score is not None and v.score <= chosen.score for v in rivals)
    equals = [v.host for v in rivals if v.score == chosen.score]
    assert min(equals, key=lambda name: tiebreak(g.name, name)) == p.host
    if chosen.overflow:
        assert not any(v.passed and not v.overflow for v in p.verdicts)


@PROPS
@given(clusters(), guests("new"), policies, st.randoms(use_true_random=False))
def test_placement_is_deterministic_and_order_independent(
    hosts: list[HostView], g: GuestNeeds, policy: PlacementPolicy, rnd: random.Random
) -> None:
    first = place(g, hosts, policy)
    again = place(g, list(hosts), policy)
    assert first == again and first.verdicts == again.verdicts
    shuffled = hosts[:]
    rnd.shuffle(shuffled)
    assert place(g, shuffled, policy).host == first.host


@PROPS
@given(clusters(), guests("new"), policies)
def test_verdicts_agree_with_filters_and_explain(
    hosts: list[HostView], g: GuestNeeds, policy: PlacementPolicy
) -> None:
    vs = verdicts(g, hosts, policy)
    assert [v.host for v in vs] == [h.name for h in hosts]
    assert [h.name for h in passing(g, hosts, policy)] == [v.host for v in vs if v.passed]
    for h, v in zip(hosts, vs, strict=True):
        assert v.failures == explain(g, h, policy)
        assert set(v.codes) <= set(FILTER_CODES) and all(f.reason for f in v.failures)
        assert (v.score is None) == bool(v.failures)
        if v.passed:
            assert v.score == score(g, h, policy)


@PROPS
@given(clusters(), guest_lists("new", 12), policies)
def test_sequential_placement_respects_capacity_and_anti_affinity(
    hosts: list[HostView], new: tuple[GuestNeeds, ...], policy: PlacementPolicy
) -> None:
    placements, after = place_many(new, hosts, policy)
    assert [h.name for h in after] == [h.name for h in hosts]
    assert all(within_capacity(h, policy) for h in after)
    assert anti_affinity_holds(after)
    for p in placements:
        landed = [h.name for h in after if any(x.name == p.guest.name for x in h.guests)]
        assert landed == ([p.host] if p.host else [])


@PROPS
@given(clusters() | clusters(8, 30, _DENSE_HOST_SPEC), guest_lists("new", 10), policies)
def test_fleet_index_places_exactly_like_the_linear_allocator(
    hosts: list[HostView], new: tuple[GuestNeeds, ...], policy: PlacementPolicy
) -> None:
    placements, after = place_many(new, hosts, policy)  # indexed
    current = tuple(hosts)
    for p in placements:
        assert p.host == place(p.guest, current, policy).host
        current = apply_placement(current, p)
    assert after == current


# --------------------------------------------------------------------------- examples


def test_overflow_used_only_when_dedicated_hosts_are_full() -> None:
    hosts = [
        host("ded", total=4096, labels={"dedicated"}),
        host("ovf", total=65536, labels={"overflow"}),
    ]
    assert place(guest(memory=2048), hosts).host == "ded"
    assert place(guest(memory=8192), hosts).host == "ovf"
    _, after = place_many([guest("a", 3072), guest("b", 3072)], hosts)
    assert [len(h.guests) for h in after] == [1, 1]


def test_spread_picks_least_loaded_and_pack_most_loaded() -> None:
    hosts = [host("empty"), host("half", free=8192), host("full", free=1024)]
    g = guest(memory=1024)
    assert place(g, hosts, PlacementPolicy(weigher=Weigher.SPREAD)).host == "empty"
    assert place(g, hosts, PlacementPolicy(weigher=Weigher.PACK)).host == "full"
    assert place(guest(memory=2048), hosts, PlacementPolicy(weigher=Weigher.PACK)).host == "half"


def test_spread_uses_relative_load_and_optional_cpu_weight() -> None:
    big = host("big", total=65536, free=32768)  # 50 % used
    small = host("small", total=8192, free=6144, cpus=8, vcpus_allocated=30)  # 25 % used
    assert place(guest(), [big, small]).host == "small"
    cpu_heavy = PlacementPolicy(memory_weight=1.0, cpu_weight=3.0)
    assert place(guest(), [big, small], cpu_heavy).host == "big"


def test_preferred_labels_add_score() -> None:
    hosts = [host("plain"), host("ssd", free=4096, labels={"ssd"})]
    g = guest(preferred_labels={"ssd"})
    p = place(g, hosts)
    assert p.host == "ssd"
    plain, ssd = p.verdicts
    assert plain.score == pytest.approx(1 - 1024 / 16384)
    assert ssd.score == pytest.approx(1 - (12288 + 1024) / 16384 + 1.0)
    assert place(g, hosts, PlacementPolicy(preferred_label_weight=0.0)).host == "plain"


def test_every_filter_reports_code_and_reason() -> None:
    g = guest(
        "new",
        memory=4096,
        vcpus=4,
        storage={"san-a"},
        anti_affinity="web",
        required_labels={"ssd"},
        ha=True,
    )
    peer = guest("web1", memory=0, vcpus=0, anti_affinity="web")
    h = HostView("h", 8192, 2048, 1, vcpus_allocated=2, up=False, draining=True, guests=(peer,),
                 protected=False)
    failures = {f.code: f.reason for f in explain(g, h, DEFAULT_POLICY)}
    assert tuple(failures) == FILTER_CODES
    assert failures["down"] == "host is down"
    assert failures["draining"] == "host is draining"
    assert failures["memory"] == "needs 4096 MiB, 2048 of 8192 MiB free (memory ratio 1)"
    assert failures["cpu"] == "needs 4 vCPUs, 2 allocated of 1 CPUs x 4"
    assert failures["labels"] == "missing required labels: ssd"
    assert failures["anti-affinity"] == "anti-affinity group web already has web1 here"
    assert failures["storage"] == "cannot reach storage: san-a"
    assert failures["unprotected"].startswith("host h has no working watchdog")
    p = place(g, [h])
    assert p.host is None
    assert p.reason == (
        "no host passes the filters (down on 1, draining on 1, memory on 1, cpu on 1,"
        " labels on 1, anti-affinity on 1, storage on 1, unprotected on 1)"
    )


def test_overcommit_ratios() -> None:
    h = host("h", total=8192, free=1024, cpus=2, vcpus_allocated=7)
    g = guest(memory=2048, vcpus=1)
    assert explain(g, h, DEFAULT_POLICY)[0].code == "memory"
    assert explain(g, h, PlacementPolicy(memory_ratio=1.25)) == ()
    assert [f.code for f in explain(g, h, PlacementPolicy(memory_ratio=1.25, cpu_ratio=3.5))] == [
        "cpu"
    ]
    with pytest.raises(ValueError):
        PlacementPolicy(cpu_ratio=0)
    with pytest.raises(ValueError):
        PlacementPolicy(memory_weight=0, cpu_weight=0)


def test_storage_and_labels_filters() -> None:
    hosts = [host("a", storage={"san-a"}), host("b", storage={"san-b"}, labels={"gpu"})]
    assert place(guest(storage={"san-b"}), hosts).host == "b"
    assert place(guest(required_labels={"gpu"}), hosts).host == "b"
    assert place(guest(storage={"san-a"}, required_labels={"gpu"}), hosts).host is None


def test_anti_affinity_keeps_group_members_apart() -> None:
    hosts = [host("a"), host("b"), host("c")]
    members = [guest(f"web{i}", anti_affinity="web") for i in range(4)]
    placements, after = place_many(members, hosts)
    assert sorted(str(p.host) for p in placements[:3]) == ["a", "b", "c"]
    assert placements[3].host is None and "anti-affinity on 3" in placements[3].reason
    assert anti_affinity_holds(after)


def test_ties_are_broken_by_stable_hash_and_spread_guests() -> None:
    hosts = [host(f"h{i}") for i in range(8)]
    chosen = [place(guest(f"vm{i}"), hosts).host for i in range(64)]
    assert chosen == [place(guest(f"vm{i}"), hosts[::-1]).host for i in range(64)]
    assert len(set(chosen)) >= 6  # identical hosts: different guests pick different ones
    # blake2b-based, so the value never depends on PYTHONHASHSEED or the process
    assert tiebreak("vm", "h0") == tiebreak("vm", "h0") == 0x8F96_52F6_A909_DBDC
    # the Fleet's hash-ring scan picks the same host as the linear tiebreak
    fleet = Fleet(tuple(hosts))
    assert chosen == [fleet.place(guest(f"vm{i}")).host for i in range(64)]


def test_no_hosts_and_apply_of_unplaced_guest() -> None:
    p = place(guest(), [])
    assert p.host is None and p.reason == "no hosts" and p.verdicts == ()
    hosts = (host("a", total=512),)
    unplaced = place(guest(memory=1024), hosts)
    assert apply_placement(hosts, unplaced) == hosts


def test_apply_placement_reduces_resources_and_returns_new_views() -> None:
    hosts = [host("a"), host("b", free=8192)]
    g = guest("vm", memory=2048, vcpus=3, anti_affinity="web")
    p = place(g, hosts)
    after = apply_placement(hosts, p)
    assert p.host == "a" and hosts[0].free_memory_mib == 16384  # inputs untouched
    assert after[0].free_memory_mib == 14336 and after[0].vcpus_allocated == 3
    assert after[0].guests == (g,) and after[0].groups == {"web"} and after[1] is hosts[1]
    back = remove_guest(after[0], "vm")
    assert back == hosts[0] and back.groups == frozenset()
    with pytest.raises(KeyError):
        remove_guest(hosts[0], "vm")


@pytest.mark.parametrize("weigher", list(Weigher))
def test_fleet_scans_past_failing_top_ranked_hosts(weigher: Weigher) -> None:
    # one profile; in rank order: 4 down hosts, then the best host that passes, then the rest
    spread = weigher is Weigher.SPREAD
    down = [host(f"down{i}", free=16384 if spread else 1024, up=False) for i in range(4)]
    best = host("best", free=15360 if spread else 2048)
    rest = [host(f"h{i}", free=14336 - 1024 * i if spread else 3072 + 1024 * i) for i in range(9)]
    hosts = [*rest, best, *down]
    policy = PlacementPolicy(weigher=weigher)
    assert Fleet(tuple(hosts), policy).place(guest()).host == "best"
    assert place(guest(), hosts, policy).host == "best"


def test_fleet_update_moves_hosts_between_profiles() -> None:
    hosts = [host("a", free=8192), host("b", free=12288), host("c", labels={"gpu"})]
    fleet = Fleet(tuple(hosts))
    g = guest(required_labels={"gpu"})
    assert fleet.place(guest()).host == "c" and fleet.place(g).host == "c"
    relabelled = fleet.update(replace(hosts[0], labels=frozenset({"gpu"})))
    assert relabelled.place(g).host == "c"
    assert relabelled.update(replace(hosts[2], labels=frozenset())).place(g).host == "a"
    assert fleet.hosts == tuple(hosts)  # fleets are immutable
    with pytest.raises(ValueError):
        Fleet((host("a"), host("a")))


def test_placement_is_plain_immutable_data() -> None:
    p = place(guest(), [host("a")])
    assert isinstance(p, Placement) and p == Placement(guest(), "a")
    with pytest.raises(AttributeError):
        p.host = "b"  # type: ignore[misc]
    assert is_overflow(host("o", labels=("overflow",)))
    listed = HostView("x", 1, 1, 1, labels=["a", "a"])  # type: ignore[arg-type]
    assert listed.labels == frozenset({"a"})
    assert PlacementPolicy(weigher="pack").weigher is Weigher.PACK  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HostView("x", 0, 0, 1)
    with pytest.raises(ValueError):
        GuestNeeds("x", -1, 1)
