"""Saved memory images, pure: may a fenced guest's managed save image be restored?

A hibernated warm worker (``sleep`` with ``hibernate``: libvirt managed save) keeps its
fences while it sleeps. Its image holds memory that matches its disk only while nobody
else could write that disk: while *this* host held every fence of the guest the whole
time. The fences outlive the sleep only as long as the host keeps them (an HA fence
dies with the host's lease; an operator may release any), and only this host, starting
this very guest, ever creates a fence it holds; so a fence that is still here, held by
this host for this guest, was held all along. Anything else (released, taken by another
host, or for another guest) means another host may have run the disk meanwhile: the
image is stale and must be discarded, never restored (restoring stale memory against a
changed disk corrupts it). A fence that cannot be read refuses the restore but keeps
the image (nothing is known yet: an operator repairs the record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gridtool.fencing.rules import GuestRef, Observation, Observed, Unreadable


@dataclass(frozen=True)
class RestoreVerdict:
    """``ok``: restore it; else ``discard`` the image (stale) or keep it, and why."""

    ok: bool
    discard: bool
    reason: str


RESTORE = RestoreVerdict(True, False, "")


def judge_saved_image(host: str, guest: GuestRef,
                      observed: Mapping[str, Observation]) -> RestoreVerdict:
    """May ``host`` restore ``guest``'s saved image, given its fences as read now (every
    volume of ``guest`` read first; a volume not read counts as released)."""
    for volume in guest.volumes:
        obs = observed.get(volume)
        if isinstance(obs, Unreadable):
            return RestoreVerdict(False, False, f"the fence of {volume} is unreadable "
                                  f"({obs.error}): not restored, image kept")
        if obs is None:
            return RestoreVerdict(False, True, f"its fence on {volume} was released while "
                                  "it slept (another host may have written the disk)")
        assert isinstance(obs, Observed)
        if obs.fence.holder != host:
            return RestoreVerdict(False, True, f"its fence on {volume} was taken by "
                                  f"{obs.fence.holder} while it slept")
        if obs.fence.guest != guest.uuid:
            return RestoreVerdict(False, True, f"the fence on {volume} is now "
                                  f"{obs.fence.guest_name}'s")
    return RESTORE
