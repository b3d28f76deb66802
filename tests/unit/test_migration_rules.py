"""Live migration's fencing decisions (gridtool.fencing.migration) on plain data: the
source's decision after a failed migration, the destination's about an arriving copy,
and where the fences are. The table rows name the cases; the invariants are checked over
every combination of inputs."""

from __future__ import annotations

import itertools

import pytest

from gridtool.fencing.migration import (
    ArrivalAct,
    Copy,
    DestAct,
    FenceAct,
    Fences,
    Handover,
    SourceAct,
    Where,
    after_error,
    fences_at,
    judge_arrival,
    pause_source_first,
)
from gridtool.fencing.rules import (
    EXPECT_MAX_S,
    EXPECT_S,
    Fence,
    FenceKind,
    GuestRef,
    IntruderPolicy,
    Observation,
    Observed,
    Unreadable,
    expect_window,
)

GUEST = GuestRef("u1", "g1", FenceKind.PINNED, ("vol-a", "vol-b"))


def held(holder: str, guest: str = "u1", volumes: tuple[str, ...] = ("vol-a", "vol-b"),
         rev: int = 7) -> dict[str, Observation]:
    return {v: Observed(Fence(v, holder, guest, "g1", FenceKind.PINNED, 1.0), rev)
            for v in volumes}


# --------------------------------------------------------------------------- fences_at


@pytest.mark.parametrize(("observed", "where"), [
    (held("hv1"), Fences.SOURCE),
    (held("hv2"), Fences.DEST),
    ({"vol-a": None, "vol-b": None}, Fences.NOBODY),
    (held("hv3"), Fences.OTHER),
    ({**held("hv1"), **held("hv2", volumes=("vol-b",))}, Fences.OTHER),  # a mix
    ({**held("hv1"), "vol-b": None}, Fences.OTHER),  # half released
    (held("hv1", guest="u9"), Fences.OTHER),  # another guest's fences
    ({**held("hv2"), "vol-b": Unreadable("vol-b", 3, "bad")}, Fences.OTHER),
    (None, Fences.UNKNOWN),  # etcd could not be read
])
def test_where_the_fences_are(observed: dict[str, Observation] | None,
                              where: Fences) -> None:
    assert fences_at("hv1", "hv2", GUEST, observed) is where


# --------------------------------------------------------------------------- after_error


def test_the_source_pauses_its_copy_first_once_the_switchover_was_reached() -> None:
    assert not pause_source_first(Handover.NOT_TRIED)
    assert all(pause_source_first(h) for h in (Handover.REFUSED, Handover.DONE,
                                               Handover.UNKNOWN))


S, P, D, N = SourceAct.RUN, SourceAct.PAUSE, SourceAct.DESTROY, SourceAct.NONE


