"""Worker pools in the registry: specs, members, load reports and the flex numbers.

The shell around :mod:`gridtool.pools.rules`: create, read, list, scale and delete pool
specs (``pools/<name>/spec``), read members and the manager's status, write load
reports (``pools/<name>/samples/<id>``, each under a short lease so old reports expire
by themselves) and compute the numbers the flex policy works with.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from gridtool.config import Config
from gridtool.errors import (
    Conflict,
    CorruptRecord,
    GridtoolError,
    LeaseGone,
    NotFound,
    UsageError,
)
from gridtool.placement.rules import DEFAULT_POLICY
from gridtool.pools.flex import FlexState, LoadSample
from gridtool.pools.rules import (
    WARM_CLONING,
    WARM_REMOVING,
    WARM_SLEEPING,
    WARM_WAKING,
    HostInfo,
    MemberRecord,
    MemberView,
    PoolSpec,
    PoolStatus,
    aggregate,
    busy_sources,
    direction,
    flex_step,
    target_size,
    warm_problems,
)
from gridtool.pools.rules import engine_numbers as rules_engine_numbers
from gridtool.registry import hostconf
from gridtool.registry.fleet import Registry
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError, GuestRecord
from gridtool.registry.records import Intent, decode, encode
from gridtool.registry.store import Compare, Put, Store

#: Seconds a load report lives in the registry (its lease's TTL).
SAMPLE_TTL = 180
#: Pool names prefix their workers' names, so they follow the guest name rules.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SPEC = "/spec"


# --- specs ----------------------------------------------------------------------------


def new_spec(name: str, template: str, min_size: int, max_size: int, *,
             desired: int | None = None, policy: str = "fixed",
             target_wait: float | None = None, flex: dict[str, Any] | None = None,
             warm: int = 0, warm_mode: str = "hibernate") -> PoolSpec:
    """A validated spec (UsageError, exit 2, on bad values). ``desired`` defaults to
    ``min``; ``target_wait`` sets a flex pool's mean-wait target in seconds; ``warm``
    asleep workers kept in ``warm_mode`` (hibernate or pause)."""
    if not _NAME.match(name):
        raise UsageError(f"invalid pool name {name!r}: use letters, digits and ._+- "
                         "(starting with a letter or digit, at most 64 chars)")
    overrides = dict(flex or {})
    if target_wait is not None:
        if policy != "flex":
            raise UsageError("--target-wait applies to flex pools only (--policy flex)")
        overrides.update(target_kind="mean_wait", target=target_wait)
    now = time.time()
    spec = PoolSpec(name, template, min_size, max_size,
                    min_size if desired is None else desired, policy, overrides, now, now,
                    warm, warm_mode)
    problems = spec.problems()
    if problems:
        raise UsageError(f"pool {name}: {'; '.join(problems)}")
    return spec


def create(store: Store, keys: Keys, spec: PoolSpec) -> PoolSpec:
    """Write a new pool's spec; Conflict (exit 7) if the pool exists."""
    key = keys.pool(spec.name)
    if not store.txn([Compare(key, "create", 0)], [Put(key, encode(spec))]):
        raise Conflict(f"pool {spec.name} already exists")
    return spec


def get(store: Store, keys: Keys, name: str) -> PoolSpec:
    """A pool's spec; NotFound (exit 3) for an unknown pool."""
    item = store.get(keys.pool(name))
    if item is None:
        raise NotFound(f"unknown pool {name!r}")
    return _decode(PoolSpec, item.key, item.value)


def list_specs(store: Store, keys: Keys) -> list[PoolSpec]:
    """Every pool's spec, by name (corrupt specs raise CorruptRecord)."""
    items, _ = store.list(keys.pools)
    specs = [_decode(PoolSpec, i.key, i.value) for i in items if i.key.endswith(_SPEC)]
    return sorted(specs, key=lambda s: s.name)


def overview(store: Store, keys: Keys) -> list[dict[str, Any]]:
    """Every pool in one registry read: its spec's fields, ``target`` (the size it should
    have now), ``members`` (clones recorded), and the manager's ``ready``, ``starting``,
    ``decisions`` and ``updated`` (None before its first round). For ``pool list`` and
    the metrics."""
    items, _ = store.list(keys.pools)
    specs: dict[str, PoolSpec] = {}
    statuses: dict[str, PoolStatus] = {}
    counts: dict[str, int] = {}
    for item in items:
        name, _, rest = item.key.removeprefix(keys.pools).partition("/")
        if rest == "spec":
            specs[name] = _decode(PoolSpec, item.key, item.value)
        elif rest == "status":
            with contextlib.suppress(DecodeError):
                statuses[name] = decode(PoolStatus, item.key, item.value)
        elif rest.startswith("members/"):
            counts[name] = counts.get(name, 0) + 1
    rows = []
    for name, spec in sorted(specs.items()):
        st = statuses.get(name)
        rows.append({**asdict(spec), "target": target_size(spec, st),
                     "members": counts.get(name, 0),
                     "ready": st.ready if st else None, "starting": st.starting if st else None,
                     "warm_asleep": st.warm if st else None,
                     "warm_booting": st.warming if st else None,
                     "decisions": dict(st.decisions) if st else {},
                     "updated": st.updated if st else None})
    return rows


