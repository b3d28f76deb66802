"""When the HA manager's next round comes early, and when a full round audits the fleet
index (pure).

A lost host's lease ends in one revision: its host record and its HA fences are
deleted together. That is what must bring a round forward (its guests' recovery starts
from it), and so is a fence another host let go (a guest waiting for it). A put is not:
in a failover of 50 guests the agents take 50 fences and rewrite records within a second,
and each put used to wake a full round at once, back to back, each with a slice of the
index audit (about 0.1 s of CPU at 100,000 guests): the manager's process was busy for
the whole burst. A put waits for the next period (at most ``period`` seconds).

The audit (:meth:`gridtool.placement.index.FleetIndex.audit`) is a background check of
the index, never needed for a decision: it runs after an idle full round, and while
rounds keep acting, at most once per ``AUDIT_EVERY_S``.
"""

from __future__ import annotations

from gridtool.registry.keys import Keys

#: While rounds are busy (acting, something in flight), at most one audit slice per this.
AUDIT_EVERY_S = 5.0


def wakes_round(keys: Keys, kind: str, key: str) -> bool:
    """Whether a watch event of ``kind`` (put, delete, reset) at ``key`` brings the next
    round forward: a host record or a fence deleted, or the watch's reset (the mirror
    lists again)."""
    return kind == "reset" or (kind == "delete" and key.startswith((keys.hosts, keys.fences)))


def audit_due(idle: bool, last: float | None, now: float,
              every: float = AUDIT_EVERY_S) -> bool:
    """Whether a full round that was ``idle`` (or not) audits, the last audit having run
    at ``last`` (None: never), ``now`` on the same monotonic clock."""
    return idle or last is None or now - last >= every
