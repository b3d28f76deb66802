"""Pure placement allocator: filters, weighers and verdicts over plain host views.

Functional core only: no I/O, no clock, no etcd/libvirt. The shell adapts registry
records into :class:`HostView` / :class:`GuestNeeds` and acts on the returned
:class:`Placement`.

:func:`place` is the definition: filter every host (each filter is one vectorised pass),
prefer non-overflow hosts, take the best score, break ties by :func:`tiebreak`.
:class:`Fleet` is the same rule over hosts indexed by profile, for placing many guests
one after another (a few hosts looked at per profile instead of all of them). Per-host
explanations (:attr:`Placement.verdicts`) are built only when asked for, so placing stays
cheap while ``--dry-run`` still explains every host.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property, lru_cache

__all__ = [
    "DEFAULT_POLICY",
    "FILTERS",
    "FILTER_CODES",
    "Failure",
    "Filter",
    "Fleet",
    "GuestNeeds",
    "HostVerdict",
    "HostView",
    "Placement",
    "PlacementPolicy",
    "Weigher",
    "add_guest",
    "apply_placement",
    "explain",
    "is_overflow",
    "memory_fill",
    "passes",
    "passing",
    "place",
    "place_many",
    "remove_guest",
    "score",
    "scores",
    "tiebreak",
    "unprotected_reason",
    "verdicts",
]


class Weigher(StrEnum):
    """How passing hosts are ranked."""

    SPREAD = "spread"  # least loaded host first
    PACK = "pack"  # most loaded host that still fits first


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """Tunables of the allocator."""

    weigher: Weigher = Weigher.SPREAD
    memory_ratio: float = 1.0  # memory capacity = total * ratio (1.0 = no overcommit)
    cpu_ratio: float = 4.0  # vCPUs allowed per physical CPU
    memory_weight: float = 1.0  # share of memory fill in the load score
    cpu_weight: float = 0.0  # share of vCPU fill in the load score (0: memory only)
    preferred_label_weight: float = 1.0  # score added per matching preferred label
    overflow_label: str = "overflow"  # hosts used only when no other host passes

    def __post_init__(self) -> None:
        object.__setattr__(self, "weigher", Weigher(self.weigher))  # accept "spread"/"pack"
        if self.memory_ratio <= 0 or self.cpu_ratio <= 0:
            raise ValueError("overcommit ratios must be positive")
        if min(self.memory_weight, self.cpu_weight, self.preferred_label_weight) < 0:
            raise ValueError("weights must be non-negative")
        if self.memory_weight + self.cpu_weight <= 0:
            raise ValueError("memory_weight + cpu_weight must be positive")


DEFAULT_POLICY = PlacementPolicy()


@dataclass(frozen=True, slots=True)
class GuestNeeds:
    """What a guest needs from a host; also describes guests already running on hosts."""

    name: str
    memory_mib: int
    vcpus: int
    storage: frozenset[str] = frozenset()  # shared storage ids the guest's volumes live on
    anti_affinity: str | None = None  # no two guests of one group on a host
    required_labels: frozenset[str] = frozenset()
    preferred_labels: frozenset[str] = frozenset()
    movable: bool = True  # may be live-migrated (rebalance/drain); ignored for new guests
    ha: bool = False  # an HA guest: only on protected hosts (see :attr:`HostView.protected`)

    def __post_init__(self) -> None:
        if self.memory_mib < 0 or self.vcpus < 0:
            raise ValueError(f"guest {self.name}: negative resources")
        for name in ("storage", "required_labels", "preferred_labels"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class HostView:
    """One hypervisor host as the allocator sees it."""

    name: str
    total_memory_mib: int
    free_memory_mib: int
    cpus: int
    vcpus_allocated: int = 0
    up: bool = True
    draining: bool = False
    labels: frozenset[str] = frozenset()
    storage: frozenset[str] = frozenset()  # shared storage ids this host can reach
    guests: tuple[GuestNeeds, ...] = ()
    #: A hung agent here cannot leave an HA guest running while it restarts elsewhere: a
    #: working watchdog, or the host can be fenced (``HostRecord.protected``).
    protected: bool = True
    groups: frozenset[str] = field(init=False, repr=False, compare=False)  # derived
    used_memory_mib: int = field(init=False, repr=False, compare=False)  # derived

    def __post_init__(self) -> None:
        if self.total_memory_mib <= 0 or self.cpus <= 0:
            raise ValueError(f"host {self.name}: memory and cpus must be positive")
        object.__setattr__(self, "labels", frozenset(self.labels))
        object.__setattr__(self, "storage", frozenset(self.storage))
        object.__setattr__(self, "guests", tuple(self.guests))
        groups = {g.anti_affinity for g in self.guests if g.anti_affinity is not None}
        object.__setattr__(self, "groups", frozenset(groups))
        object.__setattr__(self, "used_memory_mib", self.total_memory_mib - self.free_memory_mib)


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed filter: stable short code plus a human reason."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class HostVerdict:
    """Why a host was (not) eligible and how it scored."""

    host: str
    failures: tuple[Failure, ...]
    score: float | None  # None when a filter failed
    overflow: bool

    @property
    def passed(self) -> bool:
        """True when every filter passed."""
        return not self.failures

    @property
    def codes(self) -> tuple[str, ...]:
        """Failed filter codes, in filter order."""
        return tuple(f.code for f in self.failures)


# --------------------------------------------------------------------------- filters
#
# Each filter is written once, as a "keep" function over a list of hosts (vectorised so
# the hot path makes one call per filter, not one per host). Single-host questions
# (:func:`passes`, :func:`explain`) run the same functions over a one-host list.

Hosts = list[HostView]
Keep = Callable[[GuestNeeds, Hosts, PlacementPolicy], Hosts]
Reason = Callable[[GuestNeeds, HostView, PlacementPolicy], str]


@dataclass(frozen=True, slots=True)
class Filter:
    """A placement filter: stable code, the hosts it keeps, and why it rejects one."""

    code: str
    keep: Keep
    reason: Reason
    by_profile: bool = False  # depends only on a host's profile (see :class:`Fleet`)


def _keep_up(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    return [h for h in hosts if h.up]


def _keep_not_draining(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    return [h for h in hosts if not h.draining]


def _exact(ratio: float) -> int | float:
    """``ratio`` as an int when integral: int arithmetic is much cheaper in the hot path."""
    return int(ratio) if ratio.is_integer() else ratio


def _keep_memory(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    need, extra = guest.memory_mib, _exact(policy.memory_ratio - 1.0)
    if not extra:  # no overcommit (the default): same predicate without the zero term
        return [h for h in hosts if h.free_memory_mib >= need]
    return [h for h in hosts if h.free_memory_mib + h.total_memory_mib * extra >= need]


def _keep_cpu(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    need, ratio = guest.vcpus, _exact(policy.cpu_ratio)
    return [h for h in hosts if h.vcpus_allocated + need <= h.cpus * ratio]


def _keep_labels(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    wanted = guest.required_labels
    return [h for h in hosts if wanted <= h.labels] if wanted else hosts


def _keep_anti_affinity(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    group = guest.anti_affinity
    return hosts if group is None else [h for h in hosts if group not in h.groups]


def _keep_storage(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    wanted = guest.storage
    return [h for h in hosts if wanted <= h.storage] if wanted else hosts


def _keep_protected(guest: GuestNeeds, hosts: Hosts, policy: PlacementPolicy) -> Hosts:
    return [h for h in hosts if h.protected] if guest.ha else hosts


def unprotected_reason(host: str) -> str:
    """Why an HA guest may not go to ``host``: the placement filter's and the CLI's words."""
    return (f"host {host} has no working watchdog and cannot be fenced: an HA guest there "
            "could run twice if its agent hung")


def _listed(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


def _memory_reason(guest: GuestNeeds, host: HostView, policy: PlacementPolicy) -> str:
    return (
        f"needs {guest.memory_mib} MiB, {host.free_memory_mib} of {host.total_memory_mib} MiB"
        f" free (memory ratio {policy.memory_ratio:g})"
    )


def _cpu_reason(guest: GuestNeeds, host: HostView, policy: PlacementPolicy) -> str:
    return (
        f"needs {guest.vcpus} vCPUs, {host.vcpus_allocated} allocated of"
        f" {host.cpus} CPUs x {policy.cpu_ratio:g}"
    )


def _anti_affinity_reason(guest: GuestNeeds, host: HostView, policy: PlacementPolicy) -> str:
    peers = _listed(g.name for g in host.guests if g.anti_affinity == guest.anti_affinity)
    return f"anti-affinity group {guest.anti_affinity} already has {peers} here"


FILTERS: tuple[Filter, ...] = (
    Filter("down", _keep_up, lambda g, h, p: "host is down"),
    Filter("draining", _keep_not_draining, lambda g, h, p: "host is draining"),
    Filter("memory", _keep_memory, _memory_reason),
    Filter("cpu", _keep_cpu, _cpu_reason),
    Filter(
        "labels",
        _keep_labels,
        lambda g, h, p: f"missing required labels: {_listed(g.required_labels - h.labels)}",
        by_profile=True,
    ),
    Filter("anti-affinity", _keep_anti_affinity, _anti_affinity_reason),
    Filter(
        "storage",
        _keep_storage,
        lambda g, h, p: f"cannot reach storage: {_listed(g.storage - h.storage)}",
    ),
    Filter("unprotected", _keep_protected, lambda g, h, p: unprotected_reason(h.name)),
)
FILTER_CODES: tuple[str, ...] = tuple(f.code for f in FILTERS)
_PROFILE_FILTERS = tuple(f for f in FILTERS if f.by_profile)


def passing(guest: GuestNeeds, hosts: Sequence[HostView], policy: PlacementPolicy) -> Hosts:
    """The hosts (in input order) that pass every filter for ``guest``."""
    kept = list(hosts)
    for f in FILTERS:
        if not kept:
            break
        kept = f.keep(guest, kept, policy)
    return kept


def passes(guest: GuestNeeds, host: HostView, policy: PlacementPolicy) -> bool:
    """True when ``host`` passes every filter for ``guest``."""
    return bool(passing(guest, (host,), policy))


def explain(guest: GuestNeeds, host: HostView, policy: PlacementPolicy) -> tuple[Failure, ...]:
    """Every filter ``host`` fails for ``guest``, with human reasons, in filter order."""
    return verdicts(guest, (host,), policy)[0].failures


def is_overflow(host: HostView, policy: PlacementPolicy = DEFAULT_POLICY) -> bool:
    """True for overflow hosts, which are used only when no other host passes."""
    return policy.overflow_label in host.labels


# --------------------------------------------------------------------------- weighers


def memory_fill(guest: GuestNeeds, hosts: Sequence[HostView]) -> list[float]:
    """Fraction of each host's memory in use once ``guest`` is placed on it."""
    mem = guest.memory_mib
    return [(h.used_memory_mib + mem) / h.total_memory_mib for h in hosts]


