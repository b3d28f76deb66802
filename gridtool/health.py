"""Pure health-check verdicts for ``gridtool check``, following the Nagios plugin guidelines.

Functional core: the shell collects a :class:`Snapshot` (plain frozen data, time passed in as
``now``), calls :func:`evaluate`, prints :func:`render_text` or :func:`render_json` and exits
with :func:`exit_code`. Nothing here does I/O or reads a clock.

Conventions (monitoring-plugins development guidelines):

* exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; statuses combine worst-first with
  OK < UNKNOWN < WARNING < CRITICAL, so a real problem is never hidden behind UNKNOWN;
* UNKNOWN is for bad arguments and internal failures only (:func:`unknown_report`); an
  unreachable registry is a CRITICAL fact about the service (:func:`unreachable_report`);
* output is ``GRIDTOOL STATUS: text | perfdata`` then one detail line per finding;
* perfdata items are ``'label'=value[UOM];warn;crit;min;max`` with thresholds in range syntax.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import IntEnum
from typing import Any

JSON_VERSION = 1
PLUGIN_NAME = "GRIDTOOL"
STATUS_TEXT_MAX = 80
"""Longest status line before the perfdata (guidelines: keep it under 80 for pagers)."""

AGENT_REPORT_PERIOD_S = 30.0
"""Agent resync/report period that the default thresholds are multiples of."""


class Status(IntEnum):
    """Nagios service state; the value is the plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


_RANK = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    """Worst of ``statuses`` (OK < UNKNOWN < WARNING < CRITICAL); OK when empty."""
    return max(statuses, key=_RANK.__getitem__, default=Status.OK)


CODES: Mapping[str, str] = {
    "ETCD_ENDPOINT_DOWN": "an etcd endpoint is unreachable or unhealthy",
    "ETCD_NO_QUORUM": "too few healthy etcd members for quorum, or no raft leader",
    "HOST_LEASE_LOST": "a registered host has no live lease; its guests are unknown",
    "HOST_STALE": "a live host has not reported within the report_age thresholds",
    "CLOCK_SKEW": "a host clock differs from the checker's beyond clock_skew",
    "AGENT_VERSION_SKEW": "a live host runs another agent version than the fleet majority",
    "GUEST_DOUBLE_RUN": "a guest is running on two or more hosts (always CRITICAL)",
    "FENCE_MISSING": "a fenced guest is running without holding its volume fence",
    "FENCE_ORPHAN": "a fence is held for a guest that is not running",
    "INTENT_STALE": "a pending intent is older than the intent_age thresholds",
    "INTENT_FAILED": "an intent failed and is still recorded",
    "POOL_UNDERSIZE": "a worker pool runs fewer members than desired",
    "MANAGER_NO_LEADER": "no manager holds the leader election",
    "REGISTRY_CORRUPT": "a registry record could not be decoded",
}
"""Stable finding codes produced by :func:`evaluate`, with their meaning."""

SPECIAL_CODES: Mapping[str, str] = {
    "ETCD_UNREACHABLE": "no etcd endpoint could be reached (CRITICAL)",
    "CHECK_ERROR": "the check itself failed or was misused (UNKNOWN)",
}
"""Codes of the reports built without a snapshot."""

UNIGNORABLE = frozenset({"GUEST_DOUBLE_RUN", *SPECIAL_CODES})
"""Codes ``--ignore`` refuses: a double run risks disk corruption; specials have no snapshot."""
IGNORABLE_CODES = frozenset(CODES) - UNIGNORABLE

THRESHOLDS: Mapping[str, str] = {
    "report_age": "seconds since a live host last reported",
    "clock_skew": "host clock minus checker clock, in seconds (signed)",
    "intent_age": "seconds a pending intent has been waiting",
}
"""Metric names accepted by ``--warn KEY=RANGE`` / ``--crit KEY=RANGE``."""


