"""Erlang B/C: published values, an independent exact computation, large pools."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridtool.pools.erlang import (
    erlang_b,
    erlang_c,
    mean_wait,
    prob_wait_exceeds,
    servers_needed,
    service_level,
    wait_metric,
)


def direct_erlang_c(servers: int, load: Fraction) -> Fraction:
    """Textbook formula with exact fractions: (A^c/c! * c/(c-A)) / (sum + same)."""
    top = load**servers / math.factorial(servers) * Fraction(servers) / (servers - load)
    below = sum(load**k / math.factorial(k) for k in range(servers))
    return top / (below + top)


def log_space_erlang_c(servers: int, load: float) -> float:
    """Independent large-c check: Poisson terms in log space, summed with math.fsum."""
    logs = [k * math.log(load) - math.lgamma(k + 1) for k in range(servers)]
    tail = (
        servers * math.log(load) - math.lgamma(servers + 1) + math.log(servers / (servers - load))
    )
    peak = max(max(logs), tail)
    head = math.fsum(math.exp(v - peak) for v in logs)
    top = math.exp(tail - peak)
    return top / (head + top)


@pytest.mark.parametrize(
    ("servers", "load", "expected"),
    [
        (3, 2.0, 0.4444),  # classic textbook example: 4/9
        (2, 1.0, 0.3333),  # M/M/2 at rho = 0.5: 2 rho^2 / (1 + rho)
        (2, 1.5, 0.6429),  # two 1 Mbps lines, 150 packets/s of 10 kbit: 9/14
        (11, 10.0, 0.6821),  # call centre, 10 erlangs (e.g. 100 calls/30 min, AHT 180 s)
        (12, 10.0, 0.4494),
        (13, 10.0, 0.2853),
        (14, 10.0, 0.1741),
        (55, 48.0, 0.2387),  # 360 calls per half hour, AHT 240 s, 55 agents
    ],
)
def test_published_erlang_c_values(servers: int, load: float, expected: float) -> None:
    assert erlang_c(servers, load) == pytest.approx(expected, abs=5e-5)


def test_published_call_centre_answer_time() -> None:
    # 48 erlangs, 55 agents, AHT 240 s: average speed of answer ~8.2 s
    assert mean_wait(55, 48.0, 240.0) == pytest.approx(8.18, abs=0.01)


def test_published_erlang_b_value() -> None:
    assert erlang_b(10, 5.0) == pytest.approx(0.0184, abs=5e-5)  # 5 E on 10 trunks
    assert erlang_b(1, 1.0) == 0.5


@given(
    servers=st.integers(min_value=1, max_value=40),
    num=st.integers(min_value=1, max_value=400),
    den=st.integers(min_value=1, max_value=10),
)
def test_matches_exact_fraction_formula(servers: int, num: int, den: int) -> None:
    load = Fraction(num, den)
    if load >= servers:
        assert erlang_c(servers, float(load)) == 1.0
        return
    exact = float(direct_erlang_c(servers, load))
    assert erlang_c(servers, float(load)) == pytest.approx(exact, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("servers", "load"), [(1000, 950.0), (5000, 4900.0), (8000, 7000.0)])
def test_thousands_of_servers_are_stable(servers: int, load: float) -> None:
    value = erlang_c(servers, load)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(log_space_erlang_c(servers, load), rel=1e-8)


def test_edges() -> None:
    assert erlang_c(5, 0.0) == 0.0
    assert erlang_c(3, 3.0) == 1.0
    assert erlang_c(0, 1.0) == 1.0
    assert erlang_b(0, 4.0) == 1.0
    assert mean_wait(3, 3.0, 1.0) == math.inf
    assert prob_wait_exceeds(3, 5.0, 1.0, 10.0) == 1.0
    with pytest.raises(ValueError):
        erlang_c(-1, 1.0)
    with pytest.raises(ValueError):
        erlang_c(2, -0.5)
    with pytest.raises(ValueError):
        mean_wait(2, 1.0, 0.0)


def test_wait_tail() -> None:
    c, a, s = 12, 10.0, 3.0
    assert prob_wait_exceeds(c, a, s, 0.0) == erlang_c(c, a)
    expected = erlang_c(c, a) * math.exp(-(c - a) * 2.0 / s)
    assert prob_wait_exceeds(c, a, s, 2.0) == pytest.approx(expected)
    assert service_level(c, a, s, 2.0) == pytest.approx(1 - expected)
    assert prob_wait_exceeds(c, a, s, 5.0) < prob_wait_exceeds(c, a, s, 1.0)


@given(
    load=st.floats(min_value=0.01, max_value=300.0),
    target=st.floats(min_value=0.001, max_value=0.99),
)
def test_servers_needed_is_minimal_for_wait_probability(load: float, target: float) -> None:
    c = servers_needed(load, 1.0, target)
    assert c > load
    assert erlang_c(c, load) <= target
    assert c - 1 <= load or erlang_c(c - 1, load) > target


@given(
    load=st.floats(min_value=0.01, max_value=300.0),
    service=st.floats(min_value=0.01, max_value=100.0),
    target=st.floats(min_value=0.001, max_value=100.0),
)
def test_servers_needed_is_minimal_for_mean_wait(
    load: float, service: float, target: float
) -> None:
    c = servers_needed(load, service, target, kind="mean_wait")
    assert mean_wait(c, load, service) <= target
    assert mean_wait(c - 1, load, service) > target


def test_servers_needed_examples() -> None:
    # 30 calls/h of 5 min (2.5 E): P(delayed) <= 10 % needs 6 agents
    assert servers_needed(2.5, 300.0, 0.1) == 6
    assert servers_needed(10.0, 180.0, 0.2) == 14
    # P(W > 20 s) <= 20 % for the 48-erlang centre
    c = servers_needed(48.0, 240.0, 0.2, threshold=20.0)
    assert (
        prob_wait_exceeds(c, 48.0, 240.0, 20.0) <= 0.2 < prob_wait_exceeds(c - 1, 48.0, 240.0, 20.0)
    )
    assert servers_needed(0.0, 1.0, 0.2) == 0
    assert servers_needed(4900.0, 1.0, 0.2) == 4975


def test_servers_needed_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="kind"):
        servers_needed(1.0, 1.0, 0.2, kind="p99")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        servers_needed(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="more than 10"):
        servers_needed(50.0, 1.0, 0.2, limit=10)


def test_wait_metric_matches_the_named_quantity() -> None:
    assert wait_metric(12, 10.0, 2.0) == erlang_c(12, 10.0)
    assert wait_metric(12, 10.0, 2.0, threshold=1.0) == prob_wait_exceeds(12, 10.0, 2.0, 1.0)
    assert wait_metric(12, 10.0, 2.0, kind="mean_wait") == mean_wait(12, 10.0, 2.0)
    with pytest.raises(ValueError, match="kind"):
        wait_metric(12, 10.0, 2.0, kind="median")  # type: ignore[arg-type]