def scores(guest: GuestNeeds, hosts: Sequence[HostView], policy: PlacementPolicy) -> list[float]:
    """Weigher score of each (passing) host for ``guest``; higher is better.

    The load after placing is the weighted mean of the memory and vCPU fill fractions
    (relative to overcommitted capacity); ``spread`` scores ``1 - load`` and ``pack``
    scores ``load``. Each preferred label a host carries adds ``preferred_label_weight``.
    Every term is one pass over ``hosts``; zero-weight terms are skipped.
    """
    sign, base = (-1.0, 1.0) if policy.weigher is Weigher.SPREAD else (1.0, 0.0)
    share = sign / (policy.memory_weight + policy.cpu_weight)
    mem_k = share * policy.memory_weight / policy.memory_ratio
    values = [base + mem_k * fill for fill in memory_fill(guest, hosts)]
    if policy.cpu_weight:
        cpu_k, vcpus = share * policy.cpu_weight / policy.cpu_ratio, guest.vcpus
        cpu_terms = [cpu_k * (h.vcpus_allocated + vcpus) / h.cpus for h in hosts]
        values = [v + c for v, c in zip(values, cpu_terms, strict=True)]
    preferred, weight = guest.preferred_labels, policy.preferred_label_weight
    if preferred and weight:
        bonus = [weight * len(preferred & h.labels) for h in hosts]
        values = [v + b for v, b in zip(values, bonus, strict=True)]
    return values


