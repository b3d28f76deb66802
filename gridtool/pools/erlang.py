"""Erlang B / Erlang C queueing formulas for M/M/c pools (pure, numerically stable).

Offered load ``A`` is in erlangs (arrival rate x mean service time); ``c`` is the number
of servers (workers). Nothing here forms ``A**c`` or ``c!``: Erlang B comes from the
recursion ``B(0) = 1, B(k) = A*B(k-1) / (k + A*B(k-1))`` whose terms stay in [0, 1], and
Erlang C is derived from B, so ``c`` in the thousands (or more) is fine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

TargetKind = Literal["wait_probability", "mean_wait"]
TARGET_KINDS: tuple[TargetKind, ...] = ("wait_probability", "mean_wait")

DEFAULT_SERVER_LIMIT = 1_000_000


def _check(servers: int, load: float) -> None:
    if servers < 0:
        raise ValueError(f"servers must be >= 0, got {servers}")
    if load < 0 or math.isnan(load):
        raise ValueError(f"offered load must be >= 0, got {load}")


def _erlang_b_series(load: float) -> Iterator[tuple[int, float]]:
    """Yield ``(c, B(c, load))`` for c = 0, 1, 2, ... (endless)."""
    blocking = 1.0
    servers = 0
    while True:
        yield servers, blocking
        servers += 1
        blocking = load * blocking / (servers + load * blocking)


def erlang_b(servers: int, load: float) -> float:
    """Blocking probability of an M/M/c/c loss system (Erlang B)."""
    _check(servers, load)
    for count, blocking in _erlang_b_series(load):
        if count == servers:
            return blocking
    raise AssertionError("unreachable")  # pragma: no cover


def _c_from_b(servers: int, load: float, blocking: float) -> float:
    if servers == 0 or load >= servers:
        return 1.0
    return servers * blocking / (servers - load * (1.0 - blocking))


def erlang_c(servers: int, load: float) -> float:
    """P(W > 0): probability that an arriving job has to wait (1.0 if load >= servers)."""
    _check(servers, load)
    if load >= servers:
        return 1.0
    return _c_from_b(servers, load, erlang_b(servers, load))


def _mean_wait(servers: int, load: float, service_time: float, p_wait: float) -> float:
    if load >= servers:
        return math.inf
    return p_wait * service_time / (servers - load)


def _tail(servers: int, load: float, service_time: float, p_wait: float, t: float) -> float:
    if load >= servers:
        return 1.0
    if t <= 0:
        return p_wait
    return p_wait * math.exp(-(servers - load) * t / service_time)


def mean_wait(servers: int, load: float, service_time: float) -> float:
    """Mean time in queue Wq (same unit as service_time); inf if the pool is overloaded."""
    _check_service(service_time)
    return _mean_wait(servers, load, service_time, erlang_c(servers, load))


def prob_wait_exceeds(servers: int, load: float, service_time: float, t: float) -> float:
    """P(W > t) = C(c, A) * exp(-(c - A) * t / service_time); t = 0 gives Erlang C."""
    _check_service(service_time)
    return _tail(servers, load, service_time, erlang_c(servers, load), t)


def service_level(servers: int, load: float, service_time: float, t: float) -> float:
    """Fraction of jobs that start within t: 1 - P(W > t)."""
    return 1.0 - prob_wait_exceeds(servers, load, service_time, t)


def _check_service(service_time: float) -> None:
    if not service_time > 0:
        raise ValueError(f"service time must be > 0, got {service_time}")


def _metric(
    kind: TargetKind, servers: int, load: float, service_time: float, p_wait: float, t: float
) -> float:
    if kind == "mean_wait":
        return _mean_wait(servers, load, service_time, p_wait)
    return _tail(servers, load, service_time, p_wait, t)


def _check_kind(kind: str) -> None:
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; expected one of {TARGET_KINDS}")


def wait_metric(
    servers: int,
    load: float,
    service_time: float,
    *,
    kind: TargetKind = "wait_probability",
    threshold: float = 0.0,
) -> float:
    """What a target constrains: P(W > threshold) (``wait_probability``) or Wq
    (``mean_wait``)."""
    _check_service(service_time)
    _check_kind(kind)
    return _metric(kind, servers, load, service_time, erlang_c(servers, load), threshold)


def servers_needed(
    load: float,
    service_time: float,
    target: float,
    *,
    kind: TargetKind = "wait_probability",
    threshold: float = 0.0,
    limit: int = DEFAULT_SERVER_LIMIT,
) -> int:
    """Smallest c with P(W > threshold) <= target (kind ``wait_probability``) or with
    Wq <= target seconds (kind ``mean_wait``). Zero load needs zero servers.

    Walks the Erlang B recursion once, so the cost is O(answer). Raises ValueError if
    more than ``limit`` servers would be needed.
    """
    _check(0, load)
    _check_service(service_time)
    _check_kind(kind)
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    if load == 0:
        return 0
    for servers, blocking in _erlang_b_series(load):
        if servers > limit:
            break
        if servers <= load:
            continue
        p_wait = _c_from_b(servers, load, blocking)
        if _metric(kind, servers, load, service_time, p_wait, threshold) <= target:
            return servers
    raise ValueError(f"more than {limit} servers needed for load {load}")
