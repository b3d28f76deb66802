"""A fenced guest's managed save image, the shell: restore only what the rule allows.

:func:`gridtool.fencing.saved.judge_saved_image` decides from the guest's fences as read
now; this reads them, and removes a stale image with ``managedSaveRemove`` (the guest
then boots afresh on its next start, or a pool replaces it). Called by the agent before
any start or wake of a guest that has an image, and by its judgement of a stopped guest
(resync, and every change), so a stale image is discarded as soon as the agent sees it.
"""

from __future__ import annotations

import logging

import libvirt

from agents.ports import FenceView
from gridtool.fencing.rules import GuestRef
from gridtool.fencing.saved import RESTORE, RestoreVerdict, judge_saved_image

log = logging.getLogger("agents.savedimage")


def check_saved_image(host: str, fences: FenceView, dom: libvirt.virDomain,
                      ref: GuestRef | None) -> RestoreVerdict:
    """The verdict on ``dom``'s managed save image (restore when it has none or is not
    fenced); a stale one is removed here and logged."""
    if ref is None or not dom.hasManagedSaveImage(0):
        return RESTORE
    verdict = judge_saved_image(host, ref, fences.observe(ref.volumes))
    if verdict.discard:
        dom.managedSaveRemove(0)
        log.error("event=stale_image_discarded host=%s guest=%s uuid=%s reason=%s", host,
                  ref.name, ref.uuid, verdict.reason)
    elif not verdict.ok:
        log.error("event=saved_image_refused host=%s guest=%s uuid=%s reason=%s", host,
                  ref.name, ref.uuid, verdict.reason)
    return verdict