def score(guest: GuestNeeds, host: HostView, policy: PlacementPolicy) -> float:
    """Weigher score of one host (see :func:`scores`)."""
    return scores(guest, (host,), policy)[0]


_RING = 1 << 64


@lru_cache(maxsize=1 << 16)
def _name_digest(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def tiebreak(guest_name: str, host_name: str) -> int:
    """Stable tie-break key of a (guest, host) pair; the lowest key wins a tie.

    Names are placed on a 64-bit hash ring by their blake2b digest (never Python's
    salted ``hash()``); the key is how far clockwise the host lies from the guest, so
    each guest prefers a different host among equals, the same one on every run.
    """
    return _tie_keys(guest_name, [host_name])[0]


def _tie_keys(guest_name: str, host_names: Iterable[str]) -> list[int]:
    seed = _name_digest(guest_name)
    return [(d - seed) % _RING for d in map(_name_digest, host_names)]


def verdicts(
    guest: GuestNeeds, hosts: Sequence[HostView], policy: PlacementPolicy
) -> tuple[HostVerdict, ...]:
    """A verdict for every host (input order): failed filters with reasons, else its score."""
    hosts = list(hosts)
    kept = [{id(h) for h in f.keep(guest, hosts, policy)} for f in FILTERS]
    failures = [
        tuple(
            Failure(f.code, f.reason(guest, h, policy))
            for f, ok in zip(FILTERS, kept, strict=True)
            if id(h) not in ok
        )
        for h in hosts
    ]
    passed = [h for h, failed in zip(hosts, failures, strict=True) if not failed]
    values = dict(zip(map(id, passed), scores(guest, passed, policy), strict=True))
    return tuple(
        HostVerdict(h.name, failed, values.get(id(h)), is_overflow(h, policy))
        for h, failed in zip(hosts, failures, strict=True)
    )


# --------------------------------------------------------------------------- allocator


@dataclass(frozen=True)
class Placement:
    """Result of placing one guest: the chosen host (or None) and, lazily, every verdict."""

    guest: GuestNeeds
    host: str | None
    hosts: tuple[HostView, ...] = field(default=(), repr=False, compare=False)
    policy: PlacementPolicy = field(default=DEFAULT_POLICY, repr=False, compare=False)

    @cached_property
    def verdicts(self) -> tuple[HostVerdict, ...]:
        """One verdict per input host, in input order (computed on first access)."""
        return verdicts(self.guest, self.hosts, self.policy)

    @property
    def reason(self) -> str:
        """Why no host was chosen (empty when one was)."""
        if self.host is not None:
            return ""
        if not self.hosts:
            return "no hosts"
        counts = Counter(code for v in self.verdicts for code in v.codes)
        summary = ", ".join(f"{code} on {counts[code]}" for code in FILTER_CODES if code in counts)
        return f"no host passes the filters ({summary})"


def place(
    guest: GuestNeeds, hosts: Sequence[HostView], policy: PlacementPolicy = DEFAULT_POLICY
) -> Placement:
    """Choose a host for ``guest``.

    Among hosts passing every filter, non-overflow hosts beat overflow hosts, then the
    higher score wins, then the lower :func:`tiebreak`. The choice does not depend on
    the order of ``hosts``.
    """
    hosts = tuple(hosts)
    candidates = passing(guest, hosts, policy)
    label = policy.overflow_label
    chosen = _best(guest, [h for h in candidates if label not in h.labels] or candidates, policy)
    return Placement(guest, None if chosen is None else chosen.name, hosts, policy)


def _best(
    guest: GuestNeeds, candidates: Sequence[HostView], policy: PlacementPolicy
) -> HostView | None:
    """The best-scoring of ``candidates`` (passing hosts of one tier); ties go to the
    lowest :func:`tiebreak`."""
    if not candidates:
        return None
    keys, best = _ranking(guest, candidates, policy)
    if keys.count(best) == 1:
        return candidates[keys.index(best)]
    tied = [h for h, k in zip(candidates, keys, strict=True) if k == best]
    ties = _tie_keys(guest.name, [h.name for h in tied])
    return tied[ties.index(min(ties))]


def _ranking(
    guest: GuestNeeds, hosts: Sequence[HostView], policy: PlacementPolicy
) -> tuple[list[float], float]:
    """Ranking keys of ``hosts`` and the best one.

    The keys are the :func:`scores`, except when memory fill alone decides (no vCPU
    weight, no preferred-label bonus): then the fills themselves, which order hosts the
    same way (lowest first for spread, highest for pack) for a third of the float work.
    """
    if policy.cpu_weight or (guest.preferred_labels and policy.preferred_label_weight):
        keys = scores(guest, hosts, policy)
        return keys, max(keys)
    keys = memory_fill(guest, hosts)
    return keys, min(keys) if policy.weigher is Weigher.SPREAD else max(keys)


def add_guest(host: HostView, guest: GuestNeeds) -> HostView:
    """``host`` with ``guest`` running on it (resources reduced)."""
    return replace(
        host,
        free_memory_mib=host.free_memory_mib - guest.memory_mib,
        vcpus_allocated=host.vcpus_allocated + guest.vcpus,
        guests=(*host.guests, guest),
    )


def remove_guest(host: HostView, guest_name: str) -> HostView:
    """``host`` without the guest named ``guest_name`` (resources given back)."""
    guest = next((g for g in host.guests if g.name == guest_name), None)
    if guest is None:
        raise KeyError(f"guest {guest_name} is not on host {host.name}")
    return replace(
        host,
        free_memory_mib=host.free_memory_mib + guest.memory_mib,
        vcpus_allocated=host.vcpus_allocated - guest.vcpus,
        guests=tuple(g for g in host.guests if g.name != guest_name),
    )


def apply_placement(hosts: Sequence[HostView], placement: Placement) -> tuple[HostView, ...]:
    """New host views with ``placement`` applied (unchanged when nothing was chosen)."""
    hosts = tuple(hosts)
    if placement.host is None:
        return hosts
    i = [h.name for h in hosts].index(placement.host)
    return _replace_at(hosts, i, add_guest(hosts[i], placement.guest))


def place_many(
    guests: Iterable[GuestNeeds],
    hosts: Sequence[HostView],
    policy: PlacementPolicy = DEFAULT_POLICY,
) -> tuple[tuple[Placement, ...], tuple[HostView, ...]]:
    """Place ``guests`` one by one, each seeing the hosts as left by the previous ones."""
    fleet = Fleet(tuple(hosts), policy)
    placements = []
    for guest in guests:
        placement = fleet.place(guest)
        placements.append(placement)
        fleet = fleet.apply(placement)
    return tuple(placements), fleet.hosts


# --------------------------------------------------------------------------- fleet index

Profile = tuple[int, int, frozenset[str]]
_KEY_SLACK = 1e-12  # order keys this close may rank either way once a guest is added


def _profile(host: HostView) -> Profile:
    """Hosts with one profile (memory, CPUs, labels) rank alike for every guest."""
    return host.total_memory_mib, host.cpus, host.labels


def _order_key(host: HostView, policy: PlacementPolicy) -> float:
    """Guest-independent load (lower ranks first) that orders hosts of one profile the way
    :func:`scores` does for any guest: the guest adds the same amount to each of them."""
    load = (
        policy.memory_weight / policy.memory_ratio * host.used_memory_mib / host.total_memory_mib
        + policy.cpu_weight / policy.cpu_ratio * host.vcpus_allocated / host.cpus
    )
    return load if policy.weigher is Weigher.SPREAD else -load


def _first_passing(
    guest: GuestNeeds, hosts: Sequence[HostView], policy: PlacementPolicy
) -> HostView | None:
    """The first of ``hosts`` passing every filter, found by :func:`passing` over doubling
    chunks: a few short filter passes when one of the first hosts fits."""
    start, size = 0, 4
    while start < len(hosts):
        found = passing(guest, hosts[start : start + size], policy)
        if found:
            return found[0]
        start, size = start + size, size * 2
    return None


Row = tuple[float, int, str]  # (order key, name digest, name)


def _row(host: HostView, policy: PlacementPolicy) -> Row:
    return _order_key(host, policy), _name_digest(host.name), host.name


@dataclass(frozen=True, slots=True)
class _Ranked:
    """One profile's hosts in rank order: by order key, equal keys by hash-ring position."""

    rows: tuple[Row, ...] = ()
    hosts: tuple[HostView, ...] = ()  # in ``rows`` order

    @classmethod
    def of(cls, hosts: Iterable[HostView], policy: PlacementPolicy) -> _Ranked:
        pairs = sorted(((_row(h, policy), h) for h in hosts), key=lambda pair: pair[0])
        return cls(tuple(row for row, _ in pairs), tuple(h for _, h in pairs))

    def without(self, host: HostView, policy: PlacementPolicy) -> _Ranked:
        i = bisect_left(self.rows, _row(host, policy))
        return _Ranked(_drop(self.rows, i), _drop(self.hosts, i))

    def with_(self, host: HostView, policy: PlacementPolicy) -> _Ranked:
        row = _row(host, policy)
        i = bisect_left(self.rows, row)
        return _Ranked(_insert(self.rows, i, row), _insert(self.hosts, i, host))

    def best(self, guest: GuestNeeds, policy: PlacementPolicy) -> list[HostView]:
        """The passing hosts that may score best in this profile ([] if none passes)."""
        first = _first_passing(guest, self.hosts, policy)
        return [] if first is None else self._tied(guest, _order_key(first, policy), policy)

    def _tied(self, guest: GuestNeeds, key: float, policy: PlacementPolicy) -> list[HostView]:
        """Passing hosts whose order key is ``key``, the best any passing host has."""
        lo = bisect_left(self.rows, (key,))
        hi = bisect_right(self.rows, (key + _KEY_SLACK, _RING))
        if policy.cpu_weight or self.rows[hi - 1][0] != key:
            return passing(guest, self.hosts[lo:hi], policy)  # :func:`_best` ranks exactly
        # Memory fill alone ranks and the key is exact, so these hosts have the same used
        # memory and score: the tie goes to the first passing host clockwise from the guest
        # on the hash ring, i.e. the lowest :func:`tiebreak`.
        i = bisect_left(self.rows, (key, _name_digest(guest.name)), lo, hi)
        first = _first_passing(guest, self.hosts[i:hi], policy) or _first_passing(
            guest, self.hosts[lo:i], policy
        )
        return [] if first is None else [first]


def _drop(items: tuple, i: int) -> tuple:
    return (*items[:i], *items[i + 1 :])


def _insert(items: tuple, i: int, item: object) -> tuple:
    return (*items[:i], item, *items[i:])


def _replace_at(items: tuple, i: int, item: object) -> tuple:
    return (*items[:i], item, *items[i + 1 :])


@dataclass(frozen=True)
class Fleet:
    """Hosts indexed for fast sequential placement; immutable (updates return new fleets).

    Hosts are grouped by profile and ranked inside it, so :meth:`place` looks at a few
    hosts per profile instead of every host, and chooses exactly what :func:`place`
    would (same filters, same rule). ``Fleet(hosts, policy)`` indexes in O(n log n);
    then :meth:`place` and :meth:`apply` once per guest.
    """

    hosts: tuple[HostView, ...]
    policy: PlacementPolicy = DEFAULT_POLICY
    # the index; built from ``hosts`` when not given (only :meth:`update` passes it)
    _positions: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _profiles: dict[Profile, _Ranked] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._positions:
            return
        hosts = tuple(self.hosts)
        positions = {h.name: i for i, h in enumerate(hosts)}
        if len(positions) != len(hosts):
            raise ValueError("host names must be unique")
        groups: dict[Profile, list[HostView]] = {}
        for h in hosts:
            groups.setdefault(_profile(h), []).append(h)
        profiles = {p: _Ranked.of(members, self.policy) for p, members in groups.items()}
        object.__setattr__(self, "hosts", hosts)
        object.__setattr__(self, "_positions", positions)
        object.__setattr__(self, "_profiles", profiles)

    def place(self, guest: GuestNeeds) -> Placement:
        """Same result as ``place(guest, self.hosts, self.policy)``: overflow profiles
        are searched only when no other profile has a candidate."""
        candidates = self._candidates(guest, overflow=False) or self._candidates(
            guest, overflow=True
        )
        chosen = _best(guest, candidates, self.policy)
        return Placement(guest, None if chosen is None else chosen.name, self.hosts, self.policy)

    def _candidates(self, guest: GuestNeeds, overflow: bool) -> list[HostView]:
        """The best passing hosts of every (overflow or other) profile."""
        policy, static = self.policy, _PROFILE_FILTERS
        return [
            h
            for (_, _, labels), ranked in self._profiles.items()
            if (policy.overflow_label in labels) == overflow
            and ranked.hosts
            and all(f.keep(guest, [ranked.hosts[0]], policy) for f in static)
            for h in ranked.best(guest, policy)
        ]

    def update(self, host: HostView) -> Fleet:
        """This fleet with ``host`` replacing the host of the same name."""
        positions, profiles = self._positions, dict(self._profiles)
        i = positions[host.name]
        old = self.hosts[i]
        profiles[_profile(old)] = profiles[_profile(old)].without(old, self.policy)
        ranked = profiles.get(_profile(host), _Ranked())
        profiles[_profile(host)] = ranked.with_(host, self.policy)
        return Fleet(_replace_at(self.hosts, i, host), self.policy, positions, profiles)

    def apply(self, placement: Placement) -> Fleet:
        """This fleet with ``placement`` applied (unchanged when nothing was chosen)."""
        if placement.host is None:
            return self
        host = self.hosts[self._positions[placement.host]]
        return self.update(add_guest(host, placement.guest))
