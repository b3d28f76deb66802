"""Warm pools, pure: which asleep workers a scale-up wakes, how many cold clones make up
the rest, how the warm set is refilled and trimmed (never past the pool's maximum), and
the warm size's validation; a property over random pools."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.pools.rules import (
    WARM_ASLEEP,
    WARM_BOOTING,
    WARM_CLONING,
    WARM_FAILED,
    WARM_REMOVING,
    WARM_SLEEPING,
    WARM_TIMEOUT,
    WARM_WAKING,
    Clone,
    Forget,
    HostInfo,
    MarkAsleep,
    MarkAwake,
    MarkRemoved,
    MemberView,
    PoolSpec,
    Remove,
    Sleep,
    Wake,
    Withdraw,
    is_serving,
    plan,
    wake_order,
    warm_problems,
    warm_target,
)

NOW = 1_000_000.0
SPEC = PoolSpec("web", "tmpl", min=1, max=6, desired=2, warm=2)
HOSTS = (HostInfo("hv1"), HostInfo("hv2"), HostInfo("ov1", overflow=True))


def serving(i: int, host: str = "hv1") -> MemberView:
    return MemberView(f"s{i}", f"web-{i}", host, NOW - 100, "running")


def asleep(i: int, host: str = "hv1", age: float = 100.0,
           state: str = "shutoff") -> MemberView:
    return MemberView(f"w{i}", f"web-w{i}", host, NOW - age, state, warm=WARM_ASLEEP)


def test_a_pool_at_size_with_its_warm_set_does_nothing() -> None:
    p = plan(SPEC, 2, [serving(1), serving(2), asleep(1), asleep(2)], HOSTS, now=NOW)
    assert p.actions == () and (p.ready, p.warm, p.warming) == (2, 2, 0)


def test_scale_up_wakes_warm_workers_first_then_clones_cold_then_refills() -> None:
    members = [serving(1), serving(2), asleep(1, age=50), asleep(2, age=90)]
    p = plan(SPEC, 5, members, HOSTS, now=NOW)
    wakes = [a for a in p.actions if isinstance(a, Wake)]
    assert [w.uuid for w in wakes] == ["w2", "w1"], "the oldest first"
    assert Clone(1, (), "4 of 5 workers") in p.actions
    # 5 serving of at most 6: one warm worker fits beside them
    assert Clone(1, (), "0 of 1 warm", warm=True) in p.actions
    assert p.warm == 0
    assert p.actions.index(wakes[0]) == 0, "wakes come before any clone"


def test_warm_set_never_takes_the_pool_past_its_maximum() -> None:
    assert warm_target(SPEC, 2) == 2
    assert warm_target(SPEC, 5) == 1
    assert warm_target(SPEC, 6) == 0
    assert warm_target(SPEC, 60) == 0, "the target is clamped first"
    full = [serving(i) for i in range(6)] + [asleep(1), asleep(2)]
    p = plan(SPEC, 6, full, HOSTS, now=NOW)
    assert sorted(a.uuid for a in p.actions if isinstance(a, Remove)) == ["w1", "w2"]


def test_warm_set_is_trimmed_newest_first() -> None:
    p = plan(replace(SPEC, warm=1), 2, [serving(1), serving(2), asleep(1, age=10),
                                        asleep(2, age=90)], HOSTS, now=NOW)
    assert p.actions == (Remove("w1", "web-w1", "hv1", "warm set to 1"),)


def test_no_wake_on_a_draining_host_and_dedicated_before_overflow() -> None:
    live = {h.name: h for h in (HostInfo("hv1", draining=True), HostInfo("hv2"),
                                HostInfo("ov1", overflow=True))}
    order = wake_order([asleep(1, "hv1", 300), asleep(2, "ov1", 200), asleep(3, "hv2", 10)],
                       live)
    assert [m.uuid for m in order] == ["w3", "w2"]


def test_booting_warm_workers_count_toward_the_warm_set_not_serving() -> None:
    booting = MemberView("b1", "web-b1", "hv1", NOW - 5, "running", warm=WARM_BOOTING)
    p = plan(SPEC, 2, [serving(1), serving(2), asleep(1), booting], HOSTS, now=NOW,
             marker=True)
    assert p.actions == () and (p.ready, p.warm, p.warming) == (2, 1, 1)


def test_a_booted_warm_worker_is_put_to_sleep_by_a_later_round() -> None:
    """Nothing waits for a boot: the round that sees it ready (its marker, or running
    when the template has none) plans its sleep."""
    ready = MemberView("b1", "web-b1", "hv1", NOW - 5, "running", warm=WARM_BOOTING,
                       ready_at=NOW - 1)
    for view, marker in ((ready, True), (replace(ready, ready_at=0.0), False)):
        p = plan(SPEC, 2, [serving(1), serving(2), asleep(1), view], HOSTS, now=NOW,
                 marker=marker)
        assert p.actions == (Sleep("b1", "web-b1", "hv1", "booted"),)
        assert (p.warm, p.warming) == (1, 1)


def sleeping(state: str, sleep: str, since_ago: float = 2.0) -> MemberView:
    return MemberView("z1", "web-z1", "hv1", NOW - 60, state, warm=WARM_SLEEPING,
                      since=NOW - since_ago, step=sleep)


def test_a_sleeping_worker_is_recorded_asleep_once_its_intent_is_done() -> None:
    members = [serving(1), serving(2), asleep(1)]
    for sleep in ("pending", "running"):
        p = plan(SPEC, 2, [*members, sleeping("running", sleep)], HOSTS, now=NOW)
        assert p.actions == () and (p.warm, p.warming) == (1, 1)
    p = plan(SPEC, 2, [*members, sleeping("shutoff", "done")], HOSTS, now=NOW)
    assert p.actions == (MarkAsleep("z1", "web-z1", "hv1", "its sleep is done"),)
    assert (p.warm, p.warming) == (2, 0)
    # done and needed at once: woken (the wake records it serving), not marked
    p = plan(SPEC, 4, [*members, sleeping("shutoff", "done")], HOSTS, now=NOW)
    assert [type(a) for a in p.actions] == [Wake, Wake, Clone]


def test_failed_lost_or_stuck_warm_workers_are_removed_and_refilled() -> None:
    members = [serving(1), serving(2), asleep(1)]
    stuck_booting = MemberView("b1", "web-b1", "hv1", NOW - WARM_TIMEOUT - 1, "running",
                               warm=WARM_BOOTING)
    for bad in (sleeping("running", "failed"), sleeping("shutoff", "gone"),
                sleeping("running", "running", since_ago=WARM_TIMEOUT + 1), stuck_booting,
                replace(asleep(7), warm=WARM_FAILED)):
        p = plan(SPEC, 2, [*members, bad], HOSTS, now=NOW, marker=True)
        assert Remove(bad.uuid, bad.name, "hv1", p.actions[0].reason) == p.actions[0], bad
        assert Clone(1, (), "1 of 2 warm", warm=True) in p.actions, bad


def test_no_second_refill_while_one_is_under_way() -> None:
    """What a refill started is in the registry at once (booting, then sleeping), so
    the next round, or a new leader's first, does not clone it again."""
    members = [serving(1), serving(2),
               MemberView("b1", "web-b1", "hv1", NOW, "missing", warm=WARM_BOOTING),
               sleeping("running", "pending")]
    p = plan(SPEC, 2, members, HOSTS, now=NOW, marker=True)
    assert p.actions == () and p.warming == 2


