"""Collect the health snapshot from the registry (the shell around ``gridtool.health``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from gridtool.fencing.rules import FenceKind, Observed, Unreadable
from gridtool.fencing.shell import read_all_fences, read_host_fences
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
from gridtool.pools.rules import (
    WARM_ASLEEP,
    WARM_SLEEPING,
    WARM_WAKING,
    MemberRecord,
    PoolSpec,
    PoolStatus,
    target_size,
)
from gridtool.registry import fenceagents
from gridtool.registry.fleet import Registry
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError
from gridtool.registry.records import GuestSettings, Intent, Violation, decode
from gridtool.registry.store import Store


def collect(store: Store, keys: Keys, member_count: int,
            cert_files: Iterable[Path] = ()) -> Snapshot:
    """Read everything ``gridtool check`` judges; raises RegistryUnavailable if it can't.
    ``cert_files``: the TLS certificates whose expiry is judged."""
    endpoints = tuple(EndpointStatus(s.endpoint, s.healthy, s.leader, s.error, s.version,
                                     s.db_size) for s in store.status())
    registry = Registry(store, keys)
    listing = registry.listing()
    now = time.time()
    live = {h.name for h in listing.hosts}
    powered = frozenset(fenceagents.read_all(store, keys))
    hosts = [HostObs(h.name, h.reported_at, h.agent_version,
                     host_clock=h.reported_at if h.reported_at > now else None,
                     checker_clock=now if h.reported_at > now else None,
                     protected=fenceagents.with_fencing(h, powered).protected,
                     unhealthy=h.unhealthy)
             for h in listing.hosts]
    # A host that left guest records behind but holds no lease is a lost host.
    hosts += [HostObs(name, None, lease=False)
              for name in sorted({g.host for g in listing.guests} - live)]
    corrupt = [CorruptRecord(e.key, e.reason) for e in listing.errors]
    fences = []
    for volume, obs in read_all_fences(store, keys)[0].items():
        if isinstance(obs, Observed):
            fences.append(FenceObs(obs.fence.volume, obs.fence.holder, obs.fence.guest,
                                   ha=obs.fence.kind is FenceKind.HA))
        elif isinstance(obs, Unreadable):
            corrupt.append(CorruptRecord(keys.fence(volume), obs.error))
    intents = [IntentObs(i.host, i.id, i.created, i.state, i.guest)
               for i in _decoded(store, keys.all_intents, Intent, corrupt)]
    leader = store.get(keys.manager_leader)
    running = {g.uuid for g in listing.guests if g.state == "running" and g.host in live}
    pools = _pools(store, keys, running, corrupt)
    host_fences, undecodable = read_host_fences(store, keys)
    corrupt += [CorruptRecord(e.key, e.reason) for e in undecodable]
    failures = [FenceFailure(r.host, r.failed) for r in host_fences.values() if r.failed]
    violations = _violations(store, keys, corrupt)
    return Snapshot(
        now=now, endpoints=endpoints, member_count=member_count, hosts=tuple(hosts),
        guests=tuple(GuestObs(g.uuid, g.name, g.host, g.state, g.fenced, g.volumes)
                     for g in listing.guests),
        running=tuple(RunReport(g.uuid, g.host) for g in listing.guests
                      if g.state == "running" and g.host in live),
        fences=tuple(fences), intents=tuple(intents),
        manager_leader=_leader_name(leader.value) if leader else None,
        corrupt=tuple(corrupt), pools=tuple(pools), fence_failures=tuple(failures),
        alarms=tuple(AlarmObs(member, alarm) for member, alarm in store.alarms()),
        violations=tuple(violations), certs=tuple(read_cert(p) for p in cert_files),
        settings=tuple(SettingsObs(s.uuid, s.name) for s in _decoded(
            store, keys.settings, GuestSettings, corrupt)),
        clones=frozenset(item.key.rpartition("/")[2] for item in store.list(keys.clones)[0]))


T = TypeVar("T", bound=Any)


def _decoded(store: Store, prefix: str, kind: type[T], corrupt: list[CorruptRecord]) -> list[T]:
    """Every record under ``prefix`` that decodes as ``kind``; the others go to ``corrupt``."""
    found = []
    for item in store.list(prefix)[0]:
        try:
            found.append(decode(kind, item.key, item.value))
        except DecodeError as exc:
            corrupt.append(CorruptRecord(item.key, exc.reason))
    return found


def _violations(store: Store, keys: Keys, corrupt: list[CorruptRecord]) -> list[ViolationObs]:
    return [ViolationObs(v.host, v.name or v.guest, v.volume, v.holder, v.action, v.at)
            for v in _decoded(store, keys.violations, Violation, corrupt)]


def cert_files(ca_cert: str | None, cert: str | None) -> list[Path]:
    """The certificates ``check`` judges: ``ca_cert``, ``cert`` and every ``*.crt`` beside
    ``ca_cert`` (where ``gridtool registry certs`` writes the server's and the users')."""
    paths = [Path(p) for p in (ca_cert, cert) if p]
    if ca_cert:
        paths += sorted(Path(ca_cert).parent.glob("*.crt"))
    return list(dict.fromkeys(p.resolve() if p.exists() else p for p in paths))


def read_cert(path: Path) -> CertObs:
    """A certificate's subject and expiry (the first PEM certificate in ``path``)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        return CertObs(str(path), error=exc.strerror or str(exc))
    except ValueError as exc:
        return CertObs(str(path), error=f"not a PEM certificate ({exc})")
    return CertObs(str(path), cert.subject.rfc4514_string(),
                   cert.not_valid_after_utc.timestamp())


#: Warm worker states whose guest is (or is going) to sleep, or is asleep until its wake
#: runs: a hibernated one keeps its fences while shut off (``gridtool.fencing.saved``).
SLEEPING = (WARM_SLEEPING, WARM_ASLEEP, WARM_WAKING)


def _pools(store: Store, keys: Keys, running: set[str],
           corrupt: list[CorruptRecord]) -> list[PoolObs]:
    """Each pool's target size, how many of its members run on a live host, and its
    queue feeder's heartbeat."""
    specs: dict[str, PoolSpec] = {}
    statuses: dict[str, PoolStatus] = {}
    feeds: dict[str, FeedStatus] = {}
    members: dict[str, set[str]] = {}
    asleep: dict[str, set[str]] = {}
    for item in store.list(keys.pools)[0]:
        name, _, rest = item.key.removeprefix(keys.pools).partition("/")
        try:
            if rest == "spec":
                specs[name] = decode(PoolSpec, item.key, item.value)
            elif rest == "status":
                statuses[name] = decode(PoolStatus, item.key, item.value)
            elif rest == "feed":
                feeds[name] = decode(FeedStatus, item.key, item.value)
        except DecodeError as exc:
            corrupt.append(CorruptRecord(item.key, exc.reason))
        if rest.startswith("members/"):
            uuid = rest.removeprefix("members/")
            members.setdefault(name, set()).add(uuid)
            try:
                if decode(MemberRecord, item.key, item.value).warm in SLEEPING:
                    asleep.setdefault(name, set()).add(uuid)
            except DecodeError:
                pass  # (counted as a member all the same)
    return [PoolObs(name, target_size(spec, statuses.get(name)),
                    len(members.get(name, set()) & running), feeds.get(name),
                    frozenset(asleep.get(name, ())), frozenset(members.get(name, ())))
            for name, spec in sorted(specs.items())]


def _leader_name(raw: bytes) -> str | None:
    try:
        name = json.loads(raw).get("leader")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None