def set_desired(store: Store, keys: Keys, name: str, size: int) -> PoolSpec:
    """Set a fixed pool's size (for ``pool scale`` and outside policy engines).

    UsageError (exit 2) when ``size`` is outside ``[min, max]`` or the pool is flex (its
    size follows its policy); NotFound (exit 3) for an unknown pool.
    """
    def change(spec: PoolSpec) -> PoolSpec:
        if spec.policy == "flex":
            raise UsageError(f"pool {name} is flex: its size follows its policy "
                             f"within [{spec.min}, {spec.max}]")
        if not spec.min <= size <= spec.max:
            raise UsageError(f"pool {name}: size {size} is outside [{spec.min}, {spec.max}]")
        return replace(spec, desired=size)

    return _update(store, keys, name, change)


def set_warm(store: Store, keys: Keys, name: str, warm: int | None = None,
             mode: str | None = None) -> PoolSpec:
    """Set a pool's warm size and/or mode (the manager refills or trims the warm set).
    UsageError (exit 2) for a negative size, one above the pool's maximum or an unknown
    mode; NotFound (exit 3) for an unknown pool."""
    def change(spec: PoolSpec) -> PoolSpec:
        new = replace(spec, warm=spec.warm if warm is None else warm,
                      warm_mode=spec.warm_mode if mode is None else mode)
        problems = warm_problems(new.warm, new.warm_mode, new.max)
        if problems:
            raise UsageError(f"pool {name}: {'; '.join(problems)}")
        return new

    return _update(store, keys, name, change)


def _update(store: Store, keys: Keys, name: str,
            change: Callable[[PoolSpec], PoolSpec]) -> PoolSpec:
    """Apply ``change`` to a pool's spec (compare-and-swap, retried)."""
    key = keys.pool(name)
    for _ in range(10):
        item = store.get(key)
        if item is None:
            raise NotFound(f"unknown pool {name!r}")
        new = replace(change(_decode(PoolSpec, item.key, item.value)), updated_at=time.time())
        if store.txn([Compare(key, "mod", item.mod_revision)], [Put(key, encode(new))]):
            return new
    raise Conflict(f"pool {name} keeps changing; try again")


def delete(store: Store, cfg: Config, name: str, *, keep_guests: bool = False,
           timeout: float = 60.0,
           on_removed: Callable[[str, str, str], None] | None = None) -> list[str]:
    """Delete a pool: its spec first (the manager stops tending it), then its clones
    (unless ``keep_guests``: they stay as plain guests), then its records.

    Removes in parallel; ``on_removed(name, host, error)`` is called per clone (error ""
    when it went). Returns the errors; the records are deleted only when there are
    none, so ``pool delete`` can be run again. NotFound (exit 3) for an unknown pool.
    """
    keys = cfg.keys
    get(store, keys, name)
    store.delete(keys.pool(name))
    errors: list[str] = []
    if not keep_guests:
        for _ in range(2):  # a second pass catches a clone the manager was just making
            found = members(store, keys, name)
            if not found:
                break
            errors = _remove_all(store, cfg, name, found, timeout, on_removed)
            if errors:
                return errors
    store.delete_prefix(f"{keys.pools}{name}/")
    return errors


def _remove_all(store: Store, cfg: Config, pool: str, found: dict[str, MemberRecord],
                timeout: float,
                on_removed: Callable[[str, str, str], None] | None) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    from gridtool.clone.shell import remove_clone

    located = {g.uuid: g.host for g in Registry(store, cfg.keys).list_guests()[0]
               if g.uuid in found}

    def one(uuid: str) -> str:
        name, host = found[uuid].name, located.get(uuid, found[uuid].host)
        error = ""
        under_way = _removal_under_way(store, cfg.keys, found[uuid])
        try:
            remove_clone(store, cfg, host, uuid, name, pool=pool, timeout=timeout,
                         intent_id=under_way)
        except NotFound:
            store.delete(cfg.keys.pool_member(pool, uuid))
        except GridtoolError as exc:
            error = f"{name} on {host}: {exc}"
        if on_removed is not None:
            on_removed(name, host, error)
        return error

    with ThreadPoolExecutor(max_workers=8) as workers:
        return [e for e in workers.map(one, sorted(found)) if e]


