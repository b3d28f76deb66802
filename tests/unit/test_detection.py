"""Faster detection (issue 13 item 6): a live host whose heartbeat is silent is suspected
only where a fence makes acting safe; the pure rules of gridtool.fencing.recovery and
gridtool.ha.rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridtool.fencing.recovery import (
    LEASE_EXPIRED,
    POWER_FAILED,
    POWER_OFF,
    PREEMPTED,
    SUSPECTED,
    UNSUPPORTED,
    FencePolicy,
    HostFence,
    Method,
    note_lost,
    suspect,
)
from gridtool.fencing.rules import Fence, FenceKind, Observed
from gridtool.ha.rules import (
    Blocked,
    FenceHost,
    ForgetFence,
    GuestKind,
    GuestView,
    NoteGone,
    Restart,
    RevokeLease,
    Snapshot,
    decide,
)
from gridtool.placement.rules import HostView

POLICY = FencePolicy.for_ttl(10, suspect_after=3.0)
HOSTS = (HostView("h1", 8192, 8192, 8), HostView("h2", 8192, 4096, 8),
         HostView("h9", 8192, 4096, 8))
REG = 7  # h9's registration (machines/h9's mod revision)


def guest(name: str = "a", host: str = "h9", kind: GuestKind = GuestKind.HA,
          volumes: tuple[str, ...] = ("lun1",)) -> GuestView:
    return GuestView(f"u-{name}", name, host, "running", 1024, kind, volumes)


def held(g: GuestView, holder: str = "h9") -> dict:
    kind = FenceKind.PINNED if g.kind is GuestKind.PINNED else FenceKind.HA
    return {v: Observed(Fence(v, holder, g.uuid, g.name, kind, 0), 3) for v in g.volumes}


def snap(*guests: GuestView, silent: float | None = 5.0, now: float = 1000.0,
         hosts: tuple[HostView, ...] = HOSTS, **kw: object) -> Snapshot:
    fences: dict = {}
    for g in guests:
        fences.update(held(g))
    kw.setdefault("fences", fences)
    kw.setdefault("registrations", {"h9": REG})
    return Snapshot(now=now, hosts=hosts, guests=guests,  # type: ignore[arg-type]
                    silent={} if silent is None else {"h9": silent}, **kw)


def suspected(**kw: object) -> HostFence:
    """h9's record once suspected at 998 (its lease still alive)."""
    return HostFence("h9", 998.0, REG, suspected_at=998.0, lease_gone=False,
                     **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- suspect


@pytest.mark.parametrize(("silent", "power", "storage", "volumes", "want"), [
    (5.0, True, False, ("lun1",), True),  # power agent
    (5.0, False, True, ("lun1",), True),  # storage fencer for every LUN
    (5.0, False, True, (), False),  # no LUN: storage cannot fence it
    (5.0, False, False, ("lun1",), False),  # no fence at all: wait for the lease
    (2.9, True, True, ("lun1",), False),  # not silent long enough
    (None, True, True, ("lun1",), False),  # never heard: an old agent, no heartbeat
])
def test_suspect_only_when_silent_long_enough_and_a_fence_makes_it_safe(
        silent: float | None, power: bool, storage: bool, volumes: tuple[str, ...],
        want: bool) -> None:
    assert suspect(silent, POLICY, volumes, None, power, storage) is want


def test_suspicion_is_off_without_suspect_after_and_never_on_a_known_unsupported_lun() -> None:
    assert not suspect(100.0, FencePolicy.for_ttl(10), ("lun1",), None, True, True)
    unsupported = suspected(storage={"lun1": UNSUPPORTED})
    assert not suspect(5.0, POLICY, ("lun1",), unsupported, False, True)
    with pytest.raises(ValueError, match="positive"):
        FencePolicy.for_ttl(10, suspect_after=0)


def test_note_lost_keeps_a_suspicion_and_counts_the_timed_grace_from_the_lease() -> None:
    first = note_lost(None, "h9", 998.0, REG, lease_gone=False)
    assert (first.detection, first.lease_gone, first.suspected_at) == (SUSPECTED, False, 998.0)
    assert note_lost(first, "h9", 999.0, REG, lease_gone=False) == first
    gone = note_lost(replace(first, power=POWER_OFF), "h9", 1005.0, REG, lease_gone=True)
    assert (gone.gone_since, gone.lease_gone, gone.power, gone.detection) == (
        1005.0, True, POWER_OFF, SUSPECTED)
    plain = note_lost(None, "h9", 1005.0, REG, lease_gone=True)
    assert (plain.detection, plain.suspected_at) == (LEASE_EXPIRED, 0.0)
    assert note_lost(first, "h9", 1005.0, REG + 1, lease_gone=True) == plain.__class__(
        "h9", 1005.0, REG + 1)


# --------------------------------------------------------------------------- decide


def test_suspected_with_a_power_agent_is_noted_and_fenced() -> None:
    actions = decide(snap(guest("a"), guest("b"), power_agents={"h9"}), fencing=POLICY)
    assert actions == (
        NoteGone("u-a", "a", "h9", 1000.0, REG, lease_gone=False),
        Blocked("u-a", "a", "fencing h9 by power"),
        FenceHost("u-a", "a", "h9", Method.POWER),
        Blocked("u-b", "b", "fencing h9 by power"),
    )


def test_suspected_with_a_storage_fencer_preempts_the_luns() -> None:
    (_, _, fence) = decide(snap(guest(volumes=("lun1", "lun2")), storage_fencer=True),
                           fencing=POLICY)
    assert fence == FenceHost("u-a", "a", "h9", Method.STORAGE, ("lun1", "lun2"))


def test_suspected_without_a_fence_waits_for_the_lease() -> None:
    """Nothing against the host, not even a note; the guest keeps running there."""
    assert decide(snap(guest()), fencing=POLICY) == ()
    assert decide(snap(guest(), silent=600.0), fencing=POLICY) == ()


def test_heartbeat_back_before_the_fence_means_nothing_and_the_suspicion_is_forgotten() -> None:
    assert decide(snap(guest(), silent=1.0, power_agents={"h9"}), fencing=POLICY) == ()
    noted = {"h9": suspected()}
    assert decide(snap(guest(), silent=1.0, power_agents={"h9"}, host_fences=noted),
                  fencing=POLICY) == (ForgetFence("h9"),)


def test_a_fence_in_flight_is_waited_for_even_when_the_heartbeat_comes_back() -> None:
    noted = {"h9": suspected()}
    running = {"h9": Method.POWER}
    for silent in (1.0, 5.0):
        actions = decide(snap(guest(), silent=silent, power_agents={"h9"}, host_fences=noted,
                              fencing_now=running), fencing=POLICY)
        if silent < 3.0:
            assert actions == ()  # heard from: no new action, and the record is kept
        else:
            assert actions == (Blocked("u-a", "a", "fencing h9 by power"),)


def test_a_suspect_heard_from_after_its_fence_succeeded_is_forgotten() -> None:
    """It wrote after its 'power off': the fence proved nothing, and that record must not
    let a later loss of this registration skip its fence."""
    fenced = {"h9": suspected(power=POWER_OFF, power_at=999.0, power_message="off")}
    assert decide(snap(guest(), silent=0.5, power_agents={"h9"}, host_fences=fenced),
                  fencing=POLICY) == (ForgetFence("h9"),)


def test_a_failed_fence_means_no_recovery_and_no_revoke() -> None:
    failed = {"h9": suspected(power=POWER_FAILED, power_at=999.0, power_message="exit 1")}
    assert decide(snap(guest(), power_agents={"h9"}, host_fences=failed), fencing=POLICY) == (
        Blocked("u-a", "a", "power fence of h9 failed: exit 1"),)


def test_a_refused_preempt_without_power_never_falls_to_the_timed_path() -> None:
    """The lease is alive: the timed path's grace has not even begun."""
    unsupported = {"h9": suspected(storage={"lun1": UNSUPPORTED})}
    assert decide(snap(guest(), storage_fencer=True, host_fences=unsupported, now=5000.0),
                  fencing=POLICY) == ()  # no longer suspected: nothing before the lease


def test_a_fenced_suspect_has_its_lease_revoked_once_then_its_guests_restart() -> None:
    fenced = {"h9": suspected(power=POWER_OFF, power_at=999.0, power_message="off")}
    actions = decide(snap(guest("a"), guest("b"), power_agents={"h9"}, host_fences=fenced),
                     fencing=POLICY)
    why = "host h9 suspected and fenced; revoking its lease"
    assert actions == (RevokeLease("u-a", "a", "h9", REG), Blocked("u-a", "a", why),
                       Blocked("u-b", "b", why))
    # the lease revoked: host record and fences gone; the round restarts, no fence again
    after = decide(snap(guest("a"), hosts=HOSTS[:2], fences={}, power_agents={"h9"},
                        host_fences=fenced, now=1001.0), fencing=POLICY)
    assert after == (
        NoteGone("u-a", "a", "h9", 1001.0, REG),
        Restart("u-a", "a", "h1", "h9", True, "host h9 gone (suspected: heartbeat silent)",
                "power: off"))


def test_a_silent_host_takes_no_restarted_guest() -> None:
    """h1 is silent (no fence there: no action against it), so the guest of lost h5 goes
    to h2 although h1 has more free memory."""
    lost = guest("c", host="h5")
    s = Snapshot(now=1000.0, hosts=HOSTS, guests=(lost,), silent={"h1": 10.0},
                 host_fences={"h5": HostFence("h5", 990.0, power=POWER_OFF,
                                              power_message="off")})
    (restart,) = decide(s, fencing=POLICY)
    assert isinstance(restart, Restart) and restart.on_host == "h2"


def test_a_pinned_guest_on_a_suspected_host_is_left_alone() -> None:
    pinned = guest("p", kind=GuestKind.PINNED)
    assert decide(snap(pinned, power_agents={"h9"}), fencing=POLICY) == ()


def test_without_suspect_after_nothing_changes_before_the_lease() -> None:
    assert decide(snap(guest(), silent=600.0, power_agents={"h9"}),
                  fencing=FencePolicy.for_ttl(10)) == ()


def test_storage_preempted_suspect_is_revoked() -> None:
    fenced = {"h9": suspected(storage={"lun1": PREEMPTED})}
    actions = decide(snap(guest(), storage_fencer=True, host_fences=fenced), fencing=POLICY)
    assert isinstance(actions[0], RevokeLease)
