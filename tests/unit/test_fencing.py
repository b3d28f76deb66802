"""Unit and property tests of gridtool.fencing.rules (records, plans, judgements, lease clock)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.fencing.rules import (
    AcquirePlan,
    Act,
    Expect,
    Expected,
    Fence,
    FenceError,
    FenceKind,
    GuestRef,
    IntruderPolicy,
    LeaseClock,
    LeaseState,
    Observation,
    Observed,
    Refusal,
    StartOp,
    Unreadable,
    Verdict,
    default_margin,
    incoming_named,
    judge_running,
    judge_stopped,
    may_start,
    observe,
    plan_acquire,
    plan_handover,
    plan_release,
)

HA, PINNED = FenceKind.HA, FenceKind.PINNED
VM1 = GuestRef("u1", "vm1", HA, ("vol-b", "vol-a"))


def fence(volume: str = "vol-a", holder: str = "h1", guest: str = "u1",
          kind: FenceKind = HA, since: float = 100) -> Fence:
    return Fence(volume, holder, guest, f"name-{guest}", kind, since)


def held(volume: str, holder: str = "h1", guest: str = "u1", rev: int = 7) -> Observed:
    return Observed(fence(volume, holder, guest), rev)


# --------------------------------------------------------------------------- records


def test_fence_round_trips_through_dict_and_json() -> None:
    f = fence(kind=PINNED, since=1700000000.5)
    assert f.to_dict() == {"v": 1, "volume": "vol-a", "holder": "h1", "guest": "u1",
                           "guest_name": "name-u1", "kind": "pinned", "since": 1700000000.5}
    assert Fence.from_dict(f.to_dict()) == f
    assert Fence.from_json(f.to_json()) == f
    assert Fence.from_json(f.to_json().encode()) == f
    assert json.loads(f.to_json())["v"] == 1
    assert f.with_lease is False and fence(kind=HA).with_lease is True


def test_fence_accepts_kind_as_text_and_ignores_unknown_fields() -> None:
    data = {**fence().to_dict(), "kind": "ha", "comment": "later schema additions"}
    assert Fence.from_dict(data).kind is HA


@pytest.mark.parametrize(("change", "needle"), [
    ({"v": 2}, "schema version 2"),
    ({"v": True}, "schema version True"),
    ({"v": None}, "schema version None"),
    ({"holder": ""}, "'holder'"),
    ({"guest": 5}, "'guest'"),
    ({"guest_name": None}, "'guest_name'"),
    ({"kind": "sometimes"}, "'kind' must be one of ha, pinned"),
    ({"since": -1}, "'since'"),
    ({"since": math.nan}, "'since'"),
    ({"since": True}, "'since'"),
    ({"since": "yesterday"}, "'since'"),
    ({"volume": "a/b"}, "'volume'"),
    ({"volume": "a b"}, "'volume'"),
    ({"volume": ""}, "'volume'"),
])
def test_bad_fence_records_name_the_problem(change: dict, needle: str) -> None:
    with pytest.raises(FenceError, match=needle.replace("(", r"\(")) as err:
        Fence.from_dict({**fence().to_dict(), **change})
    assert isinstance(err.value, ValueError)


def test_missing_field_and_non_object_and_non_json() -> None:
    data = fence().to_dict()
    del data["holder"]
    with pytest.raises(FenceError, match="missing field 'holder'"):
        Fence.from_dict(data)
    with pytest.raises(FenceError, match="expected a JSON object, got list"):
        Fence.from_dict([1])
    with pytest.raises(FenceError, match="not JSON"):
        Fence.from_json(b"{nope")


def test_observe_decodes_absent_good_and_bad_values() -> None:
    assert observe("vol-a", None) is None
    assert observe("vol-a", fence().to_json(), 9) == Observed(fence(), 9)
    bad = observe("vol-a", "[]", 4)
    assert isinstance(bad, Unreadable) and bad.mod_revision == 4 and "JSON object" in bad.error
    other = observe("vol-a", fence("vol-z").to_json(), 4)
    assert isinstance(other, Unreadable) and "vol-z" in other.error
    assert isinstance(observe("vol-a", fence().to_json(), 0), Unreadable)
    with pytest.raises(FenceError):
        observe("a/b", None)


def test_guest_ref_sorts_and_dedupes_volumes() -> None:
    assert GuestRef("u", "n", "ha", ["b", "a", "b"]).volumes == ("a", "b")
    with pytest.raises(FenceError, match="'kind'"):
        GuestRef("u", "n", "other")


# --------------------------------------------------------------------------- acquire


def test_acquire_creates_every_absent_fence_with_lease_for_ha() -> None:
    plan = plan_acquire("h1", VM1, {"vol-a": None, "vol-b": None}, now=50)
    assert isinstance(plan, AcquirePlan) and plan.holder == "h1" and plan.guest == "u1"
    assert [s.volume for s in plan.steps] == ["vol-a", "vol-b"]
    for step in plan.steps:
        assert step.expect is Expect.ABSENT and step.mod_revision == 0 and step.with_lease
        assert step.fence == Fence(step.volume, "h1", "u1", "vm1", HA, 50)
        assert Fence.from_json(step.value) == step.fence


def test_acquire_pinned_puts_without_lease() -> None:
    guest = GuestRef("u1", "vm1", PINNED, ("vol-a",))
    plan = plan_acquire("h1", guest, {"vol-a": None}, now=1)
    assert isinstance(plan, AcquirePlan) and not plan.steps[0].with_lease


def test_acquire_re_puts_own_fence_comparing_its_revision() -> None:
    plan = plan_acquire("h1", VM1, {"vol-a": held("vol-a", rev=12), "vol-b": None}, now=500)
    assert isinstance(plan, AcquirePlan)
    mine = plan.steps[0]
    assert (mine.expect, mine.mod_revision) == (Expect.MINE, 12)
    assert mine.fence.since == 100 and mine.fence.guest_name == "vm1"  # since kept


@pytest.mark.parametrize(("obs", "holder", "reason"), [
    (held("vol-b", holder="h2"), "h2", "held by h2"),
    (held("vol-b", guest="u9"), "h1", "guest name-u9"),
    (Unreadable("vol-b", 3, "junk"), None, "unreadable at revision 3"),
])
def test_acquire_refuses_foreign_fences(obs: Observation, holder: str | None, reason: str) -> None:
    plan = plan_acquire("h1", VM1, {"vol-a": None, "vol-b": obs}, now=1)
    assert isinstance(plan, Refusal)
    assert (plan.guest, plan.volume, plan.holder) == ("u1", "vol-b", holder)
    assert reason in plan.reason


def test_acquire_needs_an_observation_per_volume() -> None:
    with pytest.raises(FenceError, match="no observation for volume 'vol-b'"):
        plan_acquire("h1", VM1, {"vol-a": None}, now=1)


def test_release_only_touches_own_fences() -> None:
    observed = {"vol-a": held("vol-a", rev=5), "vol-b": held("vol-b", holder="h2")}
    plan = plan_release("h1", VM1, observed)
    assert [(s.volume, s.mod_revision) for s in plan.steps] == [("vol-a", 5)]
    assert plan.skipped == ("vol-b",) and not plan.empty
    assert plan_release("h3", VM1, observed).empty


def test_handover_moves_every_fence_to_the_target() -> None:
    observed = {"vol-a": held("vol-a", rev=5), "vol-b": held("vol-b", rev=6)}
    plan = plan_handover("h1", "h2", VM1, observed, now=900)
    assert isinstance(plan, AcquirePlan) and plan.holder == "h2"
    assert [(s.expect, s.mod_revision, s.fence.holder, s.fence.since) for s in plan.steps] == [
        (Expect.MINE, 5, "h2", 900), (Expect.MINE, 6, "h2", 900)]
    refused = plan_handover("h1", "h2", VM1, {**observed, "vol-b": None}, now=900)
    assert isinstance(refused, Refusal) and refused.volume == "vol-b"


# --------------------------------------------------------------------------- judgements


def test_judge_running_ok_take_and_intruder() -> None:
    both = {"vol-a": held("vol-a"), "vol-b": held("vol-b")}
    assert judge_running("h1", VM1, both).verdict is Verdict.OK
    take = judge_running("h1", VM1, {**both, "vol-b": None})
    assert (take.verdict, take.act, take.violation) == (Verdict.TAKE, Act.ACQUIRE, True)
    assert "without fence vol-b" in take.report
    foreign = {**both, "vol-b": held("vol-b", holder="h2")}
    paused = judge_running("h1", VM1, foreign)
    assert (paused.verdict, paused.act, paused.violation) == (Verdict.INTRUDER, Act.PAUSE, True)
    assert "held by h2" in paused.report
    destroyed = judge_running("h1", VM1, foreign, IntruderPolicy.DESTROY)
    assert destroyed.act is Act.DESTROY
    junk = {**both, "vol-a": Unreadable("vol-a", 1, "bad")}
    assert judge_running("h1", VM1, junk).verdict is Verdict.INTRUDER


def test_judge_stopped_releases_ha_and_keeps_pinned_after_crash() -> None:
    pinned = GuestRef("u1", "vm1", PINNED, ("vol-a",))
    observed = {"vol-a": held("vol-a"), "vol-b": held("vol-b")}
    ha = judge_stopped("h1", VM1, observed, clean_stop=False)
    assert (ha.verdict, ha.act) == (Verdict.RELEASE, Act.RELEASE)
    assert judge_stopped("h1", pinned, observed, clean_stop=False).verdict is Verdict.KEEP
    assert judge_stopped("h1", pinned, observed, clean_stop=True).act is Act.RELEASE
    assert judge_stopped("h2", VM1, observed, clean_stop=True).verdict is Verdict.NOTHING


# The hook's rule, case by case. Fences of VM1 (vol-a, vol-b) as seen; the host asking is
# h2; h1 is the migration source. E: a 'receive' intent expects VM1 from h1 until t=100.
H2_HOLDS = {"vol-a": held("vol-a", "h2"), "vol-b": held("vol-b", "h2")}
H1_HOLDS = {"vol-a": held("vol-a", "h1"), "vol-b": held("vol-b", "h1")}
SPLIT = {"vol-a": held("vol-a", "h1"), "vol-b": held("vol-b", "h2")}
HALF = {"vol-a": held("vol-a", "h2"), "vol-b": None}
OTHER_GUEST = {"vol-a": held("vol-a", "h2"), "vol-b": held("vol-b", "h2", guest="u9")}
JUNK = {"vol-a": held("vol-a", "h2"), "vol-b": Unreadable("vol-b", 3, "bad")}
E = Expected("h1", until=100)
E_H3 = Expected("h3", until=100)
START_CASES = [
    # observed, op, expected, arriving_from, now -> allow, incoming_from
    (H2_HOLDS, "prepare", None, None, 0, True, None),  # the holder starts it
    (H2_HOLDS, "restore", None, None, 0, True, None),
    (H2_HOLDS, "migrate", None, None, 0, True, None),  # fences here already
    (H2_HOLDS, "migrate", E, None, 500, True, None),  # ... expectation not needed
    (H1_HOLDS, "prepare", None, None, 0, False, None),  # held elsewhere: a bare start
    (H1_HOLDS, "restore", None, None, 0, False, None),
    (H1_HOLDS, "migrate", None, None, 0, False, None),  # a bare 'virsh migrate'
    (H1_HOLDS, "migrate", E, None, 50, True, "h1"),  # the expected migration
    (H1_HOLDS, "migrate", E, None, 100, True, "h1"),  # ... to the last moment
    (H1_HOLDS, "migrate", E, None, 100.5, False, None),  # ... expired
    (H1_HOLDS, "migrate", E_H3, None, 50, False, None),  # ... from another source
    (H1_HOLDS, "prepare", E, None, 50, False, None),  # expected, not yet accepted
    (H1_HOLDS, "prepare", None, "h1", 0, True, "h1"),  # accepted and arriving
    (H1_HOLDS, "restore", None, "h1", 0, True, "h1"),
    (H1_HOLDS, "migrate", None, "h1", 0, False, None),  # arriving is not expected again
    (H1_HOLDS, "prepare", None, "h3", 0, False, None),  # arriving from another source
    (SPLIT, "migrate", E, None, 50, False, None),  # the source must hold every fence
    (SPLIT, "prepare", None, "h1", 0, False, None),
    (SPLIT, "prepare", None, None, 0, False, None),
    (HALF, "prepare", None, None, 0, False, None),  # every fence, not most
    (HALF, "migrate", Expected("h2", 100), None, 50, False, None),
    (OTHER_GUEST, "prepare", None, None, 0, False, None),  # held for another guest
    (JUNK, "prepare", None, None, 0, False, None),  # unreadable blocks
    ({"vol-a": None, "vol-b": None}, "prepare", None, None, 0, False, None),
    ({"vol-a": None, "vol-b": None}, "migrate", E, None, 50, False, None),
    (H2_HOLDS, "start", None, None, 0, True, None),  # any other op: the holder's rule
    (H1_HOLDS, "start", E, "h1", 50, False, None),
]


@pytest.mark.parametrize("observed,op,expected,arriving,now,allow,incoming", START_CASES)
def test_the_hooks_rule(observed: dict[str, Observation], op: str, expected: Expected | None,
                        arriving: str | None, now: float, allow: bool,
                        incoming: str | None) -> None:
    answer = may_start("h2", VM1, observed, op, expected, arriving, now)
    assert (answer.allow, answer.incoming_from) == (allow, incoming), answer.reason


def test_a_guest_without_domain_xml_is_the_expected_migration_of_its_name() -> None:
    """libvirt 9.0's libxl driver runs ``migrate begin`` with an empty stdin: the guest is
    the expected incoming migration of that name, whose rule is then the usual one."""
    other = GuestRef("u9", "other", PINNED, ("vol-c",))
    expected = {VM1.uuid: Expected("h1", 100, VM1), "u9": Expected("h1", 100, other)}
    assert incoming_named(VM1.name, "migrate", expected, 50) == VM1
    answer = may_start("h2", VM1, H1_HOLDS, "migrate", expected[VM1.uuid], None, 50)
    assert (answer.allow, answer.incoming_from) == (True, "h1"), answer.reason
    for name, op, now, why in [
            (VM1.name, "migrate", 100.5, "no live migration of it is expected here"),
            ("nobody", "migrate", 50, "no live migration of it is expected here"),
            (VM1.name, "prepare", 50, "its disks cannot be told (fail closed)"),
            (VM1.name, "restore", 50, "its disks cannot be told (fail closed)")]:
        refusal = incoming_named(name, op, expected, now)
        assert isinstance(refusal, str) and refusal.startswith(
            f"libvirt passed no domain XML for {name} ({op} begin)") and why in refusal
    unnamed = {VM1.uuid: Expected("h1", 100)}  # the source had no record: its LUNs unknown
    assert "no live migration of it is expected" in str(
        incoming_named(VM1.name, "migrate", unnamed, 50))
    twice = {"a": Expected("h1", 100, VM1), "b": Expected("h3", 100, VM1)}
    assert "2 expected migrations have that name" in str(
        incoming_named(VM1.name, "migrate", twice, 50))


def test_the_hooks_rule_allows_a_guest_without_shared_volumes_and_needs_every_read() -> None:
    assert may_start("h1", GuestRef("u2", "local", HA), {}).allow
    with pytest.raises(FenceError, match="read every fence key"):
        may_start("h1", VM1, {"vol-a": held("vol-a")})


def test_a_refusal_names_the_holder() -> None:
    assert "held by h1 (not by h2)" in may_start("h2", VM1, SPLIT).reason
    assert "does not hold the fence of vol-b" in may_start("h2", VM1, HALF).reason
    assert "does not hold the fence of vol-b" in may_start("h2", VM1, OTHER_GUEST).reason
    assert "gridtool guest start vm1" in may_start("h2", VM1, H1_HOLDS, "migrate").reason
    assert may_start("h2", VM1, H1_HOLDS, "migrate", E, None, 1).reason == (
        "incoming live migration from h1")


# --------------------------------------------------------------------------- lease clock


def test_default_margin() -> None:
    assert default_margin(3) == 1.0 and default_margin(15) == 3.0 and default_margin(60) == 12


def test_lease_clock_states_over_time() -> None:
    clock = LeaseClock.start(15, 20)  # margin 3, interval 5: deadline 32, at risk from 27.5
    assert (clock.deadline, clock.expiry_floor) == (32, 35)
    assert clock.state(27) is LeaseState.HEALTHY
    assert clock.state(27.5) is LeaseState.AT_RISK
    assert clock.state(31.99) is LeaseState.AT_RISK
    assert clock.state(32) is LeaseState.MUST_SELF_FENCE
    renewed = clock.sent(25).acked(25)
    assert renewed.deadline == 37 and renewed.state(32) is LeaseState.HEALTHY


def test_late_ack_of_an_old_send_does_not_extend_past_its_own_ttl() -> None:
    clock = LeaseClock.start(15, 0).sent(5).sent(10)
    late = clock.acked(5)
    assert late.deadline == 5 + 15 - 3
    assert late.acked(10).acked(5).deadline == 10 + 15 - 3  # older ack after newer: no change


def test_ack_uses_the_smaller_ttl_and_a_dead_lease_means_self_fence() -> None:
    clock = LeaseClock.start(15, 0).sent(5)
    assert clock.acked(5, granted_ttl=9).deadline == 11
    assert clock.acked(5, granted_ttl=60).deadline == 17
    gone = clock.acked(5, granted_ttl=-1)
    assert gone.lost and gone.state(0) is LeaseState.MUST_SELF_FENCE
    assert gone.revoked().deadline == -math.inf


def test_ack_of_a_keepalive_never_sent_is_an_error() -> None:
    with pytest.raises(ValueError, match="never sent"):
        LeaseClock.start(15, 0).acked(3)


@pytest.mark.parametrize("kwargs", [
    {"ttl": 0}, {"ttl": 15, "margin": 0}, {"ttl": 15, "margin": 11}, {"ttl": 15, "interval": 12},
])
def test_lease_clock_refuses_unsafe_settings(kwargs: dict) -> None:
    ttl = kwargs.pop("ttl")
    with pytest.raises(ValueError, match="lease clock"):
        LeaseClock.start(ttl, 0, **kwargs)


def test_keepalive_cadence_speeds_up_when_at_risk() -> None:
    clock = LeaseClock.start(15, 0)
    assert not clock.keepalive_due(4.9) and clock.keepalive_due(5)
    late = clock.sent(5)
    assert not late.keepalive_due(7) and late.keepalive_due(8)  # at risk from 7.5, retry 1 s


def test_watchdog_pets_only_while_a_reset_would_land_before_expiry() -> None:
    clock = LeaseClock.start(15, 20)  # floor 35, margin 3
    assert clock.max_watchdog_timeout == 15 - 5 - 1.5
    assert clock.watchdog_may_pet(28, 5, ha_running=True)  # 33 <= 33.5
    assert not clock.watchdog_may_pet(29, 5, ha_running=True)
    assert clock.watchdog_may_pet(29, 5, ha_running=False)
    assert not clock.revoked().watchdog_may_pet(0, 5, ha_running=True)


# --------------------------------------------------------------------------- properties


@dataclass
class Store:
    """A minimal etcd: key -> (fence, mod_revision); one transaction at a time."""

    keys: dict[str, tuple[Fence, int]]
    revision: int = 100

    def observe(self, volumes: tuple[str, ...]) -> dict[str, Observation]:
        return {v: Observed(*self.keys[v]) if v in self.keys else None for v in volumes}

    def txn(self, plan: AcquirePlan) -> bool:
        for s in plan.steps:
            now = self.keys.get(s.volume)
            ok = now is None if s.expect is Expect.ABSENT else (
                now is not None and now[1] == s.mod_revision)
            if not ok:
                return False
        self.revision += 1
        for s in plan.steps:
            self.keys[s.volume] = (s.fence, self.revision)
        return True


VOLUMES = st.lists(st.sampled_from(["v1", "v2", "v3", "v4"]), min_size=1, max_size=4, unique=True)
HOLDERS = st.sampled_from(["h1", "h2", "h3"])
STATE = st.dictionaries(
    st.sampled_from(["v1", "v2", "v3", "v4"]),
    st.tuples(HOLDERS, st.sampled_from(["u1", "u2"]), st.integers(1, 50)),
)


@given(volumes=VOLUMES, state=STATE, racers=st.lists(HOLDERS, min_size=1, max_size=3))
@settings(max_examples=200, deadline=None, database=None)
def test_acquire_is_all_or_none_and_one_racer_wins(
    volumes: list[str], state: dict, racers: list[str]
) -> None:
    store = Store({v: (fence(v, h, g), r) for v, (h, g, r) in state.items()})
    guest = GuestRef("u1", "vm1", HA, volumes)
    observed = store.observe(guest.volumes)  # every racer read the same revisions
    plans = [plan_acquire(h, guest, observed, now=1) for h in racers]
    before = dict(store.keys)
    winners = []
    for host, plan in zip(racers, plans, strict=True):
        if isinstance(plan, Refusal):
            assert plan.volume in guest.volumes
            assert observed[plan.volume] is not None
            continue
        assert [s.volume for s in plan.steps] == list(guest.volumes)  # never a subset
        for s in plan.steps:
            expected = Expect.ABSENT if observed[s.volume] is None else Expect.MINE
            assert s.expect is expected and s.fence.holder == host
        if store.txn(plan):
            winners.append(host)
    holders = {store.keys[v][0].holder for v in guest.volumes if v in store.keys}
    touched = any(store.keys.get(v) != before.get(v) for v in guest.volumes)
    assert len(set(winners)) <= 1
    if winners:  # all of the guest's fences now name the one winner
        assert holders == {winners[0]} and all(v in store.keys for v in guest.volumes)
    else:
        assert not touched


SENDS = st.lists(st.floats(0.01, 4.0, allow_nan=False), min_size=1, max_size=20)


@given(ttl=st.floats(3, 120), gaps=SENDS, data=st.data())
@settings(max_examples=200, deadline=None, database=None)
def test_deadline_never_later_than_last_acked_send_plus_ttl_minus_margin(
    ttl: float, gaps: list[float], data: st.DataObject
) -> None:
    clock = LeaseClock.start(ttl, 0.0)
    sent, acked = [0.0], [0.0]
    now = 0.0
    for gap in gaps:
        now += gap
        clock = clock.sent(now)
        sent.append(now)
        if data.draw(st.booleans()):
            which = data.draw(st.sampled_from(sent))  # replies may come late and out of order
            granted = data.draw(st.one_of(st.none(), st.floats(1, 2 * ttl)))
            clock = clock.acked(which, granted)
            acked.append(which)
        bound = max(acked) + ttl - clock.margin
        assert clock.deadline <= bound + 1e-9
        assert clock.expiry_floor <= max(acked) + ttl + 1e-9
        assert (clock.state(now) is LeaseState.MUST_SELF_FENCE) == (now >= clock.deadline)
        timeout = data.draw(st.floats(0.1, ttl))
        if clock.watchdog_may_pet(now, timeout, ha_running=True):
            assert now + timeout < clock.expiry_floor  # a hung agent is reset before expiry


# --------------------------------------------------------------------------- intruders


MARKED = GuestRef("u1", "vm1", PINNED, ("vol-a",), intruder=True)
OBSERVATIONS = st.sampled_from([None, held("vol-a"), held("vol-a", holder="h2"),
                                Unreadable("vol-a", 3, "bad")])


@given(obs=OBSERVATIONS, policy=st.sampled_from(list(IntruderPolicy)), paused=st.booleans())
@settings(max_examples=100, deadline=None, database=None)
def test_a_marked_intruder_never_takes_a_fence_nor_starts(
    obs: Observation, policy: IntruderPolicy, paused: bool
) -> None:
    """Issue 12 item 3: once judged an intruder, a copy stays one until it is shut off,
    whoever holds its fence now (freed, still foreign, or even this host's)."""
    observed = {"vol-a": obs}
    verdict = judge_running("h1", MARKED, observed, policy, paused)
    assert (verdict.verdict, verdict.act) == (Verdict.INTRUDER, Act(policy.value))
    assert verdict.violation and not verdict.mark  # marked already
    assert verdict.resumed is (not paused)
    assert isinstance(plan_acquire("h1", MARKED, observed, now=1), Refusal)
    for op in StartOp:
        assert not may_start("h1", MARKED, observed, op, Expected("h1", 9), "h1", 1).allow


def test_the_first_pause_of_an_intruder_marks_it_and_a_resume_is_reported() -> None:
    foreign = {"vol-a": held("vol-a", holder="h2")}
    fresh = GuestRef("u1", "vm1", PINNED, ("vol-a",))
    first = judge_running("h1", fresh, foreign)
    assert (first.act, first.mark, first.resumed) == (Act.PAUSE, True, False)
    assert not judge_running("h1", fresh, foreign, IntruderPolicy.DESTROY).mark
    again = judge_running("h1", MARKED, {"vol-a": None}, paused=False)
    assert (again.act, again.mark, again.resumed) == (Act.PAUSE, False, True)
    assert "was resumed on h1" in again.report and "never takes a fence" in again.report
    refusal = plan_acquire("h1", MARKED, {"vol-a": None}, now=1)
    assert isinstance(refusal, Refusal) and "virsh destroy" in refusal.reason


@dataclass
class Copy:
    """A model of one guest's copy on h1, its fence, and h1's agent (up or down), for
    the lifecycle property."""

    policy: IntruderPolicy
    state: str = "off"  # off | running | paused
    marked: bool = False  # the intruder mark of this run (lives with the run)
    stale: bool = False  # truth: alive while h2 held the fence (h2's copy wrote the disk)
    holder: str | None = None
    agent_up: bool = True

    def ref(self) -> GuestRef:
        return GuestRef("u1", "vm1", PINNED, ("vol-a",), intruder=self.marked)

    def observed(self) -> dict[str, Observation]:
        return {"vol-a": None if self.holder is None else held("vol-a", self.holder)}

    def off(self) -> None:
        self.state, self.marked, self.stale = "off", False, False
        if self.holder == "h1" and self.agent_up:  # its agent releases it after a clean stop
            self.holder = None

    def judge(self) -> None:
        """What the agent does on the copy's lifecycle event, a resync, or its start."""
        if self.state == "off":
            return
        verdict = judge_running("h1", self.ref(), self.observed(), self.policy,
                                self.state == "paused")
        if verdict.act is Act.ACQUIRE:
            if isinstance(plan_acquire("h1", self.ref(), self.observed(), 1), AcquirePlan):
                self.holder = "h1"
        elif verdict.act is Act.DESTROY:
            self.off()
        elif verdict.act is Act.PAUSE:
            self.marked = self.marked or verdict.mark
            self.state = "paused"

    def step(self, event: str) -> None:
        if event == "bare_start" and self.state == "off" and self.agent_up:
            # with its agent down, the libvirt hook refuses a start (fail closed); a host
            # without the hook runs it unchecked and the agent's first resync adopts it
            # (documented limit: hook-less hosts, e.g. libvirt's test driver)
            self.state = "running"
        elif event == "h2_takes" and self.holder is None:
            self.holder = "h2"
        elif event == "h2_frees" and self.holder == "h2":
            self.holder = None
        elif event == "resume" and self.state == "paused":
            self.state = "running"
        elif event == "shut_off":
            self.off()
        elif event == "gridtool_start" and self.agent_up and isinstance(
                plan_acquire("h1", self.ref(), self.observed(), 1), AcquirePlan):
            self.holder = "h1"
            self.state = "running" if self.state == "off" else self.state
        elif event in ("agent_stop", "agent_start"):
            self.agent_up = event == "agent_start"
        self.stale = self.stale or (self.state != "off" and self.holder == "h2")
        if self.agent_up:
            self.judge()  # the lifecycle event, a resync, or the restarted agent's first


EVENTS = st.lists(st.sampled_from(["bare_start", "h2_takes", "h2_frees", "resume", "shut_off",
                                   "gridtool_start", "agent_stop", "agent_start", "resync"]),
                  max_size=40)


@given(events=EVENTS, policy=st.sampled_from(list(IntruderPolicy)))
@settings(max_examples=300, deadline=None, database=None)
def test_a_stale_copy_never_holds_the_fence_nor_keeps_running(
    events: list[str], policy: IntruderPolicy
) -> None:
    """Any interleaving of bare starts, h2 taking and freeing the fence, resumes, shut
    offs, gridtool starts, agent stops and restarts and resyncs: a copy whose memory
    went stale never holds the fence, and runs only while its agent is down."""
    copy = Copy(policy)
    for event in events:
        copy.step(event)
        if copy.stale:
            assert copy.holder != "h1", (events, copy)
            assert copy.state != "running" or not copy.agent_up, (events, copy)