def _removal_under_way(store: Store, keys: Keys, member: MemberRecord) -> str:
    """The id of the removal the manager recorded for ``member`` (sent or not yet) to
    follow instead of sending another; "" when there is none, or it failed (a new one)."""
    if member.warm != WARM_REMOVING or not member.intent:
        return ""
    return "" if intent_state(store, keys, member)[0] == "failed" else member.intent


# --- members and status ---------------------------------------------------------------


def members(store: Store, keys: Keys, name: str) -> dict[str, MemberRecord]:
    """The pool's clones by uuid, as the clone API recorded them."""
    return _records(store, keys.pool_members(name), MemberRecord)


def status(store: Store, keys: Keys, name: str) -> PoolStatus | None:
    """What the manager last did with the pool (None before its first round)."""
    item = store.get(keys.pool_status(name))
    return None if item is None else _decode(PoolStatus, item.key, item.value)


def observe(store: Store, keys: Keys, name: str) -> tuple[list[HostInfo], list[MemberView]]:
    """What the planner needs: the live hosts and the pool's members as the registry
    shows them (busy: by their own latest load report)."""
    registry = Registry(store, keys)
    draining = hostconf.draining_hosts(store, keys)
    overflow = DEFAULT_POLICY.overflow_label
    hosts = [HostInfo(h.name, h.name in draining, overflow in h.labels,
                      h.free_memory_mib) for h in registry.list_hosts()[0]]
    live = {h.name for h in hosts}
    guests: dict[str, list[GuestRecord]] = {}
    for g in registry.list_guests()[0]:
        guests.setdefault(g.uuid, []).append(g)
    busy = busy_sources(samples(store, keys, name))
    views = []
    for uuid, m in members(store, keys, name).items():
        step, error = intent_state(store, keys, m) if m.warm in WITH_STEPS else ("", "")
        views.append(replace(member_view(uuid, m, guests.get(uuid, []), live),
                             busy=m.name in busy, step=step, error=error))
    return hosts, views


#: Member states whose intent the plan follows.
WITH_STEPS = (WARM_CLONING, WARM_SLEEPING, WARM_WAKING, WARM_REMOVING)


def intent_state(store: Store, keys: Keys, member: MemberRecord) -> tuple[str, str]:
    """The state of a cloning, sleeping, waking or removing worker's intent (``gone``: not found)
    and, when it failed, its message."""
    for key in (keys.intent(member.host, member.intent),
                keys.intent_done(member.host, member.intent)):
        item = store.get(key) if member.intent else None
        if item is not None:
            try:
                intent = decode(Intent, key, item.value)
            except DecodeError:
                return "gone", ""
            return str(intent.state), intent.message if intent.state == "failed" else ""
    return "gone", ""


def member_view(uuid: str, member: MemberRecord, records: list[GuestRecord],
                live: set[str]) -> MemberView:
    """A member with its state: from its record on a live host (it may have migrated
    since it was cloned), else ``unknown`` on the gone host of its latest record, else
    ``missing`` (no record yet, or deleted behind the pool's back)."""
    base = MemberView(uuid, member.name, member.host, member.created_at, "missing",
                      warm=member.warm, since=member.since, intent=member.intent)
    on_live = [r for r in records if r.host in live]
    if on_live:
        best = max(on_live, key=lambda r: (r.state == "running", r.updated_at))
        return replace(base, host=best.host, state=best.state, ready_at=best.ready_at)
    if records:  # only on hosts that are gone
        return replace(base, host=max(records, key=lambda r: r.updated_at).host,
                       state="unknown")
    return base


# --- load reports ---------------------------------------------------------------------


def default_source() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def report(store: Store, keys: Keys, pool: str, *, arrivals: int, completions: int = 0,
           busy_seconds: float | None = None, mean_service_time: float | None = None,
           queue_depth: int = 0, interval: float = 10.0, source: str | None = None,
           timestamp: float | None = None, ttl: int = SAMPLE_TTL,
           surge: bool = False) -> LoadSample:
    """Write one load report for ``pool``: what happened over the last ``interval`` s.

    Report once per interval and reporter (the manager samples every 10 s); ``surge``:
    a report written at once because the load jumped (the leading manager runs the
    pool's round at once). UsageError (exit 2) for bad numbers, NotFound (exit 3) for an
    unknown pool.
    """
    try:
        sample = LoadSample(time.time() if timestamp is None else timestamp, float(interval),
                            int(arrivals), int(completions),
                            None if busy_seconds is None else float(busy_seconds),
                            None if mean_service_time is None else float(mean_service_time),
                            int(queue_depth), source=source or default_source(),
                            surge=surge)
    except ValueError as exc:
        raise UsageError(f"load report: {exc}") from None
    if store.get(keys.pool(pool)) is None:
        raise NotFound(f"unknown pool {pool!r}")
    key = keys.pool_sample(pool, f"{time.time_ns():020d}-{uuidlib.uuid4().hex[:8]}")
    try:
        store.put(key, encode(sample), lease=_sample_lease(store, ttl))
    except LeaseGone:
        store.put(key, encode(sample), lease=_sample_lease(store, ttl, fresh=True))
    return sample