class CheckUsageError(ValueError):
    """Invalid check argument; ``str()`` is a one-line message (report it as UNKNOWN)."""


# --------------------------------------------------------------------------- ranges


def fmt_number(value: float) -> str:
    """Render a finite number in plain decimal (class ``[-0-9.]``), shortest exact form."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class Range:
    """Nagios range: alert when the value is outside [start, end], or inside if ``inside``."""

    start: float = 0.0
    end: float = math.inf
    inside: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.start) or math.isnan(self.end) or self.start > self.end:
            raise ValueError(f"bad range bounds {self.start!r}..{self.end!r}")
        if self.start == math.inf or self.end == -math.inf:
            raise ValueError(f"bad range bounds {self.start!r}..{self.end!r}")

    def alerts(self, value: float) -> bool:
        """True when ``value`` raises an alert (NaN always alerts for an outside range)."""
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def __str__(self) -> str:
        at = "@" if self.inside else ""
        start = "~" if self.start == -math.inf else fmt_number(self.start)
        if self.end == math.inf:
            return f"{at}{start}:"
        if self.start == 0:
            return f"{at}{fmt_number(self.end)}"
        return f"{at}{start}:{fmt_number(self.end)}"


_NUM = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE_RE = re.compile(rf"(?P<at>@?)(?:(?P<start>~|{_NUM})?(?P<colon>:))?(?P<end>{_NUM})?")
_RANGE_HINT = "expected [@][start:]end as in 10, 10:, ~:10, 10:20, @10:20"


def parse_range(text: str) -> Range:
    """Parse Nagios range syntax; raise :class:`CheckUsageError` with a one-line message."""
    match = _RANGE_RE.fullmatch(text.strip())
    if match is None or not re.search(r"[0-9~]", text):
        raise CheckUsageError(f"invalid range {text!r}: {_RANGE_HINT}")
    raw_start, raw_end = match["start"], match["end"]
    start = -math.inf if raw_start == "~" else float(raw_start or 0)
    end = float(raw_end) if raw_end is not None else math.inf
    if start > end:
        raise CheckUsageError(f"invalid range {text!r}: start is greater than end")
    return Range(start, end, inside=bool(match["at"]))


def grade(value: float, warn: Range | None, crit: Range | None) -> Status:
    """Nagios get_status: CRITICAL if ``crit`` alerts, else WARNING if ``warn`` alerts."""
    if crit is not None and crit.alerts(value):
        return Status.CRITICAL
    if warn is not None and warn.alerts(value):
        return Status.WARNING
    return Status.OK


# --------------------------------------------------------------------------- parameters


def _period_defaults(period_s: float) -> dict[str, Range]:
    """Default thresholds as multiples of the agent report period."""
    return {
        "report_age_warn": Range(end=3 * period_s),
        "report_age_crit": Range(end=10 * period_s),
        "clock_skew_warn": Range(-period_s / 6, period_s / 6),
        "clock_skew_crit": Range(-period_s, period_s),
        "intent_age_warn": Range(end=10 * period_s),
        "intent_age_crit": Range(end=60 * period_s),
    }


_DEFAULTS = _period_defaults(AGENT_REPORT_PERIOD_S)


def _check_ignorable(codes: Iterable[str]) -> None:
    """Raise :class:`CheckUsageError` unless every code may be ignored."""
    for code in codes:
        if code in UNIGNORABLE:
            raise CheckUsageError(f"code {code} cannot be ignored")
        if code not in IGNORABLE_CODES:
            valid = ", ".join(sorted(IGNORABLE_CODES))
            raise CheckUsageError(f"unknown check code {code!r}; valid codes: {valid}")


@dataclass(frozen=True)
class CheckParams:
    """Thresholds and ignored codes. Defaults assume a 30 s agent report period."""

    report_age_warn: Range = _DEFAULTS["report_age_warn"]
    report_age_crit: Range = _DEFAULTS["report_age_crit"]
    clock_skew_warn: Range = _DEFAULTS["clock_skew_warn"]
    clock_skew_crit: Range = _DEFAULTS["clock_skew_crit"]
    intent_age_warn: Range = _DEFAULTS["intent_age_warn"]
    intent_age_crit: Range = _DEFAULTS["intent_age_crit"]
    ignore: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check_ignorable(self.ignore)

    @classmethod
    def for_period(cls, report_period_s: float) -> CheckParams:
        """Defaults for another agent report period (stale = 3x, critical = 10x, ...)."""
        if not (math.isfinite(report_period_s) and report_period_s > 0):
            raise CheckUsageError(f"invalid report period {report_period_s!r}: must be > 0")
        return cls(**_period_defaults(report_period_s))


def _split_items(values: Iterable[str]) -> Iterator[str]:
    """Items of repeated and/or comma-separated option values, blanks dropped."""
    for value in values:
        yield from (item.strip() for item in value.split(",") if item.strip())


def parse_threshold(spec: str) -> tuple[str, Range]:
    """Parse ``KEY=RANGE`` (e.g. ``report_age=120``) into a threshold key and range."""
    key, sep, text = spec.partition("=")
    key = key.strip().lower()
    if not sep or key not in THRESHOLDS:
        keys = ", ".join(sorted(THRESHOLDS))
        raise CheckUsageError(f"invalid threshold {spec!r}: expected KEY=RANGE, KEY one of {keys}")
    return key, parse_range(text)


def apply_thresholds(
    params: CheckParams, warn: Iterable[str] = (), crit: Iterable[str] = ()
) -> CheckParams:
    """Return ``params`` with ``--warn``/``--crit`` ``KEY=RANGE[,KEY=RANGE]`` values applied."""
    changes: dict[str, Range] = {}
    for level, values in (("warn", warn), ("crit", crit)):
        for item in _split_items(values):
            key, rng = parse_threshold(item)
            changes[f"{key}_{level}"] = rng
    return replace(params, **changes)


def parse_ignore(values: Iterable[str]) -> frozenset[str]:
    """Codes from repeated/comma-separated ``--ignore`` values (case-insensitive), validated."""
    codes = frozenset(item.upper() for item in _split_items(values))
    _check_ignorable(sorted(codes))
    return codes


def build_params(
    warn: Iterable[str] = (),
    crit: Iterable[str] = (),
    ignore: Iterable[str] = (),
    report_period_s: float = AGENT_REPORT_PERIOD_S,
) -> CheckParams:
    """CheckParams from raw CLI values; raises :class:`CheckUsageError` on any bad value."""
    base = replace(CheckParams.for_period(report_period_s), ignore=parse_ignore(ignore))
    return apply_thresholds(base, warn, crit)


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class EndpointStatus:
    """One etcd client endpoint as probed; ``is_leader`` if it is the raft leader."""

    endpoint: str
    healthy: bool
    is_leader: bool = False
    error: str = ""


@dataclass(frozen=True)
class HostObs:
    """A registered host: last report (epoch s), agent version, clock pair, lease presence.

    ``host_clock`` is the host's clock reading and ``checker_clock`` the checker's time taken
    for the same instant; either may be None when unmeasured.
    """

    name: str
    last_report: float | None
    agent_version: str = ""
    host_clock: float | None = None
    checker_clock: float | None = None
    lease: bool = True


@dataclass(frozen=True)
class GuestObs:
    """A guest record as observed: assigned host, state ("running", "unknown", ...)."""

    uuid: str
    name: str
    host: str | None
    state: str
    fenced: bool = False
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunReport:
    """Host ``host`` reports guest ``uuid`` running (one per host per guest)."""

    uuid: str
    host: str


@dataclass(frozen=True)
class FenceObs:
    """A fence on shared-storage ``volume`` held by host ``holder`` for guest ``guest_uuid``."""

    volume: str
    holder: str
    guest_uuid: str


@dataclass(frozen=True)
class IntentObs:
    """An intent queued for ``host``; ``state`` is "pending", "done" or "failed"."""

    host: str
    id: str
    created: float
    state: str


@dataclass(frozen=True)
class PoolObs:
    """A worker pool with its desired and actually running member counts."""

    name: str
    desired: int
    actual: int


@dataclass(frozen=True)
class CorruptRecord:
    """A registry key whose value failed to decode."""

    key: str
    error: str


@dataclass(frozen=True)
class Snapshot:
    """Everything the shell collected, at checker time ``now`` (epoch seconds).

    ``member_count`` is the etcd cluster size (0: use the number of endpoints); list every
    member's endpoint so quorum and leader can be judged.
    """

    now: float
    endpoints: tuple[EndpointStatus, ...] = ()
    member_count: int = 0
    hosts: tuple[HostObs, ...] = ()
    guests: tuple[GuestObs, ...] = ()
    running: tuple[RunReport, ...] = ()
    fences: tuple[FenceObs, ...] = ()
    intents: tuple[IntentObs, ...] = ()
    pools: tuple[PoolObs, ...] = ()
    manager_leader: str | None = None
    manager_since: float | None = None
    corrupt: tuple[CorruptRecord, ...] = ()


# --------------------------------------------------------------------------- findings


def clean(text: str) -> str:
    """One safe line: non-printables become spaces, '|' (perfdata separator) becomes '/'."""
    return "".join(ch if ch.isprintable() else " " for ch in text).replace("|", "/")


@dataclass(frozen=True)
class Finding:
    """One verdict: stable ``code``, severity, subject (``kind`` + name), one-line message."""

    code: str
    severity: Status
    kind: str
    subject: str
    message: str

    def __post_init__(self) -> None:
        for name in ("kind", "subject", "message"):
            object.__setattr__(self, name, clean(getattr(self, name)))


UOMS = frozenset({"", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c"})


@dataclass(frozen=True)
class Perf:
    """One perfdata item; a None or non-finite value is rendered as ``U``."""

    label: str
    value: float | None
    uom: str = ""
    warn: Range | None = None
    crit: Range | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.uom not in UOMS:
            raise ValueError(f"bad perfdata UOM {self.uom!r}")
        if not self.label or clean(self.label) != self.label or set("='") & set(self.label):
            raise ValueError(f"bad perfdata label {self.label!r}")

    def __str__(self) -> str:
        value = _num_or(self.value, "U")
        if value != "U":
            value += self.uom
        fields = [value, _str_or(self.warn), _str_or(self.crit)]
        fields += [_num_or(self.minimum, ""), _num_or(self.maximum, "")]
        return f"'{self.label}'=" + ";".join(fields).rstrip(";")


def _num_or(value: float | None, missing: str) -> str:
    finite = _finite_or_none(value)
    return missing if finite is None else fmt_number(finite)


def _str_or(rng: Range | None) -> str:
    return "" if rng is None else str(rng)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class Report:
    """Findings (worst first, ignored codes removed), perfdata, and ignored-code counts."""

    findings: tuple[Finding, ...]
    perfdata: tuple[Perf, ...] = ()
    ignored: tuple[tuple[str, int], ...] = ()
    ok_text: str = "all checks passed"

    @property
    def status(self) -> Status:
        """Worst finding severity; OK without findings."""
        return worst(f.severity for f in self.findings)


def exit_code(report: Report) -> int:
    """Plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    return int(report.status)


