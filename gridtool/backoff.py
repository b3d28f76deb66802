"""Delays between reconnect attempts: exponential backoff with full jitter.

After an etcd outage fifty agents (and their manager candidates) must not come back in
lockstep: the n-th retry waits a uniformly random time between 0 and
``min(limit, first * 2**(n-1))`` ("full jitter"), which spreads their retries over the
whole window instead of bunching them at fixed points. The schedule is tenacity's
``wait_random_exponential``; the loops keep their own shape (the agent's main loop has
other work between tries and waits on its stop event, not on ``time.sleep``), so they
ask this object for the next delay instead of running under ``tenacity.Retrying``.
"""

from __future__ import annotations

import tenacity


class Backoff:
    """The delays of one client's consecutive failed attempts; :meth:`reset` on success."""

    def __init__(self, first: float = 0.2, limit: float = 5.0) -> None:
        self.first = first
        self.limit = limit
        self._wait = tenacity.wait_random_exponential(multiplier=first, max=limit)
        self._state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})

    @property
    def attempts(self) -> int:
        """Failed attempts since the last reset."""
        return self._state.attempt_number - 1

    def next(self) -> float:
        """The delay before the next attempt (one more failure counted)."""
        delay = float(self._wait(self._state))
        self._state.attempt_number += 1
        return delay

    def reset(self) -> None:
        self._state.attempt_number = 1