def test_broken_and_lost_warm_workers_are_replaced() -> None:
    vanished = asleep(1, state="missing")
    gone = asleep(2, host="hv9")
    stuck = MemberView("b1", "web-b1", "hv1", NOW - 500, "shutoff", warm=WARM_BOOTING)
    p = plan(SPEC, 2, [serving(1), serving(2), vanished, gone, stuck], HOSTS, now=NOW)
    assert {type(a) for a in p.actions} == {Remove, Forget, Clone}
    assert Forget("w2", "web-w2", "hv9", "host hv9 is gone") in p.actions
    assert {a.uuid for a in p.actions if isinstance(a, Remove)} == {"w1", "b1"}
    assert Clone(2, (), "0 of 2 warm", warm=True) in p.actions


def test_a_paused_warm_worker_is_asleep_not_serving() -> None:
    p = plan(SPEC, 3, [serving(1), serving(2), asleep(1, state="paused")], HOSTS, now=NOW)
    assert p.ready == 2 and isinstance(p.actions[0], Wake)


def test_memory_bounds_serving_clones_before_warm_ones() -> None:
    hosts = (HostInfo("hv1", free_memory_mib=256),)
    p = plan(SPEC, 3, [serving(1)], hosts, now=NOW, worker_memory_mib=128)
    assert [a for a in p.actions if isinstance(a, Clone)] == [Clone(2, (), "1 of 3 workers")]