@pytest.mark.parametrize(("handover", "source", "dest", "fences", "expected"), [
    # the migration failed before the switchover (destination hook, qemu died, cut)
    (Handover.NOT_TRIED, Copy.RUNNING, Copy.ABSENT, Fences.SOURCE,
     (S, DestAct.NONE, FenceAct.KEEP, Where.SOURCE)),
    (Handover.NOT_TRIED, Copy.RUNNING, Copy.UNREACHABLE, Fences.SOURCE,
     (S, DestAct.NONE, FenceAct.KEEP, Where.SOURCE)),  # the destination host died
    (Handover.NOT_TRIED, Copy.RUNNING, Copy.ABSENT, Fences.UNKNOWN,
     (S, DestAct.NONE, FenceAct.KEEP, Where.SOURCE)),  # never handed over: still ours
    (Handover.NOT_TRIED, Copy.RUNNING, Copy.RUNNING, Fences.SOURCE,
     (S, DestAct.DESTROY, FenceAct.KEEP, Where.SOURCE)),  # a switchover the watcher missed
    # handed over at switchover, then the migration failed
    (Handover.DONE, Copy.PAUSED, Copy.ABSENT, Fences.DEST,
     (S, DestAct.NONE, FenceAct.TAKE_BACK, Where.SOURCE)),  # destination died: take back
    (Handover.DONE, Copy.PAUSED, Copy.INCOMING, Fences.DEST,
     (S, DestAct.DESTROY, FenceAct.TAKE_BACK, Where.SOURCE)),  # never resumed there
    (Handover.DONE, Copy.PAUSED, Copy.RUNNING, Fences.DEST,
     (D, DestAct.NONE, FenceAct.KEEP, Where.DEST)),  # the Finish reply was lost: it lives
    (Handover.DONE, Copy.PAUSED, Copy.PAUSED, Fences.DEST,
     (D, DestAct.NONE, FenceAct.KEEP, Where.DEST)),  # ran there, paused awaiting fences
    (Handover.DONE, Copy.PAUSED, Copy.UNREACHABLE, Fences.DEST,
     (P, DestAct.NONE, FenceAct.KEEP, Where.UNKNOWN)),  # cannot tell: paused, not twice
    (Handover.DONE, Copy.PAUSED, Copy.ABSENT, Fences.NOBODY,
     (S, DestAct.NONE, FenceAct.ACQUIRE, Where.SOURCE)),  # its agent released them
    (Handover.DONE, Copy.PAUSED, Copy.ABSENT, Fences.OTHER,
     (P, DestAct.NONE, FenceAct.KEEP, Where.NOWHERE)),  # a third host has them
    (Handover.DONE, Copy.ABSENT, Copy.RUNNING, Fences.DEST,
     (N, DestAct.NONE, FenceAct.KEEP, Where.DEST)),  # libvirt failed after finishing
    (Handover.DONE, Copy.ABSENT, Copy.INCOMING, Fences.DEST,
     (N, DestAct.NONE, FenceAct.KEEP, Where.DEST)),  # the only copy left is kept
    # the handover failed with an etcd or auth error: it may have committed
    (Handover.UNKNOWN, Copy.PAUSED, Copy.ABSENT, Fences.SOURCE,
     (S, DestAct.NONE, FenceAct.KEEP, Where.SOURCE)),
    (Handover.UNKNOWN, Copy.PAUSED, Copy.RUNNING, Fences.SOURCE,
     (S, DestAct.DESTROY, FenceAct.KEEP, Where.SOURCE)),  # ran there without fences
    (Handover.UNKNOWN, Copy.PAUSED, Copy.RUNNING, Fences.DEST,
     (D, DestAct.NONE, FenceAct.KEEP, Where.DEST)),  # it had committed after all
    (Handover.UNKNOWN, Copy.PAUSED, Copy.RUNNING, Fences.UNKNOWN,
     (P, DestAct.PAUSE, FenceAct.KEEP, Where.UNKNOWN)),  # etcd still away: both paused
    (Handover.UNKNOWN, Copy.PAUSED, Copy.INCOMING, Fences.UNKNOWN,
     (P, DestAct.DESTROY, FenceAct.KEEP, Where.UNKNOWN)),  # never ran there: stale
    (Handover.UNKNOWN, Copy.PAUSED, Copy.UNREACHABLE, Fences.SOURCE,
     (P, DestAct.NONE, FenceAct.KEEP, Where.UNKNOWN)),  # may run there unfenced
    # refused at switchover (the target's record vanished, a fence changed)
    (Handover.REFUSED, Copy.PAUSED, Copy.ABSENT, Fences.SOURCE,
     (S, DestAct.NONE, FenceAct.KEEP, Where.SOURCE)),  # the abort came in time
    (Handover.REFUSED, Copy.PAUSED, Copy.RUNNING, Fences.OTHER,
     (P, DestAct.PAUSE, FenceAct.KEEP, Where.NOWHERE)),
])
def test_after_a_failed_migration(handover: Handover, source: Copy, dest: Copy,
                                  fences: Fences,
                                  expected: tuple[SourceAct, DestAct, FenceAct, Where]) -> None:
    res = after_error(handover, source, dest, fences, ("hv1", "hv2"))
    assert (res.source, res.dest, res.fences, res.where) == expected, res.reason
    assert res.reason


SOURCES = (Copy.RUNNING, Copy.PAUSED, Copy.ABSENT)
DESTS = (Copy.ABSENT, Copy.INCOMING, Copy.PAUSED, Copy.RUNNING, Copy.UNREACHABLE)
EVERY_CASE = list(itertools.product(Handover, SOURCES, DESTS, Fences))


@pytest.mark.parametrize(("handover", "source", "dest", "fences"), EVERY_CASE)
def test_never_two_copies_and_never_one_without_its_fences(
        handover: Handover, source: Copy, dest: Copy, fences: Fences) -> None:
    res = after_error(handover, source, dest, fences)
    switched = pause_source_first(handover)
    dest_runs = dest in (Copy.RUNNING, Copy.PAUSED) and res.dest is DestAct.NONE
    if res.source is SourceAct.RUN:
        # the source runs only with its fences: kept, taken back or taken afresh ...
        assert (fences, res.fences) in {(Fences.SOURCE, FenceAct.KEEP),
                                        (Fences.NOBODY, FenceAct.ACQUIRE),
                                        (Fences.DEST, FenceAct.TAKE_BACK)} or (
            fences is Fences.UNKNOWN and not switched)
        # ... and only once the destination's copy is gone or cannot have run
        assert (not dest_runs and dest is not Copy.UNREACHABLE) or not switched
        assert res.dest is DestAct.DESTROY or dest in (Copy.ABSENT, Copy.UNREACHABLE)
    if res.where is Where.DEST:
        assert fences is Fences.DEST and res.source is not SourceAct.RUN
        assert res.dest is DestAct.NONE
    if dest in (Copy.RUNNING, Copy.PAUSED) and fences is Fences.DEST:
        assert res.dest is DestAct.NONE, "a copy that ran with its fences is the live one"
    if fences not in (Fences.DEST,) and dest is Copy.RUNNING:
        assert res.dest is not DestAct.NONE, "a destination copy without fences is stopped"
    if source is Copy.ABSENT:
        assert res.dest is not DestAct.DESTROY, "the only copy left is never destroyed"
        assert res.source is SourceAct.NONE
    if switched and (dest is Copy.UNREACHABLE or fences in (Fences.UNKNOWN, Fences.OTHER)):
        assert res.source is not SourceAct.RUN, "what cannot be checked stays paused"
    assert res.where is not Where.SOURCE or res.source is SourceAct.RUN