# --------------------------------------------------------------------------- derived view


@dataclass(frozen=True)
class _View:
    """Facts derived once from a snapshot and shared by the checks."""

    hosts: Mapping[str, HostObs]
    live: frozenset[str]
    lost: frozenset[str]
    running: Mapping[str, frozenset[str]]
    unknown_guests: frozenset[str]
    names: Mapping[str, str]
    report_ages: Mapping[str, float]
    skews: Mapping[str, float]


def _age(now: float, then: float | None) -> float:
    """Seconds from ``then`` to ``now``: inf if unknown, clamped at 0 for future stamps."""
    if then is None:
        return math.inf
    age = now - then
    return math.inf if math.isnan(age) else max(0.0, age)


def _running_map(snap: Snapshot, lost: frozenset[str]) -> dict[str, frozenset[str]]:
    """Guest uuid -> hosts running it, from run reports and records saying "running".

    A host that lost its lease proves nothing (its reports are stale; its guests are
    unknown), so its claims are left out; any other reporting host counts.
    """
    claims = [(r.uuid, r.host) for r in snap.running]
    claims += [(g.uuid, g.host) for g in snap.guests if g.state == "running" and g.host]
    hosts: defaultdict[str, set[str]] = defaultdict(set)
    for uuid, host in claims:
        if host not in lost:
            hosts[uuid].add(host)
    return {uuid: frozenset(names) for uuid, names in hosts.items()}


