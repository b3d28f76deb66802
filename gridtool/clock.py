"""Where shells read the time: one injectable pair of clocks (the simulator gives its own)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    """``wall``: epoch seconds (records, intents); ``monotonic``: intervals, deadlines."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


#: The machine's clocks.
SYSTEM = Clock()