#: id(store) -> (lease, ttl, granted at). A reused id only costs a LeaseGone and a retry.
_LEASES: dict[int, tuple[int, int, float]] = {}


def _sample_lease(store: Store, ttl: int, fresh: bool = False) -> int:
    """A lease for load reports, shared by the reports of ``ttl / 2`` seconds (so each
    report lives between ttl / 2 and ttl, with one lease per store and half-TTL rather
    than one per report)."""
    lease, granted_ttl, since = _LEASES.get(id(store), (0, 0, -math.inf))
    if fresh or granted_ttl != ttl or time.monotonic() - since > ttl / 2:
        lease = store.grant_lease(ttl)
        _LEASES[id(store)] = (lease, ttl, time.monotonic())
    return lease


def samples(store: Store, keys: Keys, pool: str) -> list[LoadSample]:
    """The pool's live load reports, oldest first (corrupt or invalid ones skipped)."""
    items, _ = store.list(keys.pool_samples(pool))
    found = []
    for item in items:
        try:
            found.append(decode(LoadSample, item.key, item.value))
        except (DecodeError, ValueError):
            continue
    return sorted(found, key=lambda s: s.timestamp)


def flex_numbers(store: Store, keys: Keys, name: str) -> dict[str, Any]:
    """The numbers the flex policy works with, for ``pool show`` and policy engines.

    From the manager's last decision when there is one (``"from": "manager"``), else a
    dry run of the policy over the live reports (``"from": "reports"``); ``{}`` when
    there is neither. Keys: smoothed_rate (/s), service_time (s), offered_load
    (Erlangs), recommended and desired workers, intensity, predicted wait, reason.
    """
    return _flex_numbers(store, keys, get(store, keys, name))


def engine_numbers(store: Store, keys: Keys, name: str) -> dict[str, Any]:
    """The numbers an outside policy engine reads (``rules.engine_numbers``: measured
    and smoothed arrival rate, service time, intensity, recommended size, last
    decision); ``{}`` before any decision or report. Reads the pool's spec, status and
    reports only, which a pool's reporter user may read."""
    spec = get(store, keys, name)
    return rules_engine_numbers(spec, _flex_numbers(store, keys, spec))


def _flex_numbers(store: Store, keys: Keys, spec: PoolSpec) -> dict[str, Any]:
    name = spec.name
    st = status(store, keys, name)
    if st is not None and st.decision:
        return {"from": "manager", "at": st.updated, **st.decision}
    reports = samples(store, keys, name)
    if not reports:
        return {}
    start = min(s.timestamp - s.interval for s in reports)
    now = time.time()
    size = target_size(spec, st)
    decision, _ = flex_step(spec, FlexState(), aggregate(reports, start, now), size, 0, now)
    return {} if decision is None else {"from": "reports", "at": now,
                                        **decision.to_dict(), "direction": direction(decision)}


# --- the Python API's registry connection -------------------------------------------

_API_STORES: dict[Config, Store] = {}


def api_store(config_file: str | None = None) -> tuple[Store, Keys]:
    """A store for ``gridtool.report``/``set_desired``: the config loaded as the CLI loads
    it, one connection per process and config (reports come every few seconds)."""
    from gridtool.config import load
    from gridtool.registry.etcdstore import EtcdStore

    cfg = load(config_file)
    if cfg not in _API_STORES:
        _API_STORES[cfg] = EtcdStore(cfg)
    return _API_STORES[cfg], cfg.keys


def close_api_stores() -> None:
    """Close the Python API's registry connections (they reopen when next needed)."""
    while _API_STORES:
        _API_STORES.popitem()[1].close()


# --- helpers --------------------------------------------------------------------------


def _decode(cls: type, key: str, raw: bytes) -> Any:
    try:
        return decode(cls, key, raw)
    except DecodeError as exc:
        raise CorruptRecord(str(exc)) from None


def _records(store: Store, prefix: str, cls: type) -> dict[str, Any]:
    items, _ = store.list(prefix)
    found: dict[str, Any] = {}
    for item in items:
        try:
            found[item.key.removeprefix(prefix)] = decode(cls, item.key, item.value)
        except DecodeError:
            continue
    return found
