"""Saved memory images, pure: a hibernated guest's image is restored only while this
host still holds every fence of it for it; a released or moved fence makes it stale
(discarded); an unreadable one refuses the restore but keeps the image. A hibernated
guest keeps its fences when judged stopped."""

from __future__ import annotations

from gridtool.fencing.rules import (
    Act,
    Fence,
    FenceKind,
    GuestRef,
    Observed,
    Unreadable,
    judge_stopped,
)
from gridtool.fencing.saved import RESTORE, judge_saved_image

GUEST = GuestRef("u1", "web-1", FenceKind.HA, ("vol-a", "vol-b"))


def held(volume: str, holder: str = "hv1", guest: str = "u1") -> Observed:
    return Observed(Fence(volume, holder, guest, "web-1" if guest == "u1" else "other",
                          FenceKind.HA, 100.0), 7)


def test_restored_only_while_this_host_holds_every_fence() -> None:
    both = {"vol-a": held("vol-a"), "vol-b": held("vol-b")}
    assert judge_saved_image("hv1", GUEST, both) == RESTORE
    unfenced = GuestRef("u2", "plain", FenceKind.HA, ())
    assert judge_saved_image("hv1", unfenced, {}) == RESTORE


def test_a_released_or_moved_fence_makes_the_image_stale() -> None:
    for other, why in ((None, "vol-b was released while it slept"),
                       (held("vol-b", holder="hv2"), "vol-b was taken by hv2"),
                       (held("vol-b", guest="u9"), "vol-b is now other's")):
        verdict = judge_saved_image("hv1", GUEST, {"vol-a": held("vol-a"), "vol-b": other})
        assert not verdict.ok and verdict.discard and why in verdict.reason, verdict
    # not read at all counts as released (fail closed)
    assert judge_saved_image("hv1", GUEST, {"vol-a": held("vol-a")}).discard


def test_an_unreadable_fence_refuses_but_keeps_the_image() -> None:
    verdict = judge_saved_image("hv1", GUEST, {
        "vol-a": held("vol-a"), "vol-b": Unreadable("vol-b", 9, "not JSON")})
    assert (verdict.ok, verdict.discard) == (False, False)
    assert "unreadable" in verdict.reason


def test_a_hibernated_guest_keeps_its_fences_when_judged_stopped() -> None:
    both = {"vol-a": held("vol-a"), "vol-b": held("vol-b")}
    assert judge_stopped("hv1", GUEST, both, clean_stop=True).act is Act.RELEASE
    kept = judge_stopped("hv1", GUEST, both, clean_stop=True, saved=True)
    assert kept.act is Act.NONE and "saved image keeps fence vol-a, vol-b" in kept.report
