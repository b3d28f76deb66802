"""Unit tests for the gridtool.health package: the pure verdicts behind ``gridtool check``."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gridtool.health as health
from gridtool.health.checks import evaluate, unknown_report, unreachable_report
from gridtool.health.params import (
    AGENT_REPORT_PERIOD_S,
    CheckParams,
    apply_thresholds,
    build_params,
    parse_ignore,
    parse_threshold,
)
from gridtool.health.ranges import (
    CheckUsageError,
    Range,
    Status,
    fmt_number,
    grade,
    parse_range,
    worst,
)
from gridtool.health.render import STATUS_TEXT_MAX, render_json, render_text
from gridtool.health.report import CODES, IGNORABLE_CODES, Finding, Perf, Report, exit_code
from gridtool.health.snapshot import (
    AlarmObs,
    CertObs,
    CorruptRecord,
    EndpointStatus,
    FenceFailure,
    FenceObs,
    GuestObs,
    HostObs,
    IntentObs,
    PoolObs,
    RunReport,
    SettingsObs,
    Snapshot,
    ViolationObs,
)
from gridtool.pools.feed import FeedStatus
from tests.unit.test_architecture import product_modules, pure_set

NOW = 1_700_000_000.0
#: A queue feeder (period 10 s) whose broker stopped answering 31 s ago.
FEED_DOWN = FeedStatus("web", "redis://127.0.0.1:6379/0", "jobs", 10.0, "m:1", NOW - 600,
                       last_attempt=NOW - 1, last_ok=NOW - 31, failures=9,
                       error="redis: Connection refused")
INF = math.inf

# Nagios perfdata grammar: 'label'=value[UOM];[warn];[crit];[min];[max]
_NUM = r"-?[0-9]+(?:\.[0-9]+)?"
_RANGE = rf"@?(?:(?:~|{_NUM})?:)?(?:{_NUM})?"
_UOM = r"(?:s|ms|us|%|B|KB|MB|TB|c)?"
PERF_RE = re.compile(
    rf"'[^'=]+'=(?:{_NUM}{_UOM}|U)"
    rf"(?:;{_RANGE}(?:;{_RANGE}(?:;(?:{_NUM})?(?:;(?:{_NUM})?)?)?)?)?"
)
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


# --------------------------------------------------------------------------- fixtures


def healthy() -> Snapshot:
    """A fleet with nothing wrong: three live hosts, fenced guest with its fence, quorum."""
    hosts = tuple(
        HostObs(name, NOW - 10, "1.2.0", host_clock=NOW + 0.2, checker_clock=NOW)
        for name in ("h1", "h2", "h3")
    )
    return Snapshot(
        now=NOW,
        endpoints=(
            EndpointStatus("https://e1:2379", True, is_leader=True),
            EndpointStatus("https://e2:2379", True),
            EndpointStatus("https://e3:2379", True),
        ),
        member_count=3,
        hosts=hosts,
        guests=(
            GuestObs("u1", "web1", "h1", "running", fenced=True, volumes=("vol-web1",)),
            GuestObs("u2", "db1", "h2", "running"),
            GuestObs("u3", "old1", "h3", "stopped", fenced=True, volumes=("vol-old1",)),
        ),
        running=(RunReport("u1", "h1"), RunReport("u2", "h2")),
        fences=(FenceObs("vol-web1", "h1", "u1"),),
        intents=(IntentObs("h1", "i1", NOW - 5, "pending"), IntentObs("h2", "i2", 0.0, "done")),
        pools=(PoolObs("web", 2, 2),),
        manager_leader="h1",
        manager_since=NOW - 3600,
    )


def with_host(snap: Snapshot, name: str, **changes: object) -> Snapshot:
    """``snap`` with host ``name`` changed."""
    hosts = tuple(replace(h, **changes) if h.name == name else h for h in snap.hosts)
    return replace(snap, hosts=hosts)


def with_endpoint(snap: Snapshot, index: int, **changes: object) -> Snapshot:
    endpoints = list(snap.endpoints)
    endpoints[index] = replace(endpoints[index], **changes)
    return replace(snap, endpoints=tuple(endpoints))


def add(snap: Snapshot, field: str, *items: object) -> Snapshot:
    """``snap`` with ``items`` appended to tuple field ``field``."""
    return replace(snap, **{field: (*getattr(snap, field), *items)})


def verdicts(report: Report) -> set[tuple[str, Status, str]]:
    return {(f.code, f.severity, f.subject) for f in report.findings}


def messages(report: Report, code: str) -> list[str]:
    return [f.message for f in report.findings if f.code == code]


def perf_of(report: Report) -> dict[str, Perf]:
    return {p.label: p for p in report.perfdata}


# --------------------------------------------------------------------------- ranges

RANGE_CASES = [
    # text, start, end, inside
    ("10", 0, 10, False),
    ("10:", 10, INF, False),
    ("~:10", -INF, 10, False),
    ("10:20", 10, 20, False),
    ("@10:20", 10, 20, True),
    (":10", 0, 10, False),
    ("-5:5", -5, 5, False),
    ("~:", -INF, INF, False),
    ("0:", 0, INF, False),
    ("@~:0", -INF, 0, True),
    ("1.5", 0, 1.5, False),
    (".5:2.", 0.5, 2, False),
    (" 10 ", 0, 10, False),
    ("@5", 0, 5, True),
]


@pytest.mark.parametrize(("text", "start", "end", "inside"), RANGE_CASES)
def test_parse_range(text: str, start: float, end: float, inside: bool) -> None:
    assert parse_range(text) == Range(start, end, inside)


ALERT_CASES = [
    # straight from the guidelines' example table
    ("10", -1, True),
    ("10", 0, False),
    ("10", 10, False),
    ("10", 10.001, True),
    ("10:", 9.99, True),
    ("10:", 10, False),
    ("10:", 1e12, False),
    ("~:10", -1e12, False),
    ("~:10", 10, False),
    ("~:10", 10.5, True),
    ("10:20", 9, True),
    ("10:20", 10, False),
    ("10:20", 20, False),
    ("10:20", 21, True),
    ("@10:20", 9.9, False),
    ("@10:20", 10, True),
    ("@10:20", 15, True),
    ("@10:20", 20, True),
    ("@10:20", 20.1, False),
    ("~:", -1e300, False),
    ("10", math.nan, True),
]


@pytest.mark.parametrize(("text", "value", "alerts"), ALERT_CASES)
def test_range_alerts(text: str, value: float, alerts: bool) -> None:
    assert parse_range(text).alerts(value) is alerts


GRADE_CASES = [
    # the guidelines' command line examples: (warn, crit, value, status)
    ("10", "20", 15, Status.WARNING),
    ("10", "20", 25, Status.CRITICAL),
    ("10", "20", -1, Status.CRITICAL),
    ("10", "20", 5, Status.OK),
    ("~:10", "~:20", -1, Status.OK),
    ("10:", "20", 5, Status.WARNING),
    ("10:", "20", -1, Status.CRITICAL),
    (None, "1:", 0, Status.CRITICAL),
    ("~:0", "10", 1, Status.WARNING),
    (None, "5:6", 4, Status.CRITICAL),
    (None, "5:6", 5.5, Status.OK),
    (None, "@10:20", 15, Status.CRITICAL),
    (None, "@10:20", 25, Status.OK),
]


@pytest.mark.parametrize(("warn", "crit", "value", "status"), GRADE_CASES)
def test_grade(warn: str | None, crit: str, value: float, status: Status) -> None:
    warn_range = parse_range(warn) if warn else None
    assert grade(value, warn_range, parse_range(crit)) is status


BAD_RANGES = [
    "",
    " ",
    "@",
    ":",
    "~",
    "@:",
    "abc",
    "20:10",
    "@20:10",
    "-5",
    "1e3",
    "10:20:30",
    "@@1",
    "1 0",
    "10:~",
    "+5",
    "nan",
    "inf",
    "1,2",
    "5%",
    "--1",
    "1:\n2",
]


@pytest.mark.parametrize("text", BAD_RANGES)
def test_parse_range_rejects(text: str) -> None:
    with pytest.raises(CheckUsageError) as err:
        parse_range(text)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"invalid range {text!r}")


CANONICAL = [
    ("10", "10"),
    ("0:10", "10"),
    (":10", "10"),
    ("10:", "10:"),
    ("~:10", "~:10"),
    ("@10:20", "@10:20"),
    ("-5:5", "-5:5"),
    ("~:", "~:"),
    ("0:", "0:"),
    ("1.50", "1.5"),
    (".5", "0.5"),
    ("@0:0", "@0"),
    ("0.0000001", "0.0000001"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_range_canonical_text(text: str, canonical: str) -> None:
    assert str(parse_range(text)) == canonical


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@st.composite
def ranges(draw: st.DrawFn) -> Range:
    start = draw(st.one_of(finite, st.just(-INF)))
    end = draw(st.one_of(finite.filter(lambda e: e >= start), st.just(INF)))
    return Range(start, end, draw(st.booleans()))


@given(ranges())
def test_range_text_round_trips(rng: Range) -> None:
    assert parse_range(str(rng)) == rng
    assert re.fullmatch(_RANGE, str(rng))


@pytest.mark.parametrize(
    ("start", "end"), [(2, 1), (math.nan, 1), (0, math.nan), (INF, INF), (-INF, -INF)]
)
def test_range_rejects_bad_bounds(start: float, end: float) -> None:
    with pytest.raises(ValueError):
        Range(start, end)


FMT_CASES = [
    (0, "0"),
    (-0.0, "0"),
    (3.0, "3"),
    (12.5, "12.5"),
    (-0.25, "-0.25"),
    (1e-7, "0.0000001"),
    (1e20, "100000000000000000000"),
    (0.1, "0.1"),
]


@pytest.mark.parametrize(("value", "text"), FMT_CASES)
def test_fmt_number(value: float, text: str) -> None:
    assert fmt_number(value) == text


@pytest.mark.parametrize("value", [INF, -INF, math.nan])
def test_fmt_number_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError):
        fmt_number(value)


# --------------------------------------------------------------------------- every code


def test_healthy_snapshot_is_ok() -> None:
    report = evaluate(healthy())
    assert report.findings == ()
    assert report.status is Status.OK
    assert exit_code(report) == 0
    text = render_text(report)
    assert "\n" not in text
    assert text.startswith("GRIDTOOL OK: 3/3 hosts up, 2 guests running, 3/3 etcd endpoints")


Mutation = Callable[[Snapshot], Snapshot]

CODE_CASES: list[tuple[str, Mutation, str, Status, str, str]] = [
    # id, mutation, code, severity, subject, message fragment
    (
        "endpoint-down",
        lambda s: with_endpoint(s, 2, healthy=False, error="connection refused"),
        "ETCD_ENDPOINT_DOWN",
        Status.WARNING,
        "https://e3:2379",
        "https://e3:2379 unhealthy: connection refused",
    ),
    (
        "no-quorum",
        lambda s: replace(s, member_count=7),
        "ETCD_NO_QUORUM",
        Status.CRITICAL,
        "cluster",
        "only 3/7 etcd members healthy, quorum is 4",
    ),
    (
        "no-raft-leader",
        lambda s: with_endpoint(s, 0, is_leader=False),
        "ETCD_NO_QUORUM",
        Status.CRITICAL,
        "cluster",
        "no healthy etcd member is the raft leader",
    ),
    (
        "early-revocation",
        lambda s: with_endpoint(replace(s, fences=(FenceObs("vol-web1", "h1", "u1", ha=True),)),
                                1, version="3.4.23"),
        "ETCD_EARLY_REVOCATION",
        Status.WARNING,
        "cluster",
        "etcd 3.4.23 can revoke leases early (etcd issues 15247/12528, fixed in 3.4.31 and "
        "3.5.13): 1 HA guest rely on the timed self-fence",
    ),
    (
        "lease-lost",
        lambda s: with_host(s, "h2", lease=False),
        "HOST_LEASE_LOST",
        Status.CRITICAL,
        "h2",
        "host h2 lost its lease (1 guest unknown)",
    ),
    (
        "stale-warn",
        lambda s: with_host(s, "h2", last_report=NOW - 100),
        "HOST_STALE",
        Status.WARNING,
        "h2",
        "host h2 last reported 100s ago",
    ),
    (
        "stale-crit",
        lambda s: with_host(s, "h2", last_report=NOW - 301),
        "HOST_STALE",
        Status.CRITICAL,
        "h2",
        "last reported 301s ago",
    ),
    (
        "never-reported",
        lambda s: with_host(s, "h2", last_report=None),
        "HOST_STALE",
        Status.CRITICAL,
        "h2",
        "host h2 never reported",
    ),
    (
        "clock-warn",
        lambda s: with_host(s, "h3", host_clock=NOW + 10),
        "CLOCK_SKEW",
        Status.WARNING,
        "h3",
        "host h3 clock is off by 10s",
    ),
    (
        "clock-crit-behind",
        lambda s: with_host(s, "h3", host_clock=NOW - 40.5),
        "CLOCK_SKEW",
        Status.CRITICAL,
        "h3",
        "off by -40.5s",
    ),
    (
        "version-skew",
        lambda s: with_host(s, "h3", agent_version="1.1.0"),
        "AGENT_VERSION_SKEW",
        Status.WARNING,
        "h3",
        "host h3 runs agent 1.1.0, fleet majority is 1.2.0",
    ),
    (
        "double-run-reports",
        lambda s: add(s, "running", RunReport("u1", "h2")),
        "GUEST_DOUBLE_RUN",
        Status.CRITICAL,
        "web1",
        "guest web1 running on h1 and h2",
    ),
    (
        "double-run-record-and-report",
        lambda s: add(s, "running", RunReport("u2", "h3")),
        "GUEST_DOUBLE_RUN",
        Status.CRITICAL,
        "db1",
        "guest db1 running on h2 and h3",
    ),
    (
        "fence-absent",
        lambda s: replace(s, fences=()),
        "FENCE_MISSING",
        Status.CRITICAL,
        "web1",
        "guest web1 runs on h1 but volume vol-web1 has no fence",
    ),
    (
        "fence-wrong-holder",
        lambda s: replace(s, fences=(FenceObs("vol-web1", "h2", "u1"),)),
        "FENCE_MISSING",
        Status.CRITICAL,
        "web1",
        "volume vol-web1 has its fence held by h2",
    ),
    (
        "fence-other-guest",
        lambda s: replace(s, fences=(FenceObs("vol-web1", "h1", "u2"),)),
        "FENCE_MISSING",
        Status.CRITICAL,
        "web1",
        "volume vol-web1 is fenced for guest db1",
    ),
    (
        "fence-orphan",
        lambda s: add(s, "fences", FenceObs("vol-old1", "h3", "u3")),
        "FENCE_ORPHAN",
        Status.WARNING,
        "vol-old1",
        "fence on vol-old1 held by h3 for stopped guest old1",
    ),
    (
        "fence-orphan-unknown-guest",
        lambda s: add(s, "fences", FenceObs("vol-x", "h2", "u-gone")),
        "FENCE_ORPHAN",
        Status.WARNING,
        "vol-x",
        "for stopped guest u-gone",
    ),
    (
        "settings-left-behind",
        lambda s: add(s, "settings", SettingsObs("u-gone", "jobs-7")),
        "SETTINGS_ORPHAN",
        Status.WARNING,
        "u-gone",
        "settings of guest jobs-7 (u-gone) left behind",
    ),
    (
        "settings-left-behind-once-its-removal-is-done",
        lambda s: add(add(s, "settings", SettingsObs("u-gone", "jobs-7")), "intents",
                      IntentObs("h1", "i8", NOW - 5, "done", "u-gone")),
        "SETTINGS_ORPHAN",
        Status.WARNING,
        "u-gone",
        "no host reports it",
    ),
    (
        "intent-warn",
        lambda s: add(s, "intents", IntentObs("h2", "i9", NOW - 400, "pending")),
        "INTENT_STALE",
        Status.WARNING,
        "h2/i9",
        "intent i9 on host h2 pending for 400s",
    ),
    (
        "intent-crit",
        lambda s: add(s, "intents", IntentObs("h2", "i9", NOW - 4000, "pending")),
        "INTENT_STALE",
        Status.CRITICAL,
        "h2/i9",
        "pending for 4000s",
    ),
    (
        "intent-failed",
        lambda s: add(s, "intents", IntentObs("h3", "i7", NOW, "failed")),
        "INTENT_FAILED",
        Status.WARNING,
        "h3/i7",
        "intent i7 on host h3 failed",
    ),
    (
        "pool-short",
        lambda s: replace(s, pools=(PoolObs("web", 3, 1),)),
        "POOL_UNDERSIZE",
        Status.WARNING,
        "web",
        "pool web runs 1/3 members",
    ),
    (
        "pool-empty",
        lambda s: replace(s, pools=(PoolObs("web", 2, 0),)),
        "POOL_UNDERSIZE",
        Status.CRITICAL,
        "web",
        "pool web runs 0/2 members",
    ),
    (
        "pool-feed-stale",
        lambda s: replace(s, pools=(PoolObs("web", 2, 2, FEED_DOWN),)),
        "POOL_FEED_STALE",
        Status.WARNING,
        "web",
        "no reading of queue jobs on redis://127.0.0.1:6379/0 for 31s (size held): "
        "redis: Connection refused",
    ),
    (
        "no-manager",
        lambda s: replace(s, manager_leader=None, manager_since=NOW - 60),
        "MANAGER_NO_LEADER",
        Status.CRITICAL,
        "leader",
        "no manager leader for 60s",
    ),
    (
        "no-manager-ever",
        lambda s: replace(s, manager_leader="", manager_since=None),
        "MANAGER_NO_LEADER",
        Status.CRITICAL,
        "leader",
        "no manager leader",
    ),
    (
        "corrupt",
        lambda s: add(s, "corrupt", CorruptRecord("/gridtool/guests/u9", "bad json")),
        "REGISTRY_CORRUPT",
        Status.WARNING,
        "/gridtool/guests/u9",
        "undecodable record /gridtool/guests/u9: bad json",
    ),
    (
        "ha-guest-on-unprotected-host",
        lambda s: with_host(replace(s, fences=(FenceObs("vol-web1", "h1", "u1", ha=True),)),
                            "h1", protected=False),
        "HOST_HA_UNPROTECTED",
        Status.WARNING,
        "h1",
        "host h1 runs HA 1 guest (web1) with no working watchdog and no fencing",
    ),
    (
        "xen-toolstack-down",
        lambda s: with_host(s, "h1", unhealthy="Xen toolstack not answering: xl list -l: "
                                             "no answer in 10 s"),
        "HOST_UNHEALTHY",
        Status.CRITICAL,
        "h1",
        "host h1 is unhealthy: Xen toolstack not answering",
    ),
    (
        "fence-of-a-lost-host-failed",
        lambda s: replace(s, fence_failures=(FenceFailure(
            "h9", "power fence of h9 failed: fence agent hung on off: killed after 20.0 s"),)),
        "HOST_FENCE_FAILED",
        Status.CRITICAL,
        "h9",
        "power fence of h9 failed: fence agent hung on off",
    ),
    (
        "etcd-nospace-alarm",
        lambda s: replace(s, alarms=(AlarmObs("8e9e05c52164694d", "NOSPACE"),)),
        "ETCD_ALARM",
        Status.CRITICAL,
        "8e9e05c52164694d",
        "raised alarm NOSPACE: compact, defragment",
    ),
    (
        "etcd-db-near-quota",
        lambda s: with_endpoint(s, 1, db_size=int(0.9 * 2 * 1024**3)),
        "ETCD_DB_SIZE",
        Status.WARNING,
        "https://e2:2379",
        "DB is 1843.2 MiB, 90% of its 2048 MiB quota",
    ),
    (
        "fence-violation-seen",
        lambda s: replace(s, violations=(ViolationObs("h2", "web1", "vol-web1", "h1",
                                                      "paused", NOW - 60),)),
        "FENCE_VIOLATION",
        Status.CRITICAL,
        "h2/web1",
        "host h2 ran guest web1 without its fence on vol-web1 (held by h1; paused)",
    ),
    (
        "certificate-expires-soon",
        lambda s: replace(s, certs=(CertObs("/etc/gridtool/tls/ca.crt", "CN=gridtool CA",
                                            NOW + 20 * 86400),)),
        "CERT_EXPIRY",
        Status.WARNING,
        "/etc/gridtool/tls/ca.crt",
        "certificate /etc/gridtool/tls/ca.crt (CN=gridtool CA) expires in 20 days",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "code", "severity", "subject", "fragment"),
    [case[1:] for case in CODE_CASES],
    ids=[case[0] for case in CODE_CASES],
)
def test_each_code(
    mutate: Mutation, code: str, severity: Status, subject: str, fragment: str
) -> None:
    report = evaluate(mutate(healthy()))
    assert verdicts(report) == {(code, severity, subject)}
    assert any(fragment in m for m in messages(report, code))
    assert report.status is severity
    assert exit_code(report) == int(severity)


def test_code_cases_cover_every_code() -> None:
    assert {case[2] for case in CODE_CASES} == set(CODES)


NO_FINDING_CASES: list[tuple[str, Mutation]] = [
    ("pinned-guest-on-unprotected-host", lambda s: with_host(s, "h1", protected=False)),
    ("ha-guest-on-protected-host",
     lambda s: replace(s, fences=(FenceObs("vol-web1", "h1", "u1", ha=True),))),
    ("feed-read-within-3-periods", lambda s: replace(s, pools=(PoolObs("web", 2, 2, replace(
        FEED_DOWN, last_ok=NOW - 29, failures=0, error="")),))),
    ("feed-started-recently", lambda s: replace(s, pools=(PoolObs("web", 2, 2, replace(
        FEED_DOWN, started=NOW - 5, last_ok=0.0)),))),
    ("future-report-is-not-stale", lambda s: with_host(s, "h2", last_report=NOW + 50)),
    ("small-skew", lambda s: with_host(s, "h1", host_clock=NOW - 4.9)),
    ("no-clock-reading", lambda s: with_host(s, "h1", host_clock=None)),
    ("unknown-version", lambda s: with_host(s, "h3", agent_version="")),
    ("unfenced-guest-needs-no-fence", lambda s: replace(s, guests=s.guests[1:], fences=())),
    ("old-done-intent", lambda s: add(s, "intents", IntentObs("h1", "x", 0.0, "done"))),
    ("future-intent", lambda s: add(s, "intents", IntentObs("h1", "x", NOW + 500, "pending"))),
    ("pool-oversize", lambda s: replace(s, pools=(PoolObs("web", 2, 3),))),
    ("pool-zero-desired", lambda s: replace(s, pools=(PoolObs("web", 0, 0),))),
    ("fence-of-a-hibernated-warm-worker-is-no-orphan",
     lambda s: add(add(s, "fences", FenceObs("vol-old1", "h3", "u3")), "pools",
                   PoolObs("jobs", 1, 1, asleep=frozenset({"u3"})))),
    ("settings-of-a-reported-guest", lambda s: add(s, "settings", SettingsObs("u1", "web1"))),
    ("settings-of-a-stopped-guest", lambda s: add(s, "settings", SettingsObs("u3", "old1"))),
    ("settings-of-a-clone-being-made",
     lambda s: replace(add(s, "settings", SettingsObs("u-new", "jobs-8")),
                       clones=frozenset({"u-new"}))),
    ("settings-of-a-pool-member",
     lambda s: add(add(s, "settings", SettingsObs("u-new", "jobs-8")), "pools",
                   PoolObs("jobs", 1, 1, members=frozenset({"u-new"})))),
    ("settings-of-a-guest-an-intent-is-defining",
     lambda s: add(add(s, "settings", SettingsObs("u-new", "db2")), "intents",
                   IntentObs("h1", "i7", NOW - 1, "running", "u-new"))),
    (
        "leader-among-unlisted-members",
        lambda s: replace(with_endpoint(s, 0, is_leader=False), member_count=5),
    ),
]


@pytest.mark.parametrize(
    "mutate", [c[1] for c in NO_FINDING_CASES], ids=[c[0] for c in NO_FINDING_CASES]
)
def test_no_finding(mutate: Mutation) -> None:
    report = evaluate(mutate(healthy()))
    assert report.findings == ()
    assert exit_code(report) == 0


@pytest.mark.parametrize(
    "changes",
    [{"last_report": 0.0}, {"host_clock": NOW + 99}, {"agent_version": "0.1"}],
    ids=["not-also-stale", "clock-not-judged", "version-not-judged"],
)
def test_lost_host_is_only_reported_as_lost(changes: dict[str, object]) -> None:
    report = evaluate(with_host(healthy(), "h3", lease=False, **changes))
    assert verdicts(report) == {("HOST_LEASE_LOST", Status.CRITICAL, "h3")}


def test_unhealthy_leader_means_no_quorum() -> None:
    report = evaluate(with_endpoint(healthy(), 0, healthy=False))
    assert verdicts(report) == {
        ("ETCD_NO_QUORUM", Status.CRITICAL, "cluster"),
        ("ETCD_ENDPOINT_DOWN", Status.WARNING, "https://e1:2379"),
    }
    assert report.findings[0].code == "ETCD_NO_QUORUM"


def test_run_reports_of_lost_hosts_are_stale() -> None:
    snap = add(with_host(healthy(), "h2", lease=False), "running", RunReport("u1", "h2"))
    assert verdicts(evaluate(snap)) == {("HOST_LEASE_LOST", Status.CRITICAL, "h2")}


def test_lease_lost_strands_guests_without_orphaning_fences() -> None:
    snap = with_host(healthy(), "h1", lease=False)
    snap = replace(snap, running=(RunReport("u2", "h2"),))
    report = evaluate(snap)
    assert verdicts(report) == {("HOST_LEASE_LOST", Status.CRITICAL, "h1")}
    assert messages(report, "HOST_LEASE_LOST") == ["host h1 lost its lease (1 guest unknown)"]
    perf = perf_of(report)
    assert (perf["hosts_up"].value, perf["hosts_lost"].value) == (2, 1)
    assert perf["guests_unknown"].value == 1
    assert perf["guests_running"].value == 1


def test_guest_running_elsewhere_is_not_unknown() -> None:
    snap = add(with_host(healthy(), "h1", lease=False), "running", RunReport("u1", "h3"))
    snap = replace(snap, fences=(FenceObs("vol-web1", "h3", "u1"),))
    report = evaluate(snap)
    assert verdicts(report) == {("HOST_LEASE_LOST", Status.CRITICAL, "h1")}
    assert perf_of(report)["guests_unknown"].value == 0


def test_guest_state_unknown_counts_as_unknown() -> None:
    guests = (*healthy().guests, GuestObs("u4", "cache1", "h2", "unknown"))
    report = evaluate(replace(healthy(), guests=guests))
    assert perf_of(report)["guests_unknown"].value == 1


def test_version_majority_tie_prefers_newest_numerically() -> None:
    snap = with_host(healthy(), "h1", agent_version="1.10.0")
    snap = replace(snap, hosts=snap.hosts[:2])
    snap = with_host(snap, "h2", agent_version="1.9.0")
    report = evaluate(snap)
    assert messages(report, "AGENT_VERSION_SKEW") == [
        "host h2 runs agent 1.9.0, fleet majority is 1.10.0"
    ]


def test_double_run_lists_three_hosts_and_fence_holder_is_accepted() -> None:
    snap = add(healthy(), "running", RunReport("u1", "h3"), RunReport("u1", "h2"))
    report = evaluate(snap)
    assert messages(report, "GUEST_DOUBLE_RUN") == ["guest web1 running on h1, h2 and h3"]
    assert messages(report, "FENCE_MISSING") == []


def test_duplicate_fence_records_accept_the_right_one() -> None:
    fences = (FenceObs("vol-web1", "h2", "u2"), FenceObs("vol-web1", "h1", "u1"))
    assert evaluate(replace(healthy(), fences=fences)).findings == ()


def test_each_missing_volume_fence_is_reported() -> None:
    guests = list(healthy().guests)
    guests[0] = replace(guests[0], volumes=("vol-web1", "vol-web1-data", "vol-web1-log"))
    report = evaluate(replace(healthy(), guests=tuple(guests)))
    assert len(messages(report, "FENCE_MISSING")) == 2


def test_quorum_uses_endpoint_count_without_member_count() -> None:
    snap = with_endpoint(replace(healthy(), member_count=0), 1, healthy=False)
    assert evaluate(snap).status is Status.WARNING
    snap = with_endpoint(snap, 2, healthy=False)
    assert messages(evaluate(snap), "ETCD_NO_QUORUM") == [
        "only 1/3 etcd members healthy, quorum is 2"
    ]


def test_empty_snapshot_is_critical() -> None:
    report = evaluate(Snapshot(now=NOW))
    assert {f.code for f in report.findings} == {"ETCD_NO_QUORUM", "MANAGER_NO_LEADER"}
    assert exit_code(report) == 2


# --------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], Status.OK),
        ([Status.OK], Status.OK),
        ([Status.OK, Status.UNKNOWN], Status.UNKNOWN),
        ([Status.UNKNOWN, Status.WARNING], Status.WARNING),
        ([Status.WARNING, Status.UNKNOWN, Status.OK], Status.WARNING),
        ([Status.CRITICAL, Status.UNKNOWN], Status.CRITICAL),
        ([Status.WARNING, Status.CRITICAL, Status.OK], Status.CRITICAL),
    ],
)
def test_worst(statuses: list[Status], expected: Status) -> None:
    assert worst(statuses) is expected


def test_worst_finding_wins_and_leads() -> None:
    snap = add(healthy(), "running", RunReport("u1", "h2"))
    snap = with_host(with_host(snap, "h3", last_report=NOW - 100), "h2", agent_version="1.3")
    report = evaluate(snap)
    assert report.status is Status.CRITICAL
    assert [f.severity for f in report.findings] == [
        Status.CRITICAL,
        Status.WARNING,
        Status.WARNING,
    ]
    first = render_text(report).split("\n")[0]
    assert first.startswith(
        "GRIDTOOL CRITICAL: 1 critical, 2 warnings: guest web1 running on h1 and h2 | "
    )


def test_status_line_counts_unknown() -> None:
    findings = (
        Finding("CHECK_ERROR", Status.UNKNOWN, "check", "x", "probe failed"),
        Finding("HOST_STALE", Status.WARNING, "host", "h1", "host h1 last reported 99s ago"),
    )
    report = Report(findings=findings)
    assert report.status is Status.WARNING
    assert (
        render_text(report).split("\n")[0] == "GRIDTOOL WARNING: 1 warning, 1 unknown: probe failed"
    )


def test_unknown_report() -> None:
    report = unknown_report("invalid range 'x'\nsecond | line")
    assert report.status is Status.UNKNOWN
    assert exit_code(report) == 3
    assert report.perfdata == ()
    assert render_text(report).split("\n") == [
        "GRIDTOOL UNKNOWN: invalid range 'x' second / line",
        "UNKNOWN CHECK_ERROR: invalid range 'x' second / line",
    ]
    assert render_json(report)["findings"][0]["code"] == "CHECK_ERROR"
    assert unknown_report("").findings[0].message == "check failed"


def test_unreachable_report_is_critical_not_unknown() -> None:
    endpoints = [
        EndpointStatus("https://e1:2379", False, error="timeout"),
        EndpointStatus("https://e2:2379", False),
    ]
    report = unreachable_report("all endpoints timed out", endpoints)
    assert exit_code(report) == 2
    lines = render_text(report).split("\n")
    head = "GRIDTOOL CRITICAL: 1 critical, 2 warnings: etcd registry unreachable: all endpoints"
    assert lines[0] == head[: STATUS_TEXT_MAX - 3] + "... | 'etcd_endpoints_healthy'=0;;;0;2"
    assert lines[1:] == [
        "CRITICAL ETCD_UNREACHABLE: etcd registry unreachable: all endpoints timed out",
        "WARNING ETCD_ENDPOINT_DOWN: etcd endpoint https://e1:2379 unhealthy: timeout",
        "WARNING ETCD_ENDPOINT_DOWN: etcd endpoint https://e2:2379 unhealthy",
    ]
    assert render_text(unreachable_report("")).startswith(
        "GRIDTOOL CRITICAL: etcd registry unreachable | "
    )


# --------------------------------------------------------------------------- perfdata


def perf_items(report: Report) -> list[str]:
    first = render_text(report).split("\n")[0]
    _, sep, perf = first.partition(" | ")
    assert sep
    return perf.split(" ")


def test_perfdata_labels_and_format() -> None:
    snap = with_host(healthy(), "h2", last_report=NOW - 42.25, host_clock=NOW - 7)
    report = evaluate(snap)
    items = perf_items(report)
    for item in items:
        assert PERF_RE.fullmatch(item), item
        assert not item.endswith(";")
    assert [item.split("=")[0] for item in items] == [
        "'hosts_up'",
        "'hosts_lost'",
        "'guests_running'",
        "'guests_unknown'",
        "'fences_held'",
        "'findings'",
        "'pools_undersized'",
        "'oldest_report_age'",
        "'max_clock_skew'",
        "'etcd_endpoints_healthy'",
        "'etcd_db_size'",
        "'violations'",
    ]
    assert items[0] == "'hosts_up'=3;;;0;3"
    assert items[5] == "'findings'=1;;;0"
    assert items[7] == "'oldest_report_age'=42.25s;90;300;0"
    assert items[8] == "'max_clock_skew'=-7s;-5:5;-30:30"
    assert items[9] == "'etcd_endpoints_healthy'=3;;;0;3"
    # RRD only keeps 19 characters of a label: they must still tell the labels apart
    assert len({item.split("=")[0][1:20] for item in items}) == len(items)


def test_perfdata_unknown_values_are_U() -> None:
    snap = replace(healthy(), hosts=(HostObs("h1", None),))
    items = perf_items(evaluate(snap))
    assert "'oldest_report_age'=U;90;300;0" in items
    assert "'max_clock_skew'=U;-5:5;-30:30" in items


def test_perfdata_thresholds_follow_params() -> None:
    params = build_params(warn=["report_age=@10:20"], crit=["clock_skew=~:3"])
    items = perf_items(evaluate(healthy(), params))
    assert "'oldest_report_age'=10s;@10:20;300;0" in items
    assert "'max_clock_skew'=0.2s;-5:5;~:3" in items
    assert "'findings'=3;;;0" in items


def test_perf_str_and_validation() -> None:
    assert str(Perf("x", 1.5, "ms", Range(end=2), None, 0, 10)) == "'x'=1.5ms;2;;0;10"
    assert str(Perf("x", None, "s")) == "'x'=U"
    assert str(Perf("x", math.nan, "%")) == "'x'=U"
    assert str(Perf("x", -0.5)) == "'x'=-0.5"
    for label in ("", "a=b", "it's", "a\nb"):
        with pytest.raises(ValueError):
            Perf(label, 1)
    with pytest.raises(ValueError):
        Perf("x", 1, "furlongs")


# --------------------------------------------------------------------------- ignore


def test_ignore_drops_findings_and_counts_them() -> None:
    snap = with_host(with_host(healthy(), "h2", last_report=NOW - 100), "h3", last_report=0.0)
    params = build_params(ignore=["host_stale"])
    report = evaluate(snap, params)
    assert report.findings == ()
    assert report.status is Status.OK
    assert report.ignored == (("HOST_STALE", 2),)
    assert render_json(report)["ignored"] == {"HOST_STALE": 2}
    assert perf_of(report)["findings"].value == 0


def test_ignore_keeps_other_codes() -> None:
    snap = add(
        with_host(healthy(), "h2", last_report=NOW - 100), "corrupt", CorruptRecord("k", "e")
    )
    report = evaluate(snap, CheckParams(ignore=frozenset({"REGISTRY_CORRUPT"})))
    assert {f.code for f in report.findings} == {"HOST_STALE"}


def test_parse_ignore_accepts_repeats_commas_and_case() -> None:
    codes = parse_ignore(["host_stale, clock_skew", "POOL_UNDERSIZE", ""])
    assert codes == frozenset({"HOST_STALE", "CLOCK_SKEW", "POOL_UNDERSIZE"})
    assert parse_ignore([]) == frozenset()


def test_parse_ignore_rejects_unknown_code_listing_valid_ones() -> None:
    with pytest.raises(CheckUsageError) as err:
        parse_ignore(["HOST_STALE", "BOGUS"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown check code 'BOGUS'; valid codes: ")
    listed = message.split("valid codes: ")[1].split(", ")
    assert listed == sorted(IGNORABLE_CODES)


@pytest.mark.parametrize("code", ["GUEST_DOUBLE_RUN", "ETCD_UNREACHABLE", "CHECK_ERROR"])
def test_some_codes_cannot_be_ignored(code: str) -> None:
    with pytest.raises(CheckUsageError):
        parse_ignore([code])
    with pytest.raises(CheckUsageError):
        CheckParams(ignore=frozenset({code}))
    assert code not in IGNORABLE_CODES


def test_ignorable_codes_are_all_codes_but_double_run() -> None:
    assert set(CODES) - IGNORABLE_CODES == {"GUEST_DOUBLE_RUN"}


# --------------------------------------------------------------------------- thresholds


def test_default_thresholds_are_period_multiples() -> None:
    params = CheckParams()
    assert params.report_age_warn == Range(end=3 * AGENT_REPORT_PERIOD_S)
    assert params.report_age_crit == Range(end=10 * AGENT_REPORT_PERIOD_S)
    assert CheckParams.for_period(10).report_age_warn == Range(end=30)
    assert build_params(report_period_s=10) == CheckParams.for_period(10)
    for period in (0, -30, math.nan, INF):
        with pytest.raises(CheckUsageError):
            CheckParams.for_period(period)


def test_warn_and_crit_override_thresholds() -> None:
    snap = with_host(healthy(), "h2", last_report=NOW - 70)
    assert evaluate(snap).findings == ()
    assert evaluate(snap, build_params(warn=["report_age=60"])).status is Status.WARNING
    params = build_params(warn=["report_age=30"], crit=["report_age=60,clock_skew=-1:1"])
    report = evaluate(snap, params)
    assert verdicts(report) == {("HOST_STALE", Status.CRITICAL, "h2")}
    assert params.clock_skew_crit == Range(-1, 1)


def test_intent_age_threshold() -> None:
    snap = add(healthy(), "intents", IntentObs("h1", "i5", NOW - 30, "pending"))
    params = apply_thresholds(CheckParams(), crit=["intent_age=20"])
    assert verdicts(evaluate(snap, params)) == {("INTENT_STALE", Status.CRITICAL, "h1/i5")}


@pytest.mark.parametrize(
    ("spec", "start"),
    [
        ("report_age", "invalid threshold 'report_age': expected KEY=RANGE"),
        ("bogus=10", "invalid threshold 'bogus=10': expected KEY=RANGE"),
        ("=10", "invalid threshold '=10'"),
        ("report_age=abc", "invalid range 'abc'"),
        ("clock_skew=5:1", "invalid range '5:1': start is greater than end"),
    ],
)
def test_bad_threshold_spec(spec: str, start: str) -> None:
    with pytest.raises(CheckUsageError) as err:
        build_params(warn=[spec])
    assert str(err.value).startswith(start)
    assert "\n" not in str(err.value)


def test_parse_threshold_normalises_key() -> None:
    assert parse_threshold(" Report_Age = @1:2 ") == ("report_age", Range(1, 2, True))


# --------------------------------------------------------------------------- rendering


def test_detail_lines_one_per_finding_with_code() -> None:
    snap = with_host(replace(healthy(), fences=()), "h3", agent_version="1.0")
    report = evaluate(snap)
    lines = render_text(report).split("\n")
    assert lines[1:] == [
        "CRITICAL FENCE_MISSING: guest web1 runs on h1 but volume vol-web1 has no fence",
        "WARNING AGENT_VERSION_SKEW: host h3 runs agent 1.0, fleet majority is 1.2.0",
    ]


def test_status_text_is_clipped_but_details_are_not() -> None:
    long_name = "guest-" + "x" * 120
    guests = (GuestObs("u1", long_name, "h1", "running"),)
    snap = add(replace(healthy(), guests=guests), "running", RunReport("u1", "h2"))
    lines = render_text(evaluate(snap)).split("\n")
    head = lines[0].split(" | ")[0]
    assert len(head) == STATUS_TEXT_MAX
    assert head.endswith("...")
    assert lines[1] == f"CRITICAL GUEST_DOUBLE_RUN: guest {long_name} running on h1 and h2"


def test_hostile_names_cannot_break_the_output() -> None:
    guests = (GuestObs("u1", "web|1\nOK\u2028x", "h1", "running"),)
    snap = add(replace(healthy(), guests=guests), "running", RunReport("u1", "h2"))
    text = render_text(evaluate(snap))
    lines = text.split("\n")
    assert text.splitlines() == lines
    assert len(lines) == 2
    assert lines[0].count("|") == 1
    assert "|" not in lines[1]
    assert "guest web/1 OK x running" in lines[1]


def test_findings_are_frozen_and_cleaned() -> None:
    finding = Finding("HOST_STALE", Status.WARNING, "host", "a|b", "x\ty")
    assert (finding.subject, finding.message) == ("a/b", "x y")
    with pytest.raises(FrozenInstanceError):
        finding.code = "OTHER"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        healthy().now = 0  # type: ignore[misc]


# --------------------------------------------------------------------------- json


def test_json_shape() -> None:
    report = evaluate(with_host(healthy(), "h2", last_report=NOW - 100))
    doc = render_json(report)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert set(doc) == {"v", "status", "exit_code", "summary", "findings", "perfdata", "ignored"}
    assert (doc["v"], doc["status"], doc["exit_code"]) == (1, "WARNING", 1)
    assert doc["summary"] == "host h2 last reported 100s ago"
    assert doc["findings"] == [
        {
            "code": "HOST_STALE",
            "severity": "WARNING",
            "kind": "host",
            "subject": "h2",
            "message": "host h2 last reported 100s ago",
        }
    ]
    assert doc["perfdata"][7] == {
        "label": "oldest_report_age",
        "value": 100.0,
        "uom": "s",
        "warn": "90",
        "crit": "300",
        "min": 0,
        "max": None,
    }
    assert doc["ignored"] == {}


def test_json_ok_and_unknown_values() -> None:
    doc = render_json(evaluate(replace(healthy(), hosts=())))
    assert (doc["status"], doc["exit_code"], doc["findings"]) == ("OK", 0, [])
    assert doc["summary"] == "0/0 hosts up, 2 guests running, 3/3 etcd endpoints healthy"
    by_label = {p["label"]: p for p in doc["perfdata"]}
    assert by_label["oldest_report_age"]["value"] is None
    assert render_json(unknown_report("boom"))["status"] == "UNKNOWN"


# --------------------------------------------------------------------------- purity


#: The health package's shell modules (they read the registry); every other one is pure.
SHELL = {"collect.py", "metrics.py"}
PURE = sorted(p.name for p in Path(health.__file__).parent.glob("*.py") if p.name not in SHELL)


@pytest.mark.parametrize("module", PURE)
def test_module_imports_only_pure_stdlib(module: str) -> None:
    tree = ast.parse((Path(health.__file__).parent / module).read_text())
    imported = {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    pure = {"__future__", "collections", "dataclasses", "decimal", "enum", "math", "re", "typing"}
    assert {name.split(".")[0] for name in imported} - {"gridtool"} <= pure
    assert {name for name in imported if name.split(".")[0] == "gridtool"} <= \
        pure_set(set(product_modules()))  # the product's pure core (test_architecture)


# --------------------------------------------------------------------------- properties

hostnames = st.one_of(st.sampled_from(["h1", "h2", "h3"]), st.text(max_size=6))
uuids = st.one_of(st.sampled_from(["u1", "u2", "u3"]), st.text(max_size=4))
volumes = st.one_of(st.sampled_from(["v1", "v2"]), st.text(max_size=4))
any_time = st.one_of(st.floats(NOW - 5000, NOW + 100), st.floats())
opt_time = st.one_of(st.none(), any_time)
small = st.integers(-2, 6)


def tuples(strategy: st.SearchStrategy, size: int = 4) -> st.SearchStrategy:
    return st.lists(strategy, max_size=size).map(tuple)


snapshots = st.builds(
    Snapshot,
    now=st.one_of(st.just(NOW), st.floats()),
    endpoints=tuples(
        st.builds(
            EndpointStatus, st.text(max_size=8), st.booleans(), st.booleans(), st.text(max_size=8)
        )
    ),
    member_count=small,
    hosts=tuples(
        st.builds(
            HostObs,
            hostnames,
            opt_time,
            st.one_of(st.sampled_from(["", "1.0", "1.10", "2.0-rc1"]), st.text(max_size=5)),
            opt_time,
            opt_time,
            st.booleans(),
        )
    ),
    guests=tuples(
        st.builds(
            GuestObs,
            uuids,
            st.text(max_size=6),
            st.one_of(st.none(), hostnames),
            st.sampled_from(["running", "stopped", "unknown", "paused"]),
            st.booleans(),
            tuples(volumes, 3),
        )
    ),
    running=tuples(st.builds(RunReport, uuids, hostnames)),
    fences=tuples(st.builds(FenceObs, volumes, hostnames, uuids)),
    intents=tuples(
        st.builds(
            IntentObs,
            hostnames,
            st.text(max_size=4),
            any_time,
            st.sampled_from(["pending", "done", "failed", "?"]),
        )
    ),
    pools=tuples(st.builds(PoolObs, st.text(max_size=4), small, small)),
    manager_leader=st.one_of(st.none(), st.text(max_size=4)),
    manager_since=opt_time,
    corrupt=tuples(st.builds(CorruptRecord, st.text(max_size=8), st.text(max_size=12)), 2),
)

params_strategy = st.builds(
    CheckParams,
    report_age_warn=ranges(),
    report_age_crit=ranges(),
    clock_skew_warn=ranges(),
    clock_skew_crit=ranges(),
    intent_age_warn=ranges(),
    intent_age_crit=ranges(),
    ignore=st.frozensets(st.sampled_from(sorted(IGNORABLE_CODES))),
)


@settings(max_examples=150, deadline=None)
@given(snapshots, st.one_of(st.just(CheckParams()), params_strategy))
def test_any_snapshot_renders_a_valid_plugin_output(snap: Snapshot, params: CheckParams) -> None:
    report = evaluate(snap, params)
    code = exit_code(report)
    assert code in {0, 1, 2, 3}
    assert code == int(worst(f.severity for f in report.findings))
    assert not {f.code for f in report.findings} & params.ignore

    text = render_text(report)
    first, *details = text.split("\n")
    assert first.startswith(f"GRIDTOOL {report.status.name}")
    assert not set(first) & set(LINE_BREAKS)
    assert text.splitlines() == [first, *details]
    assert len(details) == len(report.findings)
    assert first.count("|") == 1
    assert not any("|" in line for line in details)
    assert all(PERF_RE.fullmatch(item) for item in perf_items(report))

    doc = render_json(report)
    json.dumps(doc, allow_nan=False)
    assert (doc["status"], doc["exit_code"]) == (report.status.name, code)
    assert evaluate(snap, params) == report


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), tuples(st.builds(EndpointStatus, st.text(max_size=8), st.just(False))))
def test_fallback_reports_are_valid(error: str, endpoints: tuple[EndpointStatus, ...]) -> None:
    for report, status in (
        (unknown_report(error), Status.UNKNOWN),
        (unreachable_report(error, endpoints), Status.CRITICAL),
    ):
        first = render_text(report).split("\n")[0]
        assert exit_code(report) == int(status)
        assert first.startswith(f"GRIDTOOL {status.name}")
        assert not set(first) & set(LINE_BREAKS)
        json.dumps(render_json(report), allow_nan=False)


def test_early_revocation_needs_both_an_affected_etcd_and_ha_guests() -> None:
    """A fixed etcd, or only pinned guests (no lease to lose), says nothing."""
    ha = replace(healthy(), fences=(FenceObs("vol-web1", "h1", "u1", ha=True),))
    pinned = replace(healthy(), fences=(FenceObs("vol-web1", "h1", "u1"),))
    for snap in (with_endpoint(ha, 0, version="3.5.13"),
                 with_endpoint(pinned, 0, version="3.4.23"),
                 with_endpoint(with_endpoint(ha, 0, version="3.4.23"), 0, healthy=False)):
        assert "ETCD_EARLY_REVOCATION" not in {f.code for f in evaluate(snap).findings}
