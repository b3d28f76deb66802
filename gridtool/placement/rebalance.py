"""Pure rebalance and drain planners built on the placement filters.

Memory use of a host is ``used / total`` in percent; the *mean* is the cluster-wide use
(``sum(used) / sum(total)``) over the balanced hosts (up, not draining, not overflow),
which moves between those hosts never change. A host is in band when its use is within
``threshold_pct`` points of the mean; *imbalance* is the largest distance from the mean.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from gridtool.placement.rules import (
    DEFAULT_POLICY,
    Fleet,
    GuestNeeds,
    HostView,
    PlacementPolicy,
    add_guest,
    is_overflow,
    passing,
    remove_guest,
)

__all__ = [
    "DrainPlan",
    "Move",
    "RebalancePlan",
    "Stuck",
    "balanced_hosts",
    "drain_plan",
    "imbalance",
    "mean_use_pct",
    "plan_rebalance",
    "use_pct",
]

_EPS = 1e-6
TARGET_WINDOW = 64  # least-loaded hosts considered as targets of one over-loaded host
SOURCE_WINDOW = 16  # most-loaded hosts considered as sources for one under-loaded host
TARGETS_PER_GUEST = 8  # passing targets whose gain is evaluated per guest


@dataclass(frozen=True, slots=True)
class Move:
    """Live-migrate ``guest`` from ``source`` to ``target``."""

    guest: str
    source: str
    target: str
    gain_mib: float = 0.0  # out-of-band memory this move removes (0 for drain moves)


@dataclass(frozen=True, slots=True)
class Stuck:
    """A guest a plan could not move, and why."""

    guest: str
    reason: str


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """Ordered moves plus the imbalance (max distance from the mean, in points) around them."""

    moves: tuple[Move, ...]
    mean_pct: float
    threshold_pct: float
    imbalance_before: float
    imbalance_after: float
    outside_before: int  # balanced hosts outside mean +- threshold before the moves
    unresolved: tuple[str, ...]  # balanced hosts still outside it after them
    hosts_after: tuple[HostView, ...] = field(repr=False)

    @property
    def outside_after(self) -> int:
        """How many balanced hosts are still outside the band."""
        return len(self.unresolved)


@dataclass(frozen=True, slots=True)
class DrainPlan:
    """Where each guest of a draining host goes, and which guests cannot leave."""

    host: str
    moves: tuple[Move, ...]
    stuck: tuple[Stuck, ...]
    hosts_after: tuple[HostView, ...] = field(repr=False)


# --------------------------------------------------------------------------- metrics


def use_pct(host: HostView) -> float:
    """Memory use of ``host`` in percent."""
    return 100.0 * host.used_memory_mib / host.total_memory_mib


def balanced_hosts(
    hosts: Iterable[HostView], policy: PlacementPolicy = DEFAULT_POLICY
) -> list[HostView]:
    """Hosts that take part in balancing: up, not draining, not overflow."""
    return [h for h in hosts if h.up and not h.draining and not is_overflow(h, policy)]


def mean_use_pct(hosts: Sequence[HostView]) -> float:
    """Cluster-wide memory use in percent (0 for no hosts)."""
    total = sum(h.total_memory_mib for h in hosts)
    return 100.0 * sum(h.used_memory_mib for h in hosts) / total if total else 0.0


def imbalance(hosts: Iterable[HostView], mean_pct: float) -> float:
    """Largest distance, in percentage points, of a host's use from ``mean_pct``."""
    return max((abs(use_pct(h) - mean_pct) for h in hosts), default=0.0)


@dataclass(frozen=True, slots=True)
class _Band:
    mean: float
    threshold: float

    def excess(self, host: HostView, used: float) -> float:
        """MiB by which ``used`` lies outside the band on ``host``."""
        high = (self.mean + self.threshold) / 100.0 * host.total_memory_mib
        low = (self.mean - self.threshold) / 100.0 * host.total_memory_mib
        return max(0.0, used - high, low - used)

    def distance(self, host: HostView, used: float) -> float:
        """Distance of ``used`` from the mean on ``host``, in percentage points."""
        return abs(100.0 * used / host.total_memory_mib - self.mean)

    def outside(self, host: HostView) -> bool:
        return self.excess(host, host.used_memory_mib) > _EPS


# --------------------------------------------------------------------------- rebalance


def _gain(band: _Band, source: HostView, target: HostView, memory: int) -> float | None:
    """Out-of-band MiB removed by moving ``memory`` from source to target.

    None when the move would not help or would push either host further from the mean
    than the farther of the two already is (so imbalance never grows).
    """
    s_used, t_used = source.used_memory_mib, target.used_memory_mib
    before = max(band.distance(source, s_used), band.distance(target, t_used))
    after = max(band.distance(source, s_used - memory), band.distance(target, t_used + memory))
    gain = (
        band.excess(source, s_used)
        + band.excess(target, t_used)
        - band.excess(source, s_used - memory)
        - band.excess(target, t_used + memory)
    )
    return gain if gain > _EPS and after <= before + _EPS else None


def _largest_first(guests: Iterable[GuestNeeds]) -> list[GuestNeeds]:
    return sorted(guests, key=lambda g: (-g.memory_mib, -g.vcpus, g.name))


def _shapes(host: HostView) -> list[GuestNeeds]:
    """Movable guests of ``host``, largest first, one per placement-equivalent shape."""
    seen: set[tuple[object, ...]] = set()
    shapes = []
    for g in _largest_first(host.guests):
        key = (g.memory_mib, g.vcpus, g.anti_affinity, g.storage, g.required_labels)
        if g.movable and key not in seen:
            seen.add(key)
            shapes.append(g)
    return shapes