def test_warm_size_problems() -> None:
    assert warm_problems(0, "hibernate", 4) == []
    assert warm_problems(4, "pause", 4) == []
    assert warm_problems(-1, "pause", 4) == ["warm size must be >= 0, not -1"]
    assert warm_problems(5, "pause", 4) == ["warm size 5 is above the pool's maximum 4"]
    assert warm_problems(1, "sleep", 4) == [
        "warm mode must be one of hibernate, pause, not 'sleep'"]
    assert PoolSpec("p", "t", 1, 3, 1, warm=4).problems() == [
        "warm size 4 is above the pool's maximum 3"]


@settings(max_examples=200, deadline=None)
@given(target=st.integers(0, 12), n_serving=st.integers(0, 8), n_asleep=st.integers(0, 8),
       warm=st.integers(0, 6))
def test_property_wakes_and_clones_make_up_exactly_the_shortfall(
        target: int, n_serving: int, n_asleep: int, warm: int) -> None:
    spec = PoolSpec("web", "tmpl", min=0, max=8, desired=0, warm=min(warm, 8))
    members = [serving(i, "hv1" if i % 2 else "hv2") for i in range(n_serving)] + \
        [asleep(i, "hv2" if i % 2 else "hv1", age=i) for i in range(n_asleep)]
    p = plan(spec, target, members, HOSTS, now=NOW)
    size = spec.clamp(target)
    wakes = sum(isinstance(a, Wake) for a in p.actions)
    cold = sum(a.count for a in p.actions if isinstance(a, Clone) and not a.warm)
    refill = sum(a.count for a in p.actions if isinstance(a, Clone) and a.warm)
    assert wakes == min(max(0, size - n_serving), n_asleep)
    assert wakes + cold == max(0, size - n_serving)
    trimmed = sum(isinstance(a, Remove) and a.uuid.startswith("w") for a in p.actions)
    after = n_asleep - wakes - trimmed + refill
    assert after == warm_target(spec, size) <= spec.max - size


def waking(step: str, state: str = "shutoff", since_ago: float = 2.0) -> MemberView:
    return MemberView("k1", "web-k1", "hv1", NOW - 60, state, warm=WARM_WAKING,
                      since=NOW - since_ago, step=step, intent="i-1")


def test_a_wake_in_flight_is_starting_serving_capacity_and_never_sent_twice() -> None:
    """Nothing waits for a wake: the round that sends it returns; the next rounds count
    the worker as starting (no second wake, no cold clone for it), record it serving
    once its intent is done, and remove it when the wake failed or is stuck."""
    members = [serving(1), asleep(1), asleep(2)]
    for step in ("pending", "running"):
        p = plan(SPEC, 2, [*members, waking(step)], HOSTS, now=NOW)
        assert p.actions == () and (p.ready, p.starting, p.warm) == (1, 1, 2), step
    p = plan(SPEC, 2, [*members, waking("done", "running")], HOSTS, now=NOW)
    assert p.actions == (MarkAwake("k1", "web-k1", "hv1", "its wake is done"),)
    assert (p.ready, p.starting) == (2, 0)
    # done, its guest record not updated yet: starting, not broken
    p = plan(SPEC, 2, [*members, waking("done")], HOSTS, now=NOW)
    assert p.actions == () and p.starting == 1
    # recorded, never sent (its leader stopped in between): sent under the same id
    p = plan(SPEC, 2, [*members, waking("gone")], HOSTS, now=NOW)
    assert p.actions == (Wake("k1", "web-k1", "hv1", "its wake was never sent", "i-1"),)
    for bad in (waking("failed"), waking("running", since_ago=WARM_TIMEOUT + 1),
                waking("gone", since_ago=WARM_TIMEOUT + 1)):
        p = plan(SPEC, 2, [*members, bad], HOSTS, now=NOW)
        assert [a.uuid for a in p.actions if isinstance(a, Remove)] == ["k1"], bad
        assert [a.uuid for a in p.actions if isinstance(a, Wake)] == ["w1"], bad
    assert is_serving(waking("pending")) and not is_serving(asleep(1))


def cloning(step: str, state: str = "missing", since_ago: float = 5.0,
            error: str = "") -> MemberView:
    """A cold clone whose clone intent ``c-1`` is in ``step``."""
    return MemberView("c1", "web-c1", "hv2", NOW - since_ago, state, warm=WARM_CLONING,
                      since=NOW - since_ago, step=step, intent="c-1", error=error)


