"""The self-fence (issue 12, item 2): the pure parts on plain data (which guests to kill
or check on each tick, whether a start still fits before the lease deadline, the hook's
refusal near it) and ``agents.selffence.SelfFence`` on fake domains (every guest at once,
retried until libvirt says gone, checked again on every tick while the lease is in doubt)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import libvirt
import pytest

from agents.faults import Faults
from agents.lease import HostLease
from agents.selffence import SelfFence
from gridtool.clock import Clock
from gridtool.errors import ConfigError
from gridtool.fencing.rules import (
    Fate,
    Fence,
    FenceKind,
    GuestRef,
    LeaseClock,
    Observed,
    may_start,
    self_fence_round,
)
from gridtool.registry.memstore import MemStore
from tests.harness.testbed import wait_until

# --------------------------------------------------------------------------- lease clock


def test_a_start_must_fit_before_the_deadline() -> None:
    clock = LeaseClock.start(15, 20)  # margin 3: deadline 32
    assert clock.may_start(20, 0.5) and clock.may_start(31.4, 0.5)
    assert not clock.may_start(31.5, 0.5)  # the start would end at the deadline
    assert not clock.may_start(32, 0.0) and not clock.may_start(40, 0.0)
    assert not clock.revoked().may_start(20, 0.0)
    assert clock.why_not_start("h1", 20, 0.5) == ""
    assert clock.why_not_start("h1", 31.6, 0.5) == (
        "h1's lease is in doubt: its self-fence deadline is 0.4 s away and a start needs "
        "0.5 s; it starts no HA guest until a keepalive reaches the registry (etcd "
        "unreachable or slow?)")
    assert "deadline passed 1.0 s ago" in clock.why_not_start("h1", 33, 0.5)
    assert "lease is gone" in clock.revoked().why_not_start("h1", 20, 0.5)


# --------------------------------------------------------------------------- the hook's rule

HA_VM = GuestRef("u1", "vm1", FenceKind.PINNED, ("vol-a",))  # the hook does not know the kind


def held(kind: FenceKind, holder: str = "h1") -> dict:
    return {"vol-a": Observed(Fence("vol-a", holder, "u1", "vm1", kind, 0.0), 7)}


def test_the_hook_refuses_an_ha_start_near_the_deadline_and_says_why() -> None:
    clock = LeaseClock.start(15, 20)  # deadline 32
    assert may_start("h1", HA_VM, held(FenceKind.HA), now=20, lease=clock, budget=0.25).allow
    near = may_start("h1", HA_VM, held(FenceKind.HA), now=31.9, lease=clock, budget=0.25)
    assert not near.allow
    assert near.reason.startswith("h1's lease is in doubt: its self-fence deadline is 0.1 s")
    # a pinned guest does not die with the lease: the clock does not matter
    assert may_start("h1", HA_VM, held(FenceKind.PINNED), now=40, lease=clock).allow
    # the fence elsewhere: still the holder's refusal, not the clock's
    assert "held by h2" in may_start("h1", HA_VM, held(FenceKind.HA, "h2"), now=40,
                                      lease=clock).reason


# --------------------------------------------------------------------------- what to kill


def test_while_in_doubt_every_ha_fence_joins_and_every_target_is_checked_each_tick() -> None:
    first = self_fence_round({}, {}, {"u1": "vm1"}, in_doubt=True)
    assert (dict(first.targets), first.act, first.all_gone) == ({"u1": "vm1"}, ("u1",), False)
    # vm2's fence was taken before the deadline, its start came after the first pass
    later = self_fence_round(first.targets, {"u1": Fate.GONE}, {"u2": "vm2"}, in_doubt=True)
    assert later.act == ("u1", "u2") and not later.all_gone  # vm1 is checked again too
    gone = self_fence_round(later.targets, {"u1": Fate.GONE, "u2": Fate.GONE}, {}, True)
    assert gone.all_gone and not gone.over and gone.act == ("u1", "u2")
    back = self_fence_round(gone.targets, {"u1": Fate.ALIVE, "u2": Fate.GONE}, {}, True)
    assert not back.all_gone  # brought up again after it was confirmed gone


def test_after_a_new_lease_only_guests_not_confirmed_gone_are_pursued() -> None:
    targets = {"u1": "vm1", "u2": "vm2"}
    rnd = self_fence_round(targets, {"u1": Fate.GONE, "u2": Fate.UNKNOWN}, {"u3": "vm3"},
                           in_doubt=False)
    assert dict(rnd.targets) == targets  # a fence of the new lease is none of its business
    assert rnd.act == ("u2",) and not rnd.all_gone and not rnd.over
    done = self_fence_round(targets, {"u1": Fate.GONE, "u2": Fate.GONE}, {}, in_doubt=False)
    assert done.all_gone and done.over and done.act == ()


# --------------------------------------------------------------------------- fault points


def test_fault_points_parse_and_refuse_what_they_do_not_know() -> None:
    assert Faults.parse(()) == Faults() and not Faults().any
    faults = Faults.parse(["self-fence-destroy-fails=3", "delay-before-create=2.5",
                           "self-fence-slow-destroy=0.25", "delay-before-remove=4"])
    assert faults == Faults(3, 2.5, 0.25, 4.0) and faults.any
    assert not Faults.parse([]).any
    for bad in ("destroy=1", "delay-before-create=-1", "self-fence-destroy-fails=x"):
        with pytest.raises(ConfigError, match="fault_points"):
            Faults.parse([bad])


# --------------------------------------------------------------------------- the shell


class FakeGuest:
    """A domain whose libvirt destroy takes ``destroy_s`` (a stopped QEMU ignoring SIGTERM)
    unless its process was SIGKILLed first; ``fail`` destroys fail first."""

    def __init__(self, uuid: str, destroy_s: float = 0.0, fail: int = 0) -> None:
        self.uuid, self.destroy_s, self.fail = uuid, destroy_s, fail
        self.active = True
        self.killed = threading.Event()
        self.destroys = 0

    def isActive(self) -> bool:
        return self.active

    def destroy(self) -> None:
        self.destroys += 1
        if self.fail:
            self.fail -= 1
            raise libvirt.libvirtError("cannot destroy: timed out")
        self.killed.wait(self.destroy_s)
        self.active = False


class FakeHost:
    """The fencer's HA fences and libvirt's domains of one host."""

    def __init__(self, guests: list[FakeGuest]) -> None:
        self.guests = {g.uuid: g for g in guests}
        self.ha = {g.uuid: f"vm-{g.uuid}" for g in guests}
        self.forgotten = 0
        self.calls: list[str] = []  # what libvirt was asked

    def ha_names(self) -> dict[str, str]:
        return dict(self.ha)

    def forget_ha(self, guests: Iterable[str] | None = None) -> None:
        self.forgotten += 1
        self.ha = {u: n for u, n in self.ha.items() if guests is not None and u not in guests}

    def domain(self, uuid: str) -> FakeGuest | None:
        self.calls.append(f"domain {uuid}")
        return self.guests.get(uuid)

    def active(self) -> set[str]:
        self.calls.append("active")
        return {u for u, g in self.guests.items() if g.active}

    def pid_of(self, name: str) -> int | None:
        guest = self.guests[name.removeprefix("vm-")]
        return 1000 + list(self.guests).index(guest.uuid) if guest.active else None

    def kill(self, pid: int, _sig: int) -> None:
        list(self.guests.values())[pid - 1000].killed.set()


def test_every_guest_is_killed_at_once_sigkill_first() -> None:
    """Eight guests whose destroy would take 10 s each (80 s one after the other): with
    their processes SIGKILLed first, all are gone in well under a second."""
    host = FakeHost([FakeGuest(f"u{i}", destroy_s=10.0) for i in range(8)])
    fence = SelfFence("h1", host, host, pid_of=host.pid_of, kill=host.kill)  # type: ignore[arg-type]
    began = time.monotonic()
    wait_until(lambda: fence.step(True), 5, what="every guest confirmed gone")
    assert time.monotonic() - began < 2.0
    assert host.forgotten == 1 and all(g.killed.is_set() for g in host.guests.values())


def test_without_a_pid_the_destroys_run_in_parallel() -> None:
    host = FakeHost([FakeGuest(f"u{i}", destroy_s=0.5) for i in range(8)])
    fence = SelfFence("h1", host, host)  # type: ignore[arg-type]
    began = time.monotonic()
    wait_until(lambda: fence.step(True), 5, what="every guest confirmed gone")
    assert time.monotonic() - began < 0.5 * 8 / 2, "not one destroy after the other"


def test_a_failing_destroy_is_retried_and_the_fences_kept_until_it_is_gone() -> None:
    stubborn = FakeGuest("u1", fail=2)
    host = FakeHost([stubborn, FakeGuest("u2")])
    fence = SelfFence("h1", host, host, threaded=False)  # type: ignore[arg-type]
    assert not fence.step(True) and host.forgotten == 0  # u2 gone, u1 failed once
    assert not host.guests["u2"].active and stubborn.active
    assert not fence.step(True) and host.forgotten == 0
    assert fence.step(True) and host.forgotten == 1 and not stubborn.active
    assert stubborn.destroys == 3


def test_the_fault_point_fails_the_first_destroys() -> None:
    host = FakeHost([FakeGuest("u1")])
    fence = SelfFence("h1", host, host, destroy_fails=2, threaded=False)  # type: ignore[arg-type]
    assert [fence.step(True) for _ in range(3)] == [False, False, True]


def test_the_slow_destroy_fault_point_slows_every_destroy_but_they_run_at_once() -> None:
    host = FakeHost([FakeGuest(f"u{i}") for i in range(6)])
    fence = SelfFence("h1", host, host, slow_destroy=0.3)  # type: ignore[arg-type]
    began = time.monotonic()
    wait_until(lambda: fence.step(True), 5, what="every guest confirmed gone")
    took = time.monotonic() - began
    assert 0.3 <= took < 0.3 * 6 / 2, f"{took:.2f} s: not one destroy after the other"


def test_a_guest_brought_up_again_while_in_doubt_is_killed_again() -> None:
    guest = FakeGuest("u1")
    host = FakeHost([guest])
    fence = SelfFence("h1", host, host, threaded=False)  # type: ignore[arg-type]
    assert fence.step(True) and not guest.active and fence.covers("u1")
    guest.active = True  # a start in flight at the deadline comes up now
    assert fence.step(True) and not guest.active and guest.destroys == 2
    assert fence.step(False) and not fence.covers("u1")  # a new lease: it is over
    guest.active = True  # a start under the new lease is none of its business
    assert fence.step(False) and guest.active


def test_a_new_leases_ha_fences_are_not_forgotten_with_the_old_guests() -> None:
    stubborn = FakeGuest("u1", fail=1)
    host = FakeHost([stubborn])
    fence = SelfFence("h1", host, host, threaded=False)  # type: ignore[arg-type]
    assert not fence.step(True)  # its destroy failed: the fences are kept
    host.ha["u9"] = "vm-u9"  # a new lease is healthy; an HA guest started under it
    assert fence.step(False) and not stubborn.active
    assert host.ha == {"u9": "vm-u9"}
    assert fence.step(False) and not fence.covers("u1")  # over
    assert host.ha == {"u9": "vm-u9"}


def test_confirmed_guests_cost_one_listing_per_tick_while_in_doubt() -> None:
    host = FakeHost([FakeGuest(f"u{i}") for i in range(8)])
    fence = SelfFence("h1", host, host, threaded=False)  # type: ignore[arg-type]
    assert fence.step(True)
    host.calls.clear()
    assert fence.step(True) and fence.step(True)
    assert host.calls == ["active", "active"], "no call per guest for the ones gone"


def test_a_create_that_lands_after_the_guest_was_confirmed_gone_is_pursued_at_once() -> None:
    """A start in flight at the deadline: the self-fence found the guest not running
    (confirmed gone, its fence forgotten), then libvirt's ``create()`` returns. Told so
    (``came_up``, by ``HostLease.creating``), the self-fence counts it as not gone at
    once, without waiting for a later listing, and kills it again."""
    guest = FakeGuest("u1", fail=1)
    guest.active = False
    host = FakeHost([guest])
    fence = SelfFence("h1", host, host, threaded=False)  # type: ignore[arg-type]
    assert fence.step(True) and not fence.pending and host.forgotten == 1
    guest.active = True  # the create lands
    fence.came_up("u1")
    assert fence.pending
    assert not fence.step(True) and guest.active  # its destroy failed: still pursued
    assert fence.step(True) and not guest.active and host.forgotten == 2
    fence.came_up("u9")  # not one of its targets: none of its business
    assert not fence.pending


def test_a_finished_self_fence_lets_its_guests_go_once_a_new_lease_is_healthy() -> None:
    """The guard's self-fence of a lease in doubt covers its guests (no judgement may take
    their fences) only until a new lease is healthy: then the agent judges them again
    (an intruder copy started there later must be judged one). The guard used to stop
    calling the finished self-fence, which went on covering them until the next one."""
    now = [0.0]
    clock = Clock(wall=lambda: now[0], monotonic=lambda: now[0])
    guest = FakeGuest("u1")
    host = FakeHost([guest])
    fence = SelfFence("h1", host, host, threaded=False, clock=clock)  # type: ignore[arg-type]
    lease = HostLease(MemStore(lambda: now[0]), 3, "h1", fence.step, clock=clock)
    lease.grant()
    now[0] = 2.5  # past the deadline (TTL 3, margin 1): no keepalive answered
    lease.guard_step()
    assert not guest.active and fence.covers("u1") and not fence.pending
    lease.grant()  # the agent registers again under a new lease
    now[0] = 2.6
    lease.guard_step()
    assert not fence.covers("u1"), "the finished self-fence still covers u1"