def _best_move(
    band: _Band,
    sources: Sequence[HostView],
    targets: Sequence[HostView],
    policy: PlacementPolicy,
) -> Move | None:
    """The move with the largest gain from one of ``sources`` to one of ``targets``."""
    best: Move | None = None
    for source in sources:
        others = [t for t in targets if t.name != source.name]
        for guest in _shapes(source):
            if best is not None and best.gain_mib >= 2 * guest.memory_mib:
                break  # a move can gain at most twice the guest's memory
            for target in passing(guest, others, policy)[:TARGETS_PER_GUEST]:
                gain = _gain(band, source, target, guest.memory_mib)
                if gain is not None and (best is None or gain > best.gain_mib + _EPS):
                    best = Move(guest.name, source.name, target.name, gain)
    return best


class _State:
    """Working copy of the balanced hosts, kept ranked by use (local to one plan)."""

    def __init__(self, band: _Band, pool: Iterable[HostView]) -> None:
        self.band = band
        self.hosts: dict[str, HostView] = {}
        self.pct: dict[str, float] = {}
        self.ranked: list[tuple[float, str]] = []  # (use %, name), least loaded first
        self.outside: set[str] = set()  # hosts out of band
        for host in pool:
            self.put(host)

    def put(self, host: HostView) -> None:
        name = host.name
        if name in self.pct:
            del self.ranked[bisect_left(self.ranked, (self.pct[name], name))]
        self.hosts[name] = host
        self.pct[name] = use_pct(host)
        insort(self.ranked, (self.pct[name], name))
        if self.band.outside(host):
            self.outside.add(name)
        else:
            self.outside.discard(name)

    def apply(self, move: Move) -> None:
        source, target = self.hosts[move.source], self.hosts[move.target]
        guest = next(g for g in source.guests if g.name == move.guest)
        self.put(remove_guest(source, move.guest))
        self.put(add_guest(target, guest))

    def _hosts(self, ranked: Iterable[tuple[float, str]]) -> list[HostView]:
        return [self.hosts[name] for _, name in ranked]

    def next_move(self, skip: set[str], policy: PlacementPolicy) -> tuple[str, Move | None] | None:
        """Relieve the most loaded over-band host (else the least loaded under-band one)
        with its best move; None when every out-of-band host has been tried."""
        outside = [(self.pct[n], n) for n in self.outside if n not in skip]
        if not outside:
            return None
        over = [entry for entry in outside if entry[0] > self.band.mean]
        if over:
            worst = max(over)[1]
            targets = self._hosts(self.ranked[: TARGET_WINDOW + 1])
            return worst, _best_move(self.band, [self.hosts[worst]], targets, policy)
        worst = min(outside)[1]
        sources = self._hosts(reversed(self.ranked[-SOURCE_WINDOW - 1 :]))
        return worst, _best_move(self.band, sources, [self.hosts[worst]], policy)


def plan_rebalance(
    hosts: Sequence[HostView],
    threshold_pct: float = 10.0,
    max_moves: int = 50,
    policy: PlacementPolicy = DEFAULT_POLICY,
) -> RebalancePlan:
    """Greedy plan bringing balanced hosts within ``threshold_pct`` of the mean memory use.

    Repeatedly relieves the most loaded over-band host (then the least loaded under-band
    one) with the single move that removes the most out-of-band memory. Targets must pass
    every placement filter, so no host is overloaded and anti-affinity holds; overflow,
    draining and down hosts are neither sources nor targets. No move increases imbalance.
    """
    if threshold_pct < 0 or max_moves < 0:
        raise ValueError("threshold_pct and max_moves must not be negative")
    hosts = tuple(hosts)
    pool = balanced_hosts(hosts, policy)
    band = _Band(mean_use_pct(pool), threshold_pct)
    state = _State(band, pool)
    moves: list[Move] = []
    stuck: set[str] = set()
    while len(moves) < max_moves:
        step = state.next_move(stuck, policy)
        if step is None:
            break
        worst, move = step
        if move is None:
            stuck.add(worst)  # nothing helps this host now; later moves only fill targets
            continue
        state.apply(move)
        moves.append(move)
    after = list(state.hosts.values())
    return RebalancePlan(
        moves=tuple(moves),
        mean_pct=band.mean,
        threshold_pct=threshold_pct,
        imbalance_before=imbalance(pool, band.mean),
        imbalance_after=imbalance(after, band.mean),
        outside_before=sum(band.outside(h) for h in pool),
        unresolved=tuple(sorted(state.outside)),
        hosts_after=tuple(state.hosts.get(h.name, h) for h in hosts),
    )


# --------------------------------------------------------------------------- drain


def drain_plan(
    host: str, hosts: Sequence[HostView], policy: PlacementPolicy = DEFAULT_POLICY
) -> DrainPlan:
    """Plan where each guest of ``host`` goes (largest first, placed one by one).

    ``host`` is treated as draining, so the allocator never picks it. Guests that are not
    movable or that no host accepts are listed in ``stuck`` with the reason.
    """
    source = next((h for h in hosts if h.name == host), None)
    if source is None:
        raise KeyError(f"unknown host {host}")
    fleet = Fleet(tuple(hosts), policy).update(replace(source, draining=True))
    moves: list[Move] = []
    stuck: list[Stuck] = []
    for guest in _largest_first(source.guests):
        if not guest.movable:
            stuck.append(Stuck(guest.name, "guest is not movable"))
            continue
        placement = fleet.place(guest)
        if placement.host is None:
            stuck.append(Stuck(guest.name, placement.reason))
            continue
        fleet = fleet.apply(placement)
        moves.append(Move(guest.name, host, placement.host))
    remaining = replace(source, draining=True)
    for move in moves:
        remaining = remove_guest(remaining, move.guest)
    return DrainPlan(host, tuple(moves), tuple(stuck), fleet.update(remaining).hosts)