def test_a_cold_clone_in_flight_is_starting_and_never_cloned_twice() -> None:
    """Like a wake: the round that sends a cold clone returns; the next rounds count it
    starting (no second clone), record it serving once its intent is done and it runs,
    remove it (naming its error) when it failed or is stuck, and withdraw the id of one
    whose intent was never sent (it cannot be sent again: its identity is gone)."""
    members = [serving(1), asleep(1), asleep(2)]
    for step in ("pending", "running"):
        p = plan(SPEC, 2, [*members, cloning(step)], HOSTS, now=NOW)
        assert p.actions == () and (p.ready, p.starting) == (1, 1), step
    done = plan(SPEC, 2, [*members, cloning("done", "running")], HOSTS, now=NOW)
    assert done.actions == (MarkAwake("c1", "web-c1", "hv2", "its clone is done",
                                      WARM_CLONING),)
    # its intent record expired (a leader away for long), the guest runs: serving
    p = plan(SPEC, 2, [*members, cloning("gone", "running")], HOSTS, now=NOW)
    assert p.actions == done.actions
    p = plan(SPEC, 2, [*members, cloning("gone")], HOSTS, now=NOW)
    assert p.actions == (Withdraw("c1", "web-c1", "hv2", "c-1", "its clone was never sent"),)
    failed = plan(SPEC, 2, [*members, cloning("failed", error="no space left")], HOSTS,
                  now=NOW)
    # replaced: an asleep worker woken, the warm set refilled
    assert [type(a).__name__ for a in failed.actions] == ["Wake", "Remove", "Clone"]
    assert failed.failures == ("clone of web-c1 on hv2 failed: no space left",)
    stuck = plan(SPEC, 2, [*members, cloning("running", since_ago=WARM_TIMEOUT + 1)],
                 HOSTS, now=NOW)
    assert [type(a).__name__ for a in stuck.actions] == ["Wake", "Remove", "Clone"]
    assert stuck.failures == () and is_serving(cloning("pending"))


def removing(step: str, state: str = "running", host: str = "hv1",
             error: str = "") -> MemberView:
    return MemberView("r1", "web-r1", host, NOW - 100, state, warm=WARM_REMOVING,
                      since=NOW - 5, step=step, intent="r-1", error=error)


def test_a_removal_in_flight_counts_nowhere_and_is_never_sent_twice() -> None:
    """The round that sends a removal returns; while its intent runs, the worker is
    neither serving nor warm (no second removal, no clone for it); once done (or its
    intent expired with the guest gone) its records are forgotten; one never sent is
    sent under its own id; a failed one is tried again (its error named); on a host
    that is gone it is forgotten, its recorded id with it."""
    members = [serving(1), serving(2), asleep(1), asleep(2)]
    for step in ("pending", "running"):
        p = plan(SPEC, 2, [*members, removing(step)], HOSTS, now=NOW)
        assert p.actions == () and (p.ready, p.starting, p.warm) == (2, 0, 2), step
    done = (MarkRemoved("r1", "web-r1", "hv1", "its removal is done"),)
    assert plan(SPEC, 2, [*members, removing("done", "missing")], HOSTS, now=NOW).actions \
        == done
    assert plan(SPEC, 2, [*members, removing("gone", "missing")], HOSTS, now=NOW).actions \
        == done
    p = plan(SPEC, 2, [*members, removing("gone")], HOSTS, now=NOW)
    assert p.actions == (Remove("r1", "web-r1", "hv1", "its removal was never sent", "r-1"),)
    p = plan(SPEC, 2, [*members, removing("failed", error="busy")], HOSTS, now=NOW)
    assert p.actions == (Remove("r1", "web-r1", "hv1", "its removal failed: again",
                                retry="r-1"),)
    assert p.failures == ("removal of web-r1 on hv1 failed: busy",)
    p = plan(SPEC, 2, [*members, removing("running", host="gone")], HOSTS, now=NOW)
    assert p.actions == (Forget("r1", "web-r1", "gone", "host gone is gone", "r-1"),)
    # a shrink never picks a worker already being removed
    p = plan(SPEC, 1, [*members, removing("running")], HOSTS, now=NOW)
    assert [(type(a), a.uuid) for a in p.actions] == [(Remove, "s1")]