def _skew(host: HostObs) -> float | None:
    if host.host_clock is None or host.checker_clock is None:
        return None
    return _finite_or_none(host.host_clock - host.checker_clock)


def _view(snap: Snapshot) -> _View:
    hosts = {h.name: h for h in snap.hosts}
    live = frozenset(name for name, h in hosts.items() if h.lease)
    lost = frozenset(hosts) - live
    running = _running_map(snap, lost)
    unknown = frozenset(
        g.uuid
        for g in snap.guests
        if g.uuid not in running and (g.state == "unknown" or g.host in lost)
    )
    skews = {name: _skew(hosts[name]) for name in live}
    return _View(
        hosts=hosts,
        live=live,
        lost=lost,
        running=running,
        unknown_guests=unknown,
        names={g.uuid: g.name or g.uuid for g in snap.guests},
        report_ages={name: _age(snap.now, hosts[name].last_report) for name in live},
        skews={name: skew for name, skew in skews.items() if skew is not None},
    )


# --------------------------------------------------------------------------- checks

Check = Callable[[Snapshot, _View, CheckParams], Iterator[Finding]]


def _dur(seconds: float) -> str:
    return f"{fmt_number(round(seconds))}s" if math.isfinite(seconds) else "?s"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _and_list(items: Iterable[str]) -> str:
    ordered = sorted(items)
    return ordered[0] if len(ordered) == 1 else ", ".join(ordered[:-1]) + " and " + ordered[-1]


