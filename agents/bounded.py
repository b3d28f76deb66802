"""The main loop's libvirt calls, each with a deadline, while the main loop keeps turning.

A libvirt call can wait a long time for reasons that are not the agent's: on a Xen dom0
libvirt's libxl driver holds libxl's context while it creates a domain (a minute under
TCG), and every read that needs it (a guest's info, the node's free memory) waits
behind it. Made on the main loop, such a wait stopped its turns: no ``WATCHDOG=1``, and
systemd killed a healthy agent mid-start of a guest. :class:`BoundedCalls` runs each
call on a thread of its own; the calling (main) thread waits for it in short slices and
calls ``tick`` (the watchdog pet) after each, so the loop's turn period stays bounded.
A call with no answer by its deadline raises :class:`LibvirtStalled` (a libvirtError:
the main loop drops the connection and resyncs after reconnecting, as for any libvirt
error) after ``on_stall`` has been told (the host is reported unhealthy). The call
itself cannot be cancelled: its thread is left to finish or hang on its own.

Only the owner thread's calls are bounded; any other thread (the intent worker calling
``judge``) calls straight through, as it always did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import libvirt

T = TypeVar("T")

#: How long the main loop waits on one libvirt call before it takes libvirt for stalled.
#: Above the slowest libxl start seen under TCG on a loaded machine (66 s), so that a
#: slow start is waited out; the turns go on meanwhile.
DEADLINE_S = 180.0
#: The longest the waiting thread goes without calling ``tick``.
SLICE_S = 0.5


class LibvirtStalled(libvirt.libvirtError):
    """A libvirt call gave no answer within its deadline.

    Its message is its own: ``libvirtError.__init__`` would take the thread's last
    libvirt error instead (seen: a stale "client socket is closed" as the stall's reason).
    """

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.err = None


class BoundedCalls:
    """Run the owner thread's calls with a deadline, ticking while they run."""

    def __init__(self, tick: Callable[[], None], on_stall: Callable[[str], None],
                 on_answer: Callable[[], None], deadline: float = DEADLINE_S,
                 slice_s: float = SLICE_S) -> None:
        self.tick, self.on_stall, self.on_answer = tick, on_stall, on_answer
        self.deadline, self.slice = deadline, slice_s
        self.owner: threading.Thread | None = None  # set by the loop that owns the calls

    def __call__(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)``: bounded on the owner thread, direct on any other."""
        if threading.current_thread() is not self.owner:
            return fn(*args)
        done = threading.Event()
        outcome: list[tuple[bool, object]] = []

        def run() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=run, name=f"libvirt {what}", daemon=True).start()
        end = time.monotonic() + self.deadline
        while not done.wait(min(self.slice, max(0.0, end - time.monotonic()))):
            self.tick()
            if time.monotonic() >= end:
                message = f"libvirt not answering: {what}: no answer in {self.deadline:g} s"
                self.on_stall(message)
                raise LibvirtStalled(message)
        ok, value = outcome[0]
        if not ok:
            raise value  # type: ignore[misc]  # the call's own exception
        self.on_answer()
        return value  # type: ignore[return-value]
