"""Recovery only after a fence: the pure verdict (gridtool.fencing.recovery.judge) on every
branch, and how decide() turns it into actions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridtool.fencing.recovery import (
    POWER_FAILED,
    POWER_OFF,
    PREEMPTED,
    REFUSED,
    UNSUPPORTED,
    Fenced,
    FencePolicy,
    HostFence,
    Method,
    RunFence,
    Wait,
    due_times,
    judge,
)
from gridtool.ha.rules import (
    Blocked,
    FenceHost,
    ForgetFence,
    GuestKind,
    GuestView,
    NoteGone,
    ReleaseFences,
    Restart,
    Snapshot,
    decide,
)
from gridtool.placement.rules import HostView

POLICY = FencePolicy(grace=12.0, retry=30.0)
GONE = HostFence("h9", gone_since=100.0)
VOLS = ("lun1", "lun2")


def verdict(record: HostFence = GONE, now: float = 101.0, power: bool = False,
            storage: bool = False, running: Method | None = None,
            volumes: tuple[str, ...] = VOLS) -> object:
    return judge("h9", volumes, record, now, POLICY, power, storage, running)


# --------------------------------------------------------------------------- judge


def test_storage_preempted_on_every_lun_is_a_fence() -> None:
    done = replace(GONE, storage={"lun1": PREEMPTED, "lun2": PREEMPTED})
    assert verdict(done, storage=True) == Fenced(
        Method.STORAGE, "storage: h9's key preempted on lun1, lun2")


def test_storage_preempted_on_some_luns_preempts_the_rest() -> None:
    half = replace(GONE, storage={"lun1": PREEMPTED})
    assert verdict(half, storage=True) == RunFence(Method.STORAGE, ("lun2",))


def test_with_a_storage_fencer_the_luns_are_preempted_first() -> None:
    assert verdict(storage=True, power=True) == RunFence(Method.STORAGE, VOLS)


def test_a_refused_preempt_means_no_recovery_until_the_retry_even_with_power() -> None:
    refused = replace(GONE, storage={"lun1": REFUSED, "lun2": PREEMPTED}, storage_at=101.0,
                      storage_message="lun1: RESERVATION CONFLICT")
    wait = verdict(refused, now=110.0, storage=True, power=True)
    assert isinstance(wait, Wait) and wait.failed
    assert "storage fence of h9 refused on lun1" in wait.reason
    assert verdict(refused, now=131.0, storage=True, power=True) == RunFence(
        Method.STORAGE, ("lun1",))


def test_a_lun_without_pr_is_never_storage_fenced_the_next_way_is_used() -> None:
    unsupported = replace(GONE, storage={"lun1": PREEMPTED, "lun2": UNSUPPORTED})
    assert verdict(unsupported, storage=True, power=True) == RunFence(Method.POWER)
    assert verdict(unsupported, storage=True, now=101.0) == Wait(
        "timed fence: recovery 12 s after h9's lease went")


def test_without_a_storage_fencer_storage_results_never_count_as_missing() -> None:
    assert verdict(power=True) == RunFence(Method.POWER)


def test_power_off_confirmed_is_a_fence() -> None:
    off = replace(GONE, power=POWER_OFF, power_at=102.0, power_message="off confirmed")
    assert verdict(off, power=True) == Fenced(Method.POWER, "power: off confirmed")


@pytest.mark.parametrize("message", ["fence agent off failed (exit 1): refused",
                                     "fence agent hung on off: killed after 20.0 s"],
                         ids=["failed", "hung"])
def test_a_failed_or_hung_power_fence_means_no_recovery_until_the_retry(message: str) -> None:
    failed = replace(GONE, power=POWER_FAILED, power_at=102.0, power_message=message)
    for now in (103.0, 131.9):
        wait = verdict(failed, now=now, power=True)
        assert wait == Wait(f"power fence of h9 failed: {message}", failed=True)
    assert verdict(failed, now=132.0, power=True) == RunFence(Method.POWER)
    # never the timed path instead, however long ago the lease went
    assert not isinstance(verdict(failed, now=131.0, power=True), Fenced)


def test_a_fence_in_flight_is_waited_for() -> None:
    assert verdict(power=True, running=Method.POWER) == Wait("fencing h9 by power")


@pytest.mark.parametrize(("now", "fenced"), [(100.0, False), (111.9, False), (112.0, True),
                                              (500.0, True)])
def test_timed_path_recovers_only_grace_after_the_lease_was_seen_gone(now: float,
                                                                      fenced: bool) -> None:
    result = verdict(now=now)
    assert isinstance(result, Fenced) == fenced
    if fenced:
        assert isinstance(result, Fenced) and result.method is Method.TIMED
    else:
        assert result == Wait("timed fence: recovery 12 s after h9's lease went")


def test_a_guest_without_shared_volumes_takes_power_or_the_timed_path() -> None:
    assert verdict(storage=True, power=True, volumes=()) == RunFence(Method.POWER)
    assert isinstance(verdict(storage=True, volumes=(), now=112.0), Fenced)


def test_grace_is_ttl_plus_the_stated_margin() -> None:
    assert FencePolicy.for_ttl(10).grace == 12.0


# --------------------------------------------------------------------------- decide

HOSTS = (HostView("h1", 8192, 8192, 8), HostView("h2", 8192, 4096, 8))


def ha(name: str, host: str | None = "h9", kind: GuestKind = GuestKind.HA,
       volumes: tuple[str, ...] = ("lun1",)) -> GuestView:
    return GuestView(f"u-{name}", name, host, "running", 1024, kind, volumes)


def snap(*guests: GuestView, now: float = 1000.0, **kw: object) -> Snapshot:
    return Snapshot(now=now, hosts=HOSTS, guests=guests, **kw)  # type: ignore[arg-type]


def test_first_sight_of_a_lost_host_notes_it_and_runs_its_fence_once_for_all_guests() -> None:
    actions = decide(snap(ha("a"), ha("b"), power_agents={"h9"}), fencing=POLICY)
    assert actions == (
        NoteGone("u-a", "a", "h9", 1000.0),
        Blocked("u-a", "a", "fencing h9 by power"),
        FenceHost("u-a", "a", "h9", Method.POWER),
        Blocked("u-b", "b", "fencing h9 by power"),
    )


def test_a_new_leader_after_a_recorded_fence_restarts_without_fencing_again() -> None:
    fenced = {"h9": HostFence("h9", 990.0, power=POWER_OFF, power_at=995.0,
                              power_message="off confirmed")}
    actions = decide(snap(ha("a"), power_agents={"h9"}, host_fences=fenced), fencing=POLICY)
    assert actions == (Restart("u-a", "a", "h1", "h9", True, "host h9 gone",
                               "power: off confirmed"),)


def test_a_new_leader_keeps_the_recorded_time_of_the_lease_loss() -> None:
    """The record from the old leader (lease seen gone at 990) counts, not this round's
    first sight: no NoteGone, and the grace ends at 1002."""
    noted = {"h9": HostFence("h9", 990.0)}
    assert decide(snap(ha("a"), host_fences=noted, now=1001.0), fencing=POLICY) == (
        Blocked("u-a", "a", "timed fence: recovery 12 s after h9's lease went"),)
    (restart,) = decide(snap(ha("a"), host_fences=noted, now=1002.0), fencing=POLICY)
    assert restart == Restart("u-a", "a", "h1", "h9", True, "host h9 gone",
                              "timed: h9's lease gone 12 s (grace 12 s)")


def test_a_failed_fence_blocks_and_says_why() -> None:
    failed = {"h9": HostFence("h9", 990.0, power=POWER_FAILED, power_at=999.0,
                              power_message="exit 1")}
    assert decide(snap(ha("a"), power_agents={"h9"}, host_fences=failed),
                  fencing=POLICY) == (
        Blocked("u-a", "a", "power fence of h9 failed: exit 1"),)


def test_a_host_back_alive_has_its_fence_record_forgotten() -> None:
    record = {"h1": HostFence("h1", 990.0, power=POWER_OFF)}
    assert decide(snap(host_fences=record), fencing=POLICY) == (ForgetFence("h1"),)


def test_a_guest_down_on_a_live_host_needs_no_fence() -> None:
    down = replace(ha("a", host="h2"), state="crashed")
    (restart,) = decide(snap(down), fencing=POLICY)
    assert isinstance(restart, Restart) and restart.fence == ""


def test_confirm_dead_release_of_a_pinned_guest_waits_for_a_fence_too() -> None:
    pinned = ha("db", kind=GuestKind.PINNED)
    first = decide(snap(pinned, confirmed_dead={"h9"}, power_agents={"h9"}), fencing=POLICY)
    assert [type(a) for a in first] == [NoteGone, Blocked, FenceHost]
    fenced = {"h9": HostFence("h9", 990.0, power=POWER_OFF, power_message="off")}
    then = decide(snap(pinned, confirmed_dead={"h9"}, host_fences=fenced), fencing=POLICY)
    assert isinstance(then[-1], Restart) and then[-1].fence == "power: off"
    assert all(not isinstance(a, (FenceHost, NoteGone)) for a in then)
    assert not any(isinstance(a, ReleaseFences) for a in first)


def test_a_fence_record_of_an_earlier_life_of_the_host_never_counts() -> None:
    """hv9 was powered off in registration 7, came back (re-registered: 9) and is lost
    again: the old power-off proves nothing now; the loss is noted anew and fenced."""
    old = {"h9": HostFence("h9", 900.0, registration=7, power=POWER_OFF, power_message="off")}
    actions = decide(snap(ha("a"), host_fences=old, registrations={"h9": 9},
                          power_agents={"h9"}), fencing=POLICY)
    assert actions == (NoteGone("u-a", "a", "h9", 1000.0, 9),
                       Blocked("u-a", "a", "fencing h9 by power"),
                       FenceHost("u-a", "a", "h9", Method.POWER))
    same = decide(snap(ha("a"), host_fences=old, registrations={"h9": 7}), fencing=POLICY)
    assert [type(a) for a in same] == [Restart]


def test_due_times_are_when_the_verdict_changes_by_time_alone() -> None:
    policy = FencePolicy(grace=12.0, retry=30.0)
    lost = HostFence("hv1", 100.0)
    assert due_times(lost, policy) == (112.0,)
    for t in (111.9, 112.0):  # the verdict turns at the due time, not before
        assert isinstance(judge("hv1", ("v",), lost, t, policy, False, False),
                          Wait if t < 112.0 else Fenced)
    suspected = HostFence("hv1", 100.0, suspected_at=100.0, lease_gone=False)
    assert due_times(suspected, policy) == ()  # no timed path before its lease goes
    failed = replace(lost, power=POWER_FAILED, power_at=150.0, power_message="no answer")
    assert due_times(failed, policy) == (112.0, 180.0)
    assert isinstance(judge("hv1", ("v",), failed, 179.0, policy, True, False), Wait)
    assert isinstance(judge("hv1", ("v",), failed, 180.0, policy, True, False), RunFence)