def _endpoints_down(endpoints: Iterable[EndpointStatus]) -> Iterator[Finding]:
    for ep in endpoints:
        if not ep.healthy:
            why = f": {ep.error}" if ep.error else ""
            msg = f"etcd endpoint {ep.endpoint} unhealthy{why}"
            yield Finding("ETCD_ENDPOINT_DOWN", Status.WARNING, "endpoint", ep.endpoint, msg)


def _check_etcd(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    yield from _endpoints_down(snap.endpoints)
    yield from _check_quorum(snap)


def _members(snap: Snapshot) -> int:
    """etcd cluster size: the reported member count, else the number of endpoints."""
    return snap.member_count if snap.member_count > 0 else len(snap.endpoints)


def _healthy(snap: Snapshot) -> int:
    return sum(ep.healthy for ep in snap.endpoints)


def _check_quorum(snap: Snapshot) -> Iterator[Finding]:
    members, healthy = _members(snap), _healthy(snap)
    quorum = members // 2 + 1
    if healthy < quorum:
        msg = f"only {healthy}/{members} etcd members healthy, quorum is {quorum}"
    elif len(snap.endpoints) >= members and not any(
        ep.is_leader for ep in snap.endpoints if ep.healthy
    ):
        msg = "no healthy etcd member is the raft leader"
    else:
        return
    yield Finding("ETCD_NO_QUORUM", Status.CRITICAL, "etcd", "cluster", msg)


def _check_hosts(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for name in sorted(view.lost):
        stranded = sum(1 for g in snap.guests if g.host == name and g.uuid in view.unknown_guests)
        msg = f"host {name} lost its lease ({_plural(stranded, 'guest')} unknown)"
        yield Finding("HOST_LEASE_LOST", Status.CRITICAL, "host", name, msg)
    for name, age in sorted(view.report_ages.items()):
        severity = grade(age, params.report_age_warn, params.report_age_crit)
        if severity is not Status.OK:
            never = view.hosts[name].last_report is None
            msg = f"host {name} " + (
                "never reported" if never else f"last reported {_dur(age)} ago"
            )
            yield Finding("HOST_STALE", severity, "host", name, msg)


def _check_clock(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for name, skew in sorted(view.skews.items()):
        severity = grade(skew, params.clock_skew_warn, params.clock_skew_crit)
        if severity is not Status.OK:
            msg = f"host {name} clock is off by {fmt_number(round(skew, 3))}s"
            yield Finding("CLOCK_SKEW", severity, "host", name, msg)


def _version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing numeric dotted parts numerically."""
    parts = re.split(r"[.\-+_]", version)
    return tuple((0, int(p), "") if re.fullmatch(r"[0-9]+", p) else (1, 0, p) for p in parts)


def _check_versions(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    versions = {n: view.hosts[n].agent_version for n in view.live if view.hosts[n].agent_version}
    counts = Counter(versions.values())
    if len(counts) < 2:
        return
    majority = max(counts, key=lambda v: (counts[v], _version_key(v), v))
    for name, version in sorted(versions.items()):
        if version != majority:
            msg = f"host {name} runs agent {version}, fleet majority is {majority}"
            yield Finding("AGENT_VERSION_SKEW", Status.WARNING, "host", name, msg)


def _check_double_run(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for uuid, hosts in sorted(view.running.items()):
        if len(hosts) > 1:
            name = view.names.get(uuid, uuid)
            msg = f"guest {name} running on {_and_list(hosts)}"
            yield Finding("GUEST_DOUBLE_RUN", Status.CRITICAL, "guest", name, msg)


def _fence_problem(
    fences: Sequence[FenceObs], uuid: str, hosts: frozenset[str], names: Mapping[str, str]
) -> str | None:
    """Why the guest's fence on one volume is not right, or None if it is."""
    if any(f.guest_uuid == uuid and f.holder in hosts for f in fences):
        return None
    if not fences:
        return "has no fence"
    fence = fences[0]
    if fence.guest_uuid != uuid:
        return f"is fenced for guest {names.get(fence.guest_uuid, fence.guest_uuid)}"
    return f"has its fence held by {fence.holder}"


def _check_fence_missing(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    by_volume: defaultdict[str, list[FenceObs]] = defaultdict(list)
    for fence in snap.fences:
        by_volume[fence.volume].append(fence)
    for guest in snap.guests:
        hosts = view.running.get(guest.uuid)
        if not (guest.fenced and hosts):
            continue
        for volume in guest.volumes:
            problem = _fence_problem(by_volume.get(volume, []), guest.uuid, hosts, view.names)
            if problem:
                name = view.names[guest.uuid]
                msg = f"guest {name} runs on {_and_list(hosts)} but volume {volume} {problem}"
                yield Finding("FENCE_MISSING", Status.CRITICAL, "guest", name, msg)


def _check_fence_orphan(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for fence in snap.fences:
        uuid = fence.guest_uuid
        if uuid not in view.running and uuid not in view.unknown_guests:
            guest = view.names.get(uuid, uuid)
            msg = f"fence on {fence.volume} held by {fence.holder} for stopped guest {guest}"
            yield Finding("FENCE_ORPHAN", Status.WARNING, "volume", fence.volume, msg)


def _check_intents(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for intent in snap.intents:
        subject = f"{intent.host}/{intent.id}"
        if intent.state == "failed":
            msg = f"intent {intent.id} on host {intent.host} failed"
            yield Finding("INTENT_FAILED", Status.WARNING, "intent", subject, msg)
        elif intent.state == "pending":
            age = _age(snap.now, intent.created)
            severity = grade(age, params.intent_age_warn, params.intent_age_crit)
            if severity is not Status.OK:
                msg = f"intent {intent.id} on host {intent.host} pending for {_dur(age)}"
                yield Finding("INTENT_STALE", severity, "intent", subject, msg)


def _check_pools(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for pool in snap.pools:
        if pool.actual < pool.desired:
            severity = Status.CRITICAL if pool.actual <= 0 else Status.WARNING
            msg = f"pool {pool.name} runs {pool.actual}/{pool.desired} members"
            yield Finding("POOL_UNDERSIZE", severity, "pool", pool.name, msg)


def _check_manager(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    if not snap.manager_leader:
        since = snap.manager_since
        tail = f" for {_dur(_age(snap.now, since))}" if since is not None else ""
        msg = f"no manager leader{tail}"
        yield Finding("MANAGER_NO_LEADER", Status.CRITICAL, "manager", "leader", msg)


def _check_corrupt(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for record in snap.corrupt:
        msg = f"undecodable record {record.key}: {record.error}"
        yield Finding("REGISTRY_CORRUPT", Status.WARNING, "registry", record.key, msg)


CHECKS: tuple[Check, ...] = (
    _check_etcd,
    _check_hosts,
    _check_clock,
    _check_versions,
    _check_double_run,
    _check_fence_missing,
    _check_fence_orphan,
    _check_intents,
    _check_pools,
    _check_manager,
    _check_corrupt,
)


# --------------------------------------------------------------------------- evaluate


def _order(finding: Finding) -> tuple[int, str, str, str]:
    return (-_RANK[finding.severity], finding.code, finding.subject, finding.message)


def _millis(value: float | None) -> float | None:
    """Seconds rounded to milliseconds for display (grading uses the exact value)."""
    return None if value is None else round(value, 3)


def _perfdata(
    snap: Snapshot, view: _View, params: CheckParams, findings: int
) -> tuple[Perf, ...]:
    total = len(view.hosts)
    members = _members(snap)
    ages = [age for age in view.report_ages.values() if math.isfinite(age)]
    return (
        Perf("hosts_up", len(view.live), minimum=0, maximum=total),
        Perf("hosts_lost", len(view.lost), minimum=0, maximum=total),
        Perf("guests_running", len(view.running), minimum=0),
        Perf("guests_unknown", len(view.unknown_guests), minimum=0),
        Perf("fences_held", len(snap.fences), minimum=0),
        Perf("findings", findings, minimum=0),
        Perf("pools_undersized", sum(p.actual < p.desired for p in snap.pools), minimum=0),
        Perf(
            "oldest_report_age",
            _millis(max(ages, default=None)),
            "s",
            params.report_age_warn,
            params.report_age_crit,
            minimum=0,
        ),
        Perf(
            "max_clock_skew",
            _millis(max(view.skews.values(), key=abs, default=None)),
            "s",
            params.clock_skew_warn,
            params.clock_skew_crit,
        ),
        Perf("etcd_endpoints_healthy", _healthy(snap), minimum=0, maximum=members),
    )


def _ok_text(snap: Snapshot, view: _View) -> str:
    return (
        f"{len(view.live)}/{len(view.hosts)} hosts up, {len(view.running)} guests running, "
        f"{_healthy(snap)}/{len(snap.endpoints)} etcd endpoints healthy"
    )


def evaluate(snapshot: Snapshot, params: CheckParams | None = None) -> Report:
    """Judge ``snapshot``: findings (minus ignored codes), overall status and perfdata."""
    if params is None:
        params = CheckParams()
    view = _view(snapshot)
    found = [finding for check in CHECKS for finding in check(snapshot, view, params)]
    kept = sorted((f for f in found if f.code not in params.ignore), key=_order)
    ignored = Counter(f.code for f in found if f.code in params.ignore)
    return Report(
        findings=tuple(kept),
        perfdata=_perfdata(snapshot, view, params, len(kept)),
        ignored=tuple(sorted(ignored.items())),
        ok_text=_ok_text(snapshot, view),
    )


def unknown_report(error: str) -> Report:
    """UNKNOWN report for bad arguments or an internal failure of the check itself."""
    message = error or "check failed"
    return Report(findings=(Finding("CHECK_ERROR", Status.UNKNOWN, "check", "gridtool", message),))


def unreachable_report(error: str, endpoints: Sequence[EndpointStatus] = ()) -> Report:
    """CRITICAL report when no etcd endpoint answered, so no snapshot could be collected.

    Per the guidelines, timeouts and refused connections are facts about the service,
    not UNKNOWN. ``endpoints`` are the failed probes, each reported as ETCD_ENDPOINT_DOWN.
    """
    why = f": {error}" if error else ""
    head = Finding(
        "ETCD_UNREACHABLE", Status.CRITICAL, "etcd", "cluster", f"etcd registry unreachable{why}"
    )
    details = sorted(_endpoints_down(endpoints), key=_order)
    perf = Perf("etcd_endpoints_healthy", 0, minimum=0, maximum=len(endpoints))
    return Report(findings=(head, *details), perfdata=(perf,))


# --------------------------------------------------------------------------- rendering


def _counts(findings: Sequence[Finding]) -> str:
    tally = Counter(f.severity for f in findings)
    parts = [f"{tally[Status.CRITICAL]} critical", _plural(tally[Status.WARNING], "warning")]
    parts.append(f"{tally[Status.UNKNOWN]} unknown")
    return ", ".join(part for part in parts if not part.startswith("0 "))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def summary(report: Report) -> str:
    """The status line's text: the worst finding (after counts if several), or the OK overview."""
    if not report.findings:
        return clean(report.ok_text)
    if len(report.findings) == 1:
        return report.findings[0].message
    return f"{_counts(report.findings)}: {report.findings[0].message}"


def status_line(report: Report) -> str:
    """``GRIDTOOL STATUS: text | perfdata`` (text clipped to keep the line pager-sized)."""
    head = f"{PLUGIN_NAME} {report.status.name}: "
    line = head + _clip(summary(report), STATUS_TEXT_MAX - len(head))
    if report.perfdata:
        line += " | " + " ".join(str(p) for p in report.perfdata)
    return line


def detail_line(finding: Finding) -> str:
    """``SEVERITY CODE: message`` for the long output."""
    return f"{finding.severity.name} {finding.code}: {finding.message}"


def render_text(report: Report) -> str:
    """Nagios output: the status line, then one detail line per finding (no final newline)."""
    return "\n".join([status_line(report), *(detail_line(f) for f in report.findings)])


def _perf_json(perf: Perf) -> dict[str, Any]:
    return {
        "label": perf.label,
        "value": _finite_or_none(perf.value),
        "uom": perf.uom,
        "warn": _str_or(perf.warn) or None,
        "crit": _str_or(perf.crit) or None,
        "min": _finite_or_none(perf.minimum),
        "max": _finite_or_none(perf.maximum),
    }


def _finding_json(finding: Finding) -> dict[str, str]:
    return {
        "code": finding.code,
        "severity": finding.severity.name,
        "kind": finding.kind,
        "subject": finding.subject,
        "message": finding.message,
    }


def render_json(report: Report) -> dict[str, Any]:
    """Versioned JSON-ready dict (strict JSON: no NaN/Infinity anywhere)."""
    return {
        "v": JSON_VERSION,
        "status": report.status.name,
        "exit_code": exit_code(report),
        "summary": summary(report),
        "findings": [_finding_json(f) for f in report.findings],
        "perfdata": [_perf_json(p) for p in report.perfdata],
        "ignored": dict(report.ignored),
    }
