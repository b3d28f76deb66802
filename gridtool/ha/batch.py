"""Carrying out a round's restarts in few transactions (pure: which, in what order, how
many per transaction).

A failover of one host with 50 HA guests is 50 restarts in one round; written one
transaction each they are 50 round trips in series. :func:`order` keeps every other
action in ``decide``'s order and moves the restarts after all of them (a guest's restart
is always the last of its actions, so whatever must precede it — releasing a dead host's
fences, noting the loss, starting the fence — still does); :func:`pack` cuts the
restarts' writes into transactions within etcd's limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gridtool.ha.rules import Action, Restart


@dataclass(frozen=True)
class TxnLimits:
    """What one etcd transaction may hold: ``ops`` compares and ``ops`` puts
    (``--max-txn-ops``, 128 by default, counts each list), ``size`` bytes of keys and
    values (under ``--max-request-bytes``, 1.5 MiB by default: room for the framing)."""

    ops: int = 128
    size: int = 1 << 20


@dataclass(frozen=True)
class Cost:
    """One item's share of a transaction: its compares, puts, and bytes."""

    compares: int
    puts: int
    size: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.compares + other.compares, self.puts + other.puts,
                    self.size + other.size)

    def within(self, limits: TxnLimits) -> bool:
        return max(self.compares, self.puts) <= limits.ops and self.size <= limits.size


def order(actions: Sequence[Action]) -> tuple[list[Action], list[Restart]]:
    """The actions to carry out one by one (``decide``'s order), and the restarts to
    write after them all, in batches."""
    singles: list[Action] = [a for a in actions if not isinstance(a, Restart)]
    return singles, [a for a in actions if isinstance(a, Restart)]


def pack(costs: Sequence[Cost], limits: TxnLimits = TxnLimits(),
         fixed: Cost = Cost(1, 0, 0)) -> list[range]:
    """Consecutive groups of the items (by index) such that each group plus ``fixed``
    (the leader's guard) stays within ``limits``; an item too big to share a
    transaction goes alone (etcd judges it)."""
    groups: list[range] = []
    start, used = 0, fixed
    for i, cost in enumerate(costs):
        if i > start and not (used + cost).within(limits):
            groups.append(range(start, i))
            start, used = i, fixed
        used = used + cost
    if start < len(costs):
        groups.append(range(start, len(costs)))
    return groups