# --------------------------------------------------------------------------- judge_arrival


def arrival(observed: dict[str, Observation], copy: Copy, paused_by_us: bool = False,
            may_be_gone: bool = True,
            policy: IntruderPolicy = IntruderPolicy.PAUSE) -> tuple[ArrivalAct, bool]:
    step = judge_arrival("hv2", "hv1", GUEST, observed, copy, paused_by_us=paused_by_us,
                         may_be_gone=may_be_gone, policy=policy)
    assert step.reason
    return step.act, step.violation


@pytest.mark.parametrize(("observed", "copy", "kwargs", "expected"), [
    # paused for the incoming migration: legitimately busy, wherever the fences are
    (held("hv1"), Copy.INCOMING, {}, (ArrivalAct.WAIT, False)),
    (held("hv3"), Copy.INCOMING, {}, (ArrivalAct.WAIT, False)),
    # the fences arrived (handed over at switchover): the arrival is over
    (held("hv2"), Copy.INCOMING, {}, (ArrivalAct.DONE, False)),
    (held("hv2"), Copy.RUNNING, {}, (ArrivalAct.DONE, False)),
    (held("hv2"), Copy.ABSENT, {"may_be_gone": False}, (ArrivalAct.DONE, False)),
    # resumed by libvirt before the handover: paused at once, resumed when they come
    (held("hv1"), Copy.RUNNING, {}, (ArrivalAct.PAUSE, False)),
    (held("hv1"), Copy.RUNNING, {"policy": IntruderPolicy.DESTROY},
     (ArrivalAct.PAUSE, False)),  # the handover may still come: never destroyed for it
    (held("hv1"), Copy.PAUSED, {"paused_by_us": True}, (ArrivalAct.WAIT, False)),
    (held("hv2"), Copy.PAUSED, {"paused_by_us": True}, (ArrivalAct.RESUME, False)),
    (held("hv2"), Copy.PAUSED, {}, (ArrivalAct.DONE, False)),  # paused by someone else
    # resumed with the fences neither here nor at the source: an intruder
    ({"vol-a": None, "vol-b": None}, Copy.RUNNING, {}, (ArrivalAct.PAUSE, True)),
    (held("hv3"), Copy.RUNNING, {"policy": IntruderPolicy.DESTROY},
     (ArrivalAct.DESTROY, True)),
    # released fences are never taken as a handover: the source may have run since
    ({"vol-a": None, "vol-b": None}, Copy.PAUSED, {"paused_by_us": True},
     (ArrivalAct.WAIT, False)),
    # gone: over once it was seen (or the expectation expired), else not here yet
    (held("hv1"), Copy.ABSENT, {}, (ArrivalAct.DONE, False)),
    (held("hv1"), Copy.ABSENT, {"may_be_gone": False}, (ArrivalAct.WAIT, False)),
])
def test_an_arriving_copy(observed: dict[str, Observation], copy: Copy, kwargs: dict,
                          expected: tuple[ArrivalAct, bool]) -> None:
    assert arrival(observed, copy, **kwargs) == expected


@pytest.mark.parametrize(("observed", "copy", "paused_by_us", "policy"), list(itertools.product(
    (held("hv1"), held("hv2"), held("hv3"), {"vol-a": None, "vol-b": None},
     {**held("hv2"), "vol-b": None}),
    (Copy.ABSENT, Copy.INCOMING, Copy.PAUSED, Copy.RUNNING), (False, True), IntruderPolicy)))
def test_an_arriving_copy_never_runs_without_its_fences(
        observed: dict[str, Observation], copy: Copy, paused_by_us: bool,
        policy: IntruderPolicy) -> None:
    act, _ = arrival(observed, copy, paused_by_us, policy=policy)
    mine = fences_at("hv1", "hv2", GUEST, observed) is Fences.DEST
    if act in (ArrivalAct.WAIT, ArrivalAct.DONE):
        assert copy is not Copy.RUNNING or mine, "a running copy is left only with them"
    if act is ArrivalAct.RESUME:
        assert mine and paused_by_us


@pytest.mark.parametrize(("params", "window"), [
    ({}, EXPECT_S),  # an older CLI's receive intent
    ({"expect_s": 720.0}, 720.0),  # as long as the CLI waits for the source's migrate
    ({"expect_s": 5}, EXPECT_S),  # never shorter than the old minute
    ({"expect_s": 1e9}, EXPECT_MAX_S),
    ({"expect_s": "600"}, EXPECT_S), ({"expect_s": True}, EXPECT_S),
    ({"expect_s": float("nan")}, EXPECT_S),
])
def test_a_receive_intents_expectation_lasts_what_it_asks_within_bounds(
        params: dict[str, object], window: float) -> None:
    assert expect_window(params) == window
