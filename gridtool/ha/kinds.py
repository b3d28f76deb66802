"""How the manager treats a guest (pure, and small: ``guest show`` and ``host show``
import it without the HA rules, placement and fencing)."""

from __future__ import annotations

from enum import StrEnum


class GuestKind(StrEnum):
    """How the manager treats a guest."""

    HA = "ha"  # restarted elsewhere when its host dies (fences die with the host's lease)
    PINNED = "pinned"  # left alone until an operator confirms its host dead
    NONE = "none"  # not managed


def guest_kind(fenced: bool, ha: bool) -> GuestKind:
    """A fenced guest is HA when its settings say so, else pinned; an unfenced one is
    not managed (``ha``: the guest's ``settings/<uuid>`` ``ha``, False without settings)."""
    if not fenced:
        return GuestKind.NONE
    return GuestKind.HA if ha else GuestKind.PINNED
