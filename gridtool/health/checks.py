"""The checks: :func:`evaluate` judges a :class:`Snapshot` against :class:`CheckParams` and
returns a :class:`Report`; :func:`unknown_report` and :func:`unreachable_report` are the
reports made without a snapshot."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from gridtool.fencing.etcdversions import REFERENCE, revokes_leases_early
from gridtool.health.params import CheckParams
from gridtool.health.ranges import Status, fmt_number, grade
from gridtool.health.report import Finding, Perf, Report, finite_or_none, plural
from gridtool.health.snapshot import EndpointStatus, FenceObs, HostObs, Snapshot
from gridtool.pools.feed import stale


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
    return finite_or_none(host.host_clock - host.checker_clock)


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
    yield from _check_early_revocation(snap)
    yield from _check_alarms(snap)
    yield from _check_db_size(snap, params)


def _check_alarms(snap: Snapshot) -> Iterator[Finding]:
    """An alarm stays raised until disarmed: NOSPACE refuses every write (leases too)."""
    for alarm in sorted(set(snap.alarms), key=lambda a: (a.alarm, a.member)):
        hint = (": compact, defragment, then 'etcdctl alarm disarm'"
                if alarm.alarm == "NOSPACE" else "")
        msg = f"etcd member {alarm.member} raised alarm {alarm.alarm}{hint}"
        yield Finding("ETCD_ALARM", Status.CRITICAL, "etcd", alarm.member, msg)


def db_size_percent(db_size: int, quota_bytes: float) -> float:
    """An etcd DB size in percent of the quota."""
    return 100.0 * db_size / quota_bytes


def _check_db_size(snap: Snapshot, params: CheckParams) -> Iterator[Finding]:
    for ep in snap.endpoints:
        if not (ep.healthy and ep.db_size):
            continue
        percent = db_size_percent(ep.db_size, params.etcd_quota_bytes)
        severity = grade(percent, params.db_size_warn, params.db_size_crit)
        if severity is not Status.OK:
            msg = (f"etcd {ep.endpoint} DB is {_mib(ep.db_size)} MiB, "
                   f"{fmt_number(round(percent, 1))}% of its "
                   f"{_mib(params.etcd_quota_bytes)} MiB quota")
            yield Finding("ETCD_DB_SIZE", severity, "endpoint", ep.endpoint, msg)


def _mib(size: float) -> str:
    return fmt_number(round(size / 2**20, 1))


def _check_early_revocation(snap: Snapshot) -> Iterator[Finding]:
    """HA guests rely on leases never expiring early; some etcd versions break that."""
    risky = sorted({ep.version for ep in snap.endpoints
                    if ep.healthy and revokes_leases_early(ep.version)})
    ha_guests = {f.guest_uuid for f in snap.fences if f.ha}
    if risky and ha_guests:
        msg = (f"etcd {_and_list(risky)} can revoke leases early ({REFERENCE}): "
               f"{plural(len(ha_guests), 'HA guest')} rely on the timed self-fence; "
               "upgrade etcd")
        yield Finding("ETCD_EARLY_REVOCATION", Status.WARNING, "etcd", "cluster", msg)


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
        msg = f"host {name} lost its lease ({plural(stranded, 'guest')} unknown)"
        yield Finding("HOST_LEASE_LOST", Status.CRITICAL, "host", name, msg)
    for name, age in sorted(view.report_ages.items()):
        severity = grade(age, params.report_age_warn, params.report_age_crit)
        if severity is not Status.OK:
            never = view.hosts[name].last_report is None
            msg = f"host {name} " + (
                "never reported" if never else f"last reported {_dur(age)} ago"
            )
            yield Finding("HOST_STALE", severity, "host", name, msg)


def _check_unhealthy(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for name in sorted(view.live):
        if view.hosts[name].unhealthy:
            msg = f"host {name} is unhealthy: {view.hosts[name].unhealthy}"
            yield Finding("HOST_UNHEALTHY", Status.CRITICAL, "host", name, msg)


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
    asleep = frozenset().union(*(p.asleep for p in snap.pools))  # hibernated: kept on purpose
    for fence in snap.fences:
        uuid = fence.guest_uuid
        if uuid not in view.running and uuid not in view.unknown_guests and uuid not in asleep:
            guest = view.names.get(uuid, uuid)
            msg = f"fence on {fence.volume} held by {fence.holder} for stopped guest {guest}"
            yield Finding("FENCE_ORPHAN", Status.WARNING, "volume", fence.volume, msg)


def _check_settings_orphan(snap: Snapshot, view: _View,
                           params: CheckParams) -> Iterator[Finding]:
    """A guest's settings record that nothing else names any more: no host reports the
    guest (lost hosts' records count), no clone record or pool member is it, and no
    unfinished intent is about it (a guest being defined, moved or removed)."""
    known = {g.uuid for g in snap.guests} | snap.clones | {
        i.guest for i in snap.intents if i.state not in ("done", "failed")}
    known = known.union(*(p.members for p in snap.pools))
    for s in sorted(snap.settings, key=lambda s: (s.name, s.uuid)):
        if s.uuid not in known:
            msg = (f"settings of guest {s.name or s.uuid} ({s.uuid}) left behind: no host "
                   "reports it and no clone, pool member or intent names it")
            yield Finding("SETTINGS_ORPHAN", Status.WARNING, "guest", s.uuid, msg)


def _check_violations(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for v in sorted(snap.violations, key=lambda v: (v.host, v.guest, v.volume)):
        msg = (f"host {v.host} ran guest {v.guest} without its fence on {v.volume} "
               f"(held by {v.holder or 'nobody'}; {v.action or 'no action'}): look, then "
               f"'gridtool fence clear-violations --host {v.host}'")
        yield Finding("FENCE_VIOLATION", Status.CRITICAL, "guest", f"{v.host}/{v.guest}", msg)


DAY_S = 86400.0


def _check_certs(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for cert in sorted(snap.certs, key=lambda c: c.path):
        if cert.error or cert.not_after is None:
            msg = f"certificate {cert.path} unreadable: {cert.error or 'no expiry'}"
            yield Finding("CERT_EXPIRY", Status.WARNING, "certificate", cert.path, msg)
            continue
        days = (cert.not_after - snap.now) / DAY_S
        severity = grade(days, params.cert_days_warn, params.cert_days_crit)
        if severity is not Status.OK:
            when = (f"expired {fmt_number(round(-days, 1))} days ago" if days < 0
                    else f"expires in {fmt_number(round(days, 1))} days")
            msg = f"certificate {cert.path} ({cert.subject}) {when}"
            yield Finding("CERT_EXPIRY", severity, "certificate", cert.path, msg)


def _check_ha_unprotected(snap: Snapshot, view: _View,
                          params: CheckParams) -> Iterator[Finding]:
    ha_on: defaultdict[str, set[str]] = defaultdict(set)
    for fence in snap.fences:
        if fence.ha and fence.holder in view.running.get(fence.guest_uuid, ()):
            ha_on[fence.holder].add(view.names.get(fence.guest_uuid, fence.guest_uuid))
    for name in sorted(view.live):
        guests = ha_on.get(name)
        if guests and not view.hosts[name].protected:
            msg = (f"host {name} runs HA {plural(len(guests), 'guest')} "
                   f"({_and_list(guests)}) with no working watchdog and no fencing")
            yield Finding("HOST_HA_UNPROTECTED", Status.WARNING, "host", name, msg)


def _check_fence_failed(snap: Snapshot, view: _View, params: CheckParams) -> Iterator[Finding]:
    for failure in snap.fence_failures:
        msg = f"{failure.message}; its HA guests stay down until a fence succeeds"
        yield Finding("HOST_FENCE_FAILED", Status.CRITICAL, "host", failure.host, msg)


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
        age = None if pool.feed is None else stale(pool.feed, snap.now)
        if pool.feed is not None and age is not None:
            why = f": {pool.feed.error}" if pool.feed.error else ""
            msg = (f"pool {pool.name}: no reading of queue {pool.feed.queue} on "
                   f"{pool.feed.broker} for {_dur(age)} (size held){why}")
            yield Finding("POOL_FEED_STALE", Status.WARNING, "pool", pool.name, msg)


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
    _check_unhealthy,
    _check_clock,
    _check_versions,
    _check_double_run,
    _check_fence_missing,
    _check_fence_orphan,
    _check_settings_orphan,
    _check_violations,
    _check_ha_unprotected,
    _check_fence_failed,
    _check_intents,
    _check_pools,
    _check_manager,
    _check_corrupt,
    _check_certs,
)


def _order(finding: Finding) -> tuple[int, str, str, str]:
    return (-finding.severity.rank, finding.code, finding.subject, finding.message)


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
        Perf("etcd_db_size", _percent(max((ep.db_size for ep in snap.endpoints if ep.healthy),
                                          default=None), params), "%",
             params.db_size_warn, params.db_size_crit, minimum=0, maximum=100),
        Perf("violations", len(snap.violations), minimum=0),
    )


def _percent(db_size: int | None, params: CheckParams) -> float | None:
    if not db_size:
        return None
    return round(db_size_percent(db_size, params.etcd_quota_bytes), 2)


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
