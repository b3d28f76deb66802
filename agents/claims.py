"""Who is acting on a guest right now: the agent's busy/judging protocol, in one object.

A fencing judgement (``Agent.judge``) claims a guest exclusively and is skipped while
anyone works on it; work (an intent, a fence-hook decision, an incoming migration)
waits for a judgement in progress to end, then marks the guest busy for as long as it
runs. Busy marks count: two workers on one guest each end only their own. So a
judgement made on a stale view never releases a fence an intent has just used to start
the guest, and a hook decision never interleaves with a judgement of the same guest.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator


class GuestClaims:
    """Busy marks and judging claims per guest UUID (thread-safe)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy: Counter[str] = Counter()
        self._judging: set[str] = set()

    def busy(self, uuid: str) -> bool:
        """True while some work holds ``uuid``."""
        with self._changed:
            return self._busy[uuid] > 0

    @contextlib.contextmanager
    def judging(self, uuid: str) -> Iterator[bool]:
        """Claim ``uuid`` for a judgement: yields False (skip it) while it is busy or
        judged already; work waits until the claim ends."""
        with self._changed:
            claimed = self._busy[uuid] == 0 and uuid not in self._judging
            if claimed:
                self._judging.add(uuid)
        try:
            yield claimed
        finally:
            if claimed:
                with self._changed:
                    self._judging.discard(uuid)
                    self._changed.notify_all()

    def enter(self, uuid: str, wait: float) -> bool:
        """Mark ``uuid`` busy once a judgement in progress ends (at most ``wait`` seconds;
        marked anyway after that). False when the judgement did not end in time."""
        with self._changed:
            ended = self._changed.wait_for(lambda: uuid not in self._judging, wait)
            self._busy[uuid] += 1
        return ended

    def leave(self, uuid: str) -> None:
        """End one busy mark of ``uuid`` (see :meth:`enter`)."""
        with self._changed:
            self._busy[uuid] -= 1
            if self._busy[uuid] <= 0:
                del self._busy[uuid]

    @contextlib.contextmanager
    def working(self, uuid: str, wait: float) -> Iterator[bool]:
        """:meth:`enter` for the duration of a block; yields whether the judgement in
        progress ended in time."""
        ended = self.enter(uuid, wait)
        try:
            yield ended
        finally:
            self.leave(uuid)
