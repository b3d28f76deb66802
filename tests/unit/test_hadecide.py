"""Unit and property tests of gridtool.hadecide (the HA manager's decisions)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.fencing import Fence, FenceKind, Observation, Observed, Unreadable
from gridtool.hadecide import (
    Action,
    Attempt,
    Blocked,
    Choice,
    GuestKind,
    GuestView,
    LiveHost,
    MarkError,
    Pending,
    ReleaseFences,
    Restart,
    RestartLimits,
    Snapshot,
    choose_most_free,
    decide,
)

HA, PINNED, NONE = GuestKind.HA, GuestKind.PINNED, GuestKind.NONE


def guest(name: str = "vm1", host: str | None = "h9", state: str = "running",
          kind: GuestKind = HA, memory: int = 1024, volumes: Sequence[str] = ("vol1",),
          desired: str = "running") -> GuestView:
    return GuestView(f"u-{name}", name, host, state, memory, kind, tuple(volumes), desired)


def held_by(holder: str, g: GuestView, volume: str | None = None, rev: int = 3) -> Observed:
    volume = volume or g.volumes[0]
    kind = FenceKind.PINNED if g.kind is PINNED else FenceKind.HA
    return Observed(Fence(volume, holder, g.uuid, g.name, kind, 0), rev)


HOSTS = (LiveHost("h1", 4096), LiveHost("h2", 8192), LiveHost("h3", 2048))


def snap(*guests: GuestView, hosts: Sequence[LiveHost] = HOSTS, **kw: object) -> Snapshot:
    return Snapshot(now=kw.pop("now", 10_000), hosts=tuple(hosts), guests=guests, **kw)


def test_ha_guest_of_a_gone_host_restarts_on_the_host_with_most_free_memory() -> None:
    assert decide(snap(guest())) == (
        Restart("u-vm1", "vm1", "h2", "h9", True, "host h9 gone"),)


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


def test_pinned_guest_of_a_confirmed_dead_host_is_released_then_restarted() -> None:
    g = guest(kind=PINNED, volumes=("vol1", "vol2"))
    fences = {"vol1": held_by("h9", g, "vol1", 5), "vol2": held_by("h9", g, "vol2", 6)}
    release, restart = decide(snap(g, fences=fences, confirmed_dead={"h9"}))
    assert isinstance(release, ReleaseFences) and release.host == "h9"
    assert [(s.volume, s.mod_revision) for s in release.plan.steps] == [("vol1", 5), ("vol2", 6)]
    assert restart == Restart("u-vm1", "vm1", "h2", "h9", True, "host h9 confirmed dead")
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


def test_chooser_skips_down_draining_and_small_hosts_and_breaks_ties_by_name() -> None:
    hosts = [LiveHost("a", 9000, up=False), LiveHost("b", 9000, draining=True),
             LiveHost("d", 3000), LiveHost("c", 3000), LiveHost("e", 500)]
    assert choose_most_free(guest(memory=1000), hosts) == Choice("c")
    none = choose_most_free(guest(memory=4000), hosts)
    assert none.host is None and "4000 MiB" in none.reason


def test_one_round_accounts_for_its_own_placements() -> None:
    hosts = (LiveHost("h1", 4096), LiveHost("h2", 6144))
    a, b, c = guest("a", memory=4096), guest("b", memory=2048), guest("c", memory=2048)
    actions = decide(snap(a, b, c, hosts=hosts))
    assert [(x.name, getattr(x, "on_host", None)) for x in actions] == [
        ("a", "h2"), ("b", "h1"), ("c", "h1")]
    d = guest("d", memory=4096)
    last = decide(snap(a, b, c, d, hosts=hosts))[-1]
    assert isinstance(last, Blocked) and last.reason.startswith("no capacity")


def test_custom_chooser_is_used_and_checked() -> None:
    def last_host(g: GuestView, hosts: Sequence[LiveHost]) -> Choice:
        return Choice(max(h.name for h in hosts))

    assert decide(snap(guest()), choose=last_host)[0].on_host == "h3"  # type: ignore[union-attr]
    assert decide(snap(guest()), choose=lambda g, h: Choice(None, "nope"))[0].reason == "nope"
    with pytest.raises(ValueError, match="not a live host"):
        decide(snap(guest()), choose=lambda g, h: Choice("h9"))


def test_snapshot_refuses_duplicate_hosts() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        snap(hosts=(LiveHost("h1", 1), LiveHost("h1", 2)))


# --------------------------------------------------------------------------- properties

NAMES = ["h1", "h2", "h3", "h4"]
VOLS = ["v1", "v2", "v3", "v4", "v5"]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    live = draw(st.lists(st.sampled_from(NAMES), unique=True))
    hosts = [LiveHost(h, draw(st.integers(0, 8192)), draw(st.booleans()), draw(st.booleans()))
             for h in live]
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
