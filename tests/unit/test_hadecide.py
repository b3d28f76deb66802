"""Unit and property tests of gridtool.ha.rules (the HA manager's decisions)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.fencing.recovery import HostFence
from gridtool.fencing.rules import Fence, FenceKind, Observation, Observed, Unreadable
from gridtool.ha.rules import (
    Action,
    Attempt,
    Blocked,
    GuestKind,
    GuestView,
    MarkError,
    Pending,
    ReleaseFences,
    Restart,
    RestartLimits,
    Snapshot,
    attempts,
    decide,
    round_holders,
    stale_holders,
)
from gridtool.placement.rules import GuestNeeds, HostView, PlacementPolicy, Weigher, tiebreak

HA, PINNED, NONE = GuestKind.HA, GuestKind.PINNED, GuestKind.NONE


def guest(name: str = "vm1", host: str | None = "h9", state: str = "running",
          kind: GuestKind = HA, memory: int = 1024, volumes: Sequence[str] = ("vol1",),
          desired: str = "running", **needs: Any) -> GuestView:
    """A guest view; ``needs`` (storage, anti_affinity, vcpus, ...) become its GuestNeeds."""
    wants = GuestNeeds(name, memory, **{"vcpus": 1, **needs}) if needs else None
    return GuestView(f"u-{name}", name, host, state, memory, kind, tuple(volumes), desired,
                     wants)


def live(name: str, free: int, total: int = 8192, **kw: Any) -> HostView:
    """A live host with ``free`` of ``total`` MiB free and 8 CPUs."""
    return HostView(name, total, free, 8, **kw)


def held_by(holder: str, g: GuestView, volume: str | None = None, rev: int = 3) -> Observed:
    volume = volume or g.volumes[0]
    kind = FenceKind.PINNED if g.kind is PINNED else FenceKind.HA
    return Observed(Fence(volume, holder, g.uuid, g.name, kind, 0), rev)


HOSTS = (live("h1", 4096), live("h2", 8192), live("h3", 2048))


#: A lost host that its fence agent powered off (the fence most tests take as given).
POWERED = "power: off confirmed"


def powered_off(*guests: GuestView, hosts: Sequence[HostView] = HOSTS) -> dict[str, HostFence]:
    """A power fence recorded for each lost host of ``guests``."""
    live_names = {h.name for h in hosts}
    return {g.host: HostFence(g.host, 0.0, power="off", power_message="off confirmed")
            for g in guests if g.host and g.host not in live_names}


def snap(*guests: GuestView, hosts: Sequence[HostView] = HOSTS, **kw: Any) -> Snapshot:
    """A snapshot at t=10000; lost hosts are power-fenced unless ``host_fences`` is given."""
    kw.setdefault("host_fences", powered_off(*guests, hosts=hosts))
    return Snapshot(now=kw.pop("now", 10_000), hosts=tuple(hosts), guests=guests, **kw)


def test_ha_guest_of_a_gone_host_restarts_on_the_host_with_most_free_memory() -> None:
    assert decide(snap(guest())) == (
        Restart("u-vm1", "vm1", "h2", "h9", True, "host h9 gone", POWERED),)


def test_an_ha_guest_is_never_restarted_on_an_unprotected_host() -> None:
    """Issue 12 item 1: no working watchdog and no fencing there, a hung agent would
    leave the guest running while it runs elsewhere; pinned guests may go there."""
    unprotected = tuple(replace(h, protected=h.name == "h3") for h in HOSTS)
    assert decide(snap(guest(), hosts=unprotected)) == (
        Restart("u-vm1", "vm1", "h3", "h9", True, "host h9 gone",
                POWERED),)  # the only protected one
    (action,) = decide(snap(guest(vcpus=1), hosts=unprotected[:2]))
    assert action == Blocked("u-vm1", "vm1", "no host passes the filters (unprotected on 2)")
    pinned = guest(kind=PINNED)
    (_, restart) = decide(snap(pinned, hosts=unprotected[:2], confirmed_dead=frozenset({"h9"}),
                               fences={"vol1": held_by("h9", pinned)}))
    assert isinstance(restart, Restart) and restart.on_host == "h2"


def test_fence_before_recover_ha_waits_while_any_fence_key_exists() -> None:
    g = guest(volumes=("vol1", "vol2"))
    (action,) = decide(snap(g, fences={"vol2": held_by("h9", g, "vol2")}))
    assert action == Blocked("u-vm1", "vm1", "waiting for fence vol2 held by h9 to go")
    (junk,) = decide(snap(g, fences={"vol1": Unreadable("vol1", 4, "bad")}))
    assert isinstance(junk, Blocked) and "unreadable" in junk.reason


def test_nothing_for_running_guests_of_live_hosts_or_unmanaged_guests() -> None:
    guests = (
        guest("a", host="h1"),
        guest("b", kind=NONE),
        guest("c", desired="stopped"),
        guest("d", state="error"),
        guest("e", host="h1", state="paused"),
    )
    assert decide(snap(*guests)) == ()


def test_ha_guest_down_on_a_live_host_is_restarted() -> None:
    (action,) = decide(snap(guest(host="h2", state="crashed")))
    assert action == Restart("u-vm1", "vm1", "h2", "h2", False, "crashed on h2")


def test_pinned_guest_waits_for_confirm_dead() -> None:
    g = guest(kind=PINNED)
    (action,) = decide(snap(g, fences={"vol1": held_by("h9", g)}))
    assert action == Blocked("u-vm1", "vm1",
                             "pinned: host h9 unreachable; waiting for `host confirm-dead h9`")
    assert decide(snap(guest(kind=PINNED, host="h1"))) == ()
    assert decide(snap(guest(kind=PINNED, host=None)))[0].reason == "pinned guest without a host"
    assert decide(snap(guest(host=None)))[0].reason == "not placed"  # type: ignore[union-attr]


def test_pinned_guest_down_on_its_live_host_is_restarted_there_only() -> None:
    g = guest(kind=PINNED, host="h3", state="crashed")  # h2 has more room: not a candidate
    (action,) = decide(snap(g, fences={"vol1": held_by("h3", g)}))
    assert action == Restart("u-vm1", "vm1", "h3", "h3", False, "crashed on h3")
    shut = guest(kind=PINNED, host="h3", state="shutoff")  # autostart refused at boot
    assert decide(snap(shut))[0] == Restart("u-vm1", "vm1", "h3", "h3", False,
                                            "shutoff on h3")
    assert decide(snap(guest(kind=PINNED, host="h3", state="shutoff",
                             desired="stopped"))) == ()
    (held,) = decide(snap(g, fences={"vol1": held_by("h1", g)}))
    assert held == Blocked("u-vm1", "vm1", "pinned: fence vol1 held by h1, not by h3")
    big = guest(kind=PINNED, host="h3", state="crashed", memory=4096)
    (full,) = decide(snap(big))
    assert isinstance(full, Blocked) and "h3" in full.reason  # the allocator's reason
    draining = (live("h1", 4096), live("h3", 2048, draining=True))
    (drain,) = decide(snap(g, hosts=draining))
    assert isinstance(drain, Blocked) and "draining" in drain.reason


def test_failed_restarts_do_not_count_and_back_off() -> None:
    g = guest(host="h2", state="crashed")
    limits = RestartLimits(max_restarts=2, window=3600, retry_after=10, retry_max=300)
    failed = tuple(Attempt(9_000 + i, False, failed=True) for i in range(5))
    # five failed intents: no limit reached; the fifth failure waits min(300, 10 * 2**4)
    (wait,) = decide(snap(g, history={g.uuid: failed}, now=9_004 + 159), limits)
    assert wait == Blocked("u-vm1", "vm1",
                           "5 restart(s) in a row failed; next try 160 s after the last")
    assert isinstance(decide(snap(g, history={g.uuid: failed}, now=9_004 + 160),
                             limits)[0], Restart)
    many = tuple(Attempt(5_000 + i, False, failed=True) for i in range(12))
    assert isinstance(decide(snap(g, history={g.uuid: many}, now=5_011 + 300), limits)[0],
                      Restart)  # capped at retry_max
    # a success ends the run of failures; successes still count against the limit
    mixed = (Attempt(9_000, False, failed=True), Attempt(9_100, False))
    assert isinstance(decide(snap(g, history={g.uuid: mixed}, now=9_101), limits)[0], Restart)
    two = (*mixed, Attempt(9_200, False))
    assert isinstance(decide(snap(g, history={g.uuid: two}, now=9_300), limits)[0], MarkError)


def test_a_restart_that_failed_on_a_host_is_tried_at_once_on_another() -> None:
    """A lost host's guest whose restart intent failed on h2 (a refusing or unhealthy
    host) goes at once to the next host placement gives without h2; a second failure in
    a row, or no other host, backs off as before; where it failed comes from the stored
    settings (``attempts``: ``failed_on`` names the host of each failed attempt)."""
    g = guest()  # on lost h9
    limits = RestartLimits(retry_after=10)
    one = attempts([[9_995, 1.0, 1.0]], {"h2": 9_995})
    assert one == (Attempt(9_995, True, True, "h2"),)
    (retry,) = decide(snap(g, history={g.uuid: one}), limits)
    assert isinstance(retry, Restart) and retry.on_host == "h1"  # h2 has most free memory
    (alone,) = decide(snap(g, hosts=(live("h2", 8192),), history={g.uuid: one}), limits)
    assert alone == Blocked("u-vm1", "vm1",
                            "1 restart(s) in a row failed; next try 10 s after the last")
    two = attempts([[9_980, 1.0, 1.0], [9_990, 1.0, 1.0]], {"h1": 9_980, "h2": 9_990})
    (wait,) = decide(snap(g, history={g.uuid: two}), limits)
    assert isinstance(wait, Blocked) and "2 restart(s) in a row failed" in wait.reason
    unknown = attempts([[9_995, 1.0, 1.0]], {})  # stored before failed_on existed
    assert isinstance(decide(snap(g, history={g.uuid: unknown}), limits)[0], Blocked)


def test_pinned_guest_of_a_confirmed_dead_host_is_released_then_restarted() -> None:
    g = guest(kind=PINNED, volumes=("vol1", "vol2"))
    fences = {"vol1": held_by("h9", g, "vol1", 5), "vol2": held_by("h9", g, "vol2", 6)}
    release, restart = decide(snap(g, fences=fences, confirmed_dead={"h9"}))
    assert isinstance(release, ReleaseFences) and release.host == "h9"
    assert [(s.volume, s.mod_revision) for s in release.plan.steps] == [("vol1", 5), ("vol2", 6)]
    assert restart == Restart("u-vm1", "vm1", "h2", "h9", True, "host h9 confirmed dead",
                               POWERED)
    assert decide(snap(g, confirmed_dead={"h9"}))[0] == restart  # fences already gone


def test_pinned_guest_is_not_moved_if_another_host_holds_a_fence() -> None:
    g = guest(kind=PINNED)
    (action,) = decide(snap(g, fences={"vol1": held_by("h1", g)}, confirmed_dead={"h9"}))
    assert action == Blocked("u-vm1", "vm1", "pinned: fence vol1 is not held by dead host h9")


def test_an_intent_in_flight_blocks_a_second_action() -> None:
    g = guest()
    assert decide(snap(g, pending={g.uuid: Pending(g.uuid, "h1", 9_990)})) == ()
    stale = Pending(g.uuid, "h1", 10_000 - 300)
    assert isinstance(decide(snap(g, pending={g.uuid: stale}))[0], Restart)
    to_dead = Pending(g.uuid, "h7", 9_990)
    assert isinstance(decide(snap(g, pending={g.uuid: to_dead}))[0], Restart)


def test_restart_and_relocation_limits() -> None:
    g = guest()
    limits = RestartLimits(max_restarts=3, max_relocations=2, window=3600)
    three = (Attempt(9_000, False), Attempt(9_500, False), Attempt(9_900, False))
    (action,) = decide(snap(g, history={g.uuid: three}), limits)
    assert action == MarkError("u-vm1", "vm1", "restart limit: 3 restarts within 3600 s")
    moved = (Attempt(9_000, True), Attempt(9_900, True))
    (action,) = decide(snap(g, history={g.uuid: moved}), limits)
    assert action == MarkError("u-vm1", "vm1", "relocation limit: 2 relocations within 3600 s")
    in_place = guest(host="h2", state="crashed")  # restarting in place is not a relocation
    assert isinstance(decide(snap(in_place, history={g.uuid: moved}), limits)[0], Restart)
    old = tuple(Attempt(1_000 + i, True) for i in range(5))  # outside the window
    assert isinstance(decide(snap(g, history={g.uuid: old}), limits)[0], Restart)


def test_allocator_skips_down_draining_and_small_hosts_and_breaks_ties_by_its_hash() -> None:
    hosts = [live("a", 9000, 9000, up=False), live("b", 9000, 9000, draining=True),
             live("d", 3000), live("c", 3000), live("e", 500)]
    (action,) = decide(snap(guest(memory=1000), hosts=hosts))
    assert isinstance(action, Restart)
    assert action.on_host == min("cd", key=lambda h: tiebreak("vm1", h))
    (none,) = decide(snap(guest(memory=4000), hosts=hosts))
    assert none == Blocked("u-vm1", "vm1",
                           "no host passes the filters (down on 1, draining on 1, memory on 3)")


def test_one_round_accounts_for_its_own_placements() -> None:
    hosts = (live("h1", 4096, 4096), live("h2", 6144, 6144))
    a, b, c = guest("a", memory=4096), guest("b", memory=2048), guest("c", memory=1024)
    actions = decide(snap(a, b, c, hosts=hosts))
    assert [(x.name, getattr(x, "on_host", None)) for x in actions] == [
        ("a", "h2"), ("b", "h1"), ("c", "h1")]
    d = guest("d", memory=4096)
    last = decide(snap(a, b, c, d, hosts=hosts))[-1]
    assert last == Blocked("u-d", "d", "no host passes the filters (memory on 2)")


def test_one_round_keeps_anti_affinity_between_its_own_restarts() -> None:
    hosts = (live("h1", 8192), live("h2", 4096), live("h3", 2048))
    pair = [guest(n, memory=512, anti_affinity="db") for n in ("db1", "db2", "db3", "db4")]
    actions = decide(snap(*pair, hosts=hosts))
    assert sorted(a.on_host for a in actions if isinstance(a, Restart)) == ["h1", "h2", "h3"]
    assert actions[-1] == Blocked("u-db4", "db4",
                                  "no host passes the filters (anti-affinity on 3)")


def on_host(actions: tuple[Action, ...]) -> str:
    (action,) = actions
    assert isinstance(action, Restart), action
    return action.on_host


def test_placement_policy_and_vcpus_are_the_allocators() -> None:
    assert on_host(decide(snap(guest()))) == "h2"  # spread: the emptiest host
    assert on_host(decide(snap(guest()), policy=PlacementPolicy(Weigher.PACK))) == "h3"
    hosts = (live("h1", 8192, vcpus_allocated=30), live("h2", 8192, vcpus_allocated=31))
    assert on_host(decide(snap(guest(vcpus=2), hosts=hosts))) == "h1"  # 8 CPUs x 4 vCPUs


def test_guest_needs_must_describe_the_guest() -> None:
    # memory only, and (an HA guest) a protected host
    assert guest().requirements() == GuestNeeds("vm1", 1024, 0, ha=True)
    with pytest.raises(ValueError, match="another guest"):
        GuestView("u", "vm1", None, "shutoff", 1024, HA, ("v",), "running",
                  GuestNeeds("vm2", 1024, 1))


def test_snapshot_refuses_duplicate_hosts() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        snap(hosts=(live("h1", 1), live("h1", 2)))


# --------------------------------------------------------------------------- storage

SHELF9 = frozenset({"aoe-e9."})


@given(frees=st.lists(st.integers(0, 8192), min_size=4, max_size=4),
       reaching=st.sets(st.sampled_from(["h1", "h2", "h3", "h4"]), min_size=2, max_size=2),
       memory=st.integers(1, 8192))
@settings(max_examples=300, deadline=None, database=None)
def test_ha_restart_only_on_a_host_that_reaches_its_storage(
        frees: list[int], reaching: set[str], memory: int) -> None:
    """Two of four live hosts reach the guest's shared storage: it restarts on the emptier
    of those two that has room, whatever the others have free, else it is Blocked."""
    hosts = [live(f"h{i}", free, storage=SHELF9 if f"h{i}" in reaching else {"aoe-e8."})
             for i, free in enumerate(frees, 1)]
    (action,) = decide(snap(guest(memory=memory, storage=SHELF9), hosts=hosts))
    fits = {h.name: h.free_memory_mib for h in hosts
            if h.name in reaching and h.free_memory_mib >= memory}
    if fits:
        assert isinstance(action, Restart) and action.on_host in fits
        assert fits[action.on_host] == max(fits.values())
    else:
        assert isinstance(action, Blocked) and "storage on 2" in action.reason


def test_ha_guest_blocked_when_no_host_that_reaches_its_storage_has_room() -> None:
    hosts = [live("h1", 512, storage=SHELF9), live("h2", 8192, storage={"aoe-e8."}),
             live("h3", 1000, storage=SHELF9), live("h4", 8192)]
    (action,) = decide(snap(guest(memory=1024, storage=SHELF9), hosts=hosts))
    assert action == Blocked("u-vm1", "vm1",
                             "no host passes the filters (memory on 2, storage on 2)")


# --------------------------------------------------------------------------- properties

NAMES = ["h1", "h2", "h3", "h4"]
VOLS = ["v1", "v2", "v3", "v4", "v5"]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    live_names = draw(st.lists(st.sampled_from(NAMES), unique=True))
    hosts = []
    for h in live_names:
        free = draw(st.integers(0, 8192))
        hosts.append(HostView(h, draw(st.integers(max(free, 1), 16384)), free,
                              draw(st.integers(1, 8)), up=draw(st.booleans()),
                              draining=draw(st.booleans())))
    guests = []
    for i in range(draw(st.integers(0, 6))):
        guests.append(GuestView(
            f"u{i}", f"vm{i}", draw(st.sampled_from([*NAMES, None])),
            draw(st.sampled_from(["running", "crashed", "shutoff", "paused", "error"])),
            draw(st.integers(1, 4096)), draw(st.sampled_from(list(GuestKind))),
            tuple(draw(st.lists(st.sampled_from(VOLS), min_size=1, max_size=2, unique=True))),
            draw(st.sampled_from(["running", "running", "stopped"])),
        ))
    fences: dict[str, Observation] = {}
    for v in draw(st.lists(st.sampled_from(VOLS), unique=True)):
        owner = draw(st.sampled_from(guests)) if guests and draw(st.booleans()) else None
        holder = draw(st.sampled_from(NAMES))
        kind = FenceKind.PINNED if owner and owner.kind is PINNED else FenceKind.HA
        uuid, name = (owner.uuid, owner.name) if owner else ("stranger", "stranger")
        fences[v] = Observed(Fence(v, holder, uuid, name, kind, 0), draw(st.integers(1, 99)))
    history = {g.uuid: tuple(Attempt(draw(st.integers(0, 10_000)), draw(st.booleans()))
                             for _ in range(draw(st.integers(0, 4)))) for g in guests}
    pending = {g.uuid: Pending(g.uuid, draw(st.sampled_from(NAMES)), draw(st.integers(0, 10_000)))
               for g in guests if draw(st.booleans())}
    dead = frozenset(draw(st.lists(st.sampled_from(NAMES))))
    return Snapshot(10_000, tuple(hosts), tuple(guests), fences, dead, history, pending)


def _released_before(actions: Sequence[Action], restart: Restart) -> set[str]:
    freed: set[str] = set()
    for a in actions:
        if a is restart:
            return freed
        if isinstance(a, ReleaseFences) and a.guest == restart.guest:
            freed |= {s.volume for s in a.plan.steps}
    return freed


@given(snapshots())
@settings(max_examples=150, deadline=None, database=None)
def test_never_restart_a_guest_whose_fence_key_exists(s: Snapshot) -> None:
    actions = decide(s)
    guests = {g.uuid: g for g in s.guests}
    live = {h.name: h for h in s.hosts}
    restarts = [a for a in actions if isinstance(a, Restart)]
    assert len({r.guest for r in restarts}) == len(restarts)  # at most once per guest
    placed: dict[str, int] = {}
    for r in restarts:
        g = guests[r.guest]
        existing = {v for v in g.volumes if v in s.fences}
        freed = _released_before(actions, r)
        if g.kind is PINNED and r.on_host == g.host:  # in place: only its host's fences
            assert g.host in live and not freed
            assert all(isinstance(o := s.fences[v], Observed) and o.fence.holder == g.host
                       for v in existing)
            existing = set()
        assert existing <= freed, f"restart of {g.name} while fence {existing - freed} exists"
        if freed:  # only a pinned guest of an operator-confirmed-dead host that is gone
            assert g.kind is PINNED and g.host in s.confirmed_dead and g.host not in live
            assert all(isinstance(o := s.fences[v], Observed) and o.fence.holder == g.host
                       for v in freed)
        target = live[r.on_host]
        placed[r.on_host] = placed.get(r.on_host, 0) + g.memory_mib
        assert target.up and not target.draining
        assert placed[r.on_host] <= target.free_memory_mib
    for a in actions:
        g = guests[a.guest]
        assert g.kind is not NONE and g.desired == "running" and g.state != "error"
        p = s.pending.get(g.uuid)
        assert p is None or p.host not in live or s.now - p.since >= 300


@given(snapshots(), st.randoms(use_true_random=False))
@settings(max_examples=50, deadline=None, database=None)
def test_decisions_do_not_depend_on_input_order(s: Snapshot, rnd: random.Random) -> None:
    hosts, guests = list(s.hosts), list(s.guests)
    rnd.shuffle(hosts)
    rnd.shuffle(guests)
    shuffled = Snapshot(s.now, tuple(hosts), tuple(guests), s.fences, s.confirmed_dead,
                        s.history, s.pending)
    assert decide(shuffled) == decide(s)


def test_a_fence_holder_is_remembered_while_its_host_is_lost() -> None:
    """A host that dies between starting a guest and reporting it running leaves only its
    HA fence, which goes with its lease: the holder last seen stands for the round while
    that host is lost, a current fence replaces it, and a live host that no longer holds
    the fence released it."""
    assert round_holders({}, {"u1": "h1"}, live={"h2"}) == {"u1": "h1"}
    assert round_holders({"u1": "h2"}, {"u1": "h1"}, live={"h2"}) == {"u1": "h2"}
    assert round_holders({}, {"u1": "h1"}, live={"h1", "h2"}) == {}
    assert round_holders({"u2": "h2"}, {"u1": "h1"}, live={"h1", "h2"}) == {"u2": "h2"}


def test_a_holder_key_is_stale_only_once_its_live_host_registered_again_without_it() -> None:
    """``holders/`` keys outlive their fence on purpose; the manager deletes one only when
    its host is back (registered after the key was written) and holds no fence of the
    guest: the fence it stood for died with an earlier lease."""
    remembered = {"u1": ("h1", 10), "u2": ("h2", 10), "u3": ("h3", 10), "u4": ("h1", 30)}
    current = {"u2": "h2"}
    registrations = {"h1": 20, "h2": 20}  # h3 is lost: no registration read
    assert stale_holders(remembered, current, registrations, live={"h1", "h2"}) == {"u1": 10}
