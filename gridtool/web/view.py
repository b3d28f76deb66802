"""The page's data, from one registry snapshot (pure: no etcd, no I/O).

``fleet`` reads a snapshot (any read-only ``Store``) with the registry's own readers
and returns JSON-ready rows: hosts (up, draining, lost), guests (the ``guest list --json``
view plus kind, pool, fences, what the manager waits for), fences, pools, the manager
and ``gridtool check``'s findings. ``GuestQuery``/``page_guests`` filter and page the
guests on the server, so a page with 10,000 guests sends only one page of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, TypeVar

from gridtool.registry.keys import Keys
from gridtool.registry.mirror import Memo, derive_all
from gridtool.registry.model import (
    GUEST_STATES,
    DecodeError,
    GuestRecord,
    HostRecord,
    as_dict,
    decode,
)
from gridtool.registry.store import Item, Store

KINDS = ("ha", "pinned", "none", "fenced")  # "fenced": ha or pinned
PER_PAGE = 100
MAX_PER_PAGE = 500
SHOWN_FENCES = 500  # the fence table's rows (fence list --json has them all)
SHOWN_FINDINGS = 50
PENDING_CHECK: dict[str, Any] = {"status": "PENDING", "summary": "not checked yet",
                                 "findings": []}
T = TypeVar("T")


@dataclass(frozen=True)
class Fleet:
    """Everything the page shows, at one registry revision."""

    revision: int
    hosts: list[dict[str, Any]]
    guests: list[dict[str, Any]]
    fences: list[dict[str, Any]]
    pools: list[dict[str, Any]]
    manager: dict[str, Any]
    check: dict[str, Any]
    errors: list[dict[str, str]]

    def summary(self) -> dict[str, Any]:
        """The page's top half (all but the guests, which go out a page at a time; the
        first fences and findings), with the choices the guest filters offer."""
        findings = self.check.get("findings", [])
        return {"revision": self.revision, "hosts": self.hosts,
                "fences": self.fences[:SHOWN_FENCES], "fence_count": len(self.fences),
                "pools": self.pools, "manager": self.manager,
                "check": {**self.check, "findings": findings[:SHOWN_FINDINGS],
                          "finding_count": len(findings)},
                "errors": self.errors, "guest_count": len(self.guests),
                "filters": {"host": sorted({g["host"] for g in self.guests}),
                            "state": list(GUEST_STATES), "pool": [p["name"] for p in self.pools],
                            "kind": list(KINDS)}}


def fleet(store: Store, keys: Keys, now: float, memo: Memo | None = None,
          check: dict[str, Any] | None = None) -> Fleet:
    """Read the fleet from ``store`` (a snapshot); ``now`` for report ages; ``memo``
    keeps decoded records between builds; ``check``: the last ``check_report``."""
    from gridtool.registry import fenceagents, hostconf, settings

    memo = memo or Memo()
    hosts_found, errors = _decode_all(store, keys.hosts, memo, _host)
    guests_found, guest_errors = _decode_all(store, keys.guests, memo, _guest_base)
    errors += guest_errors
    fences, fence_errors = _decode_all(store, keys.fences, memo, partial(_fence_row, keys))
    errors += fence_errors
    live = frozenset(h.name for h in hosts_found)
    ha = {u for u, s in settings.read_all(store, keys).items() if s.ha}
    members = _pool_members(store, keys)
    manager = _manager(store, keys)
    waits = (manager["status"] or {}).get("blocked", {})
    by_volume = {f["volume"]: f for f in fences}
    guests = []
    for base, volumes, revision in guests_found:
        uuid = base["uuid"]
        kind = "none" if not base["fenced"] else "ha" if uuid in ha else "pinned"
        held = tuple(by_volume[v] for v in volumes if v in by_volume)
        fact = (base["host"] in live, kind, members.get(uuid),
                waits.get(uuid) or waits.get(base["name"]))
        # the row is kept while its record, its fences and these facts stay: most of
        # 10,000 do, from one build to the next
        guests.append(memo.derive(f"row {base['host']}/{uuid}",
                                  (revision, fact, tuple(f["token"] for f in held)),
                                  partial(_guest_row, base, fact, held)))
    memo.sweep()
    guests.sort(key=lambda v: (v["name"], v["host"], v["uuid"]))
    powered = frozenset(fenceagents.read_all(store, keys))
    draining = hostconf.draining_hosts(store, keys)
    hosts = host_rows([fenceagents.with_fencing(h, powered) for h in hosts_found],
                      guests, fences, draining, now)
    return Fleet(store.list(keys.hosts)[1], hosts, guests, fences, pool_rows(store, keys),
                 manager, check or PENDING_CHECK, errors)


def _decode_all(store: Store, prefix: str, memo: Memo, fn: Callable[[Item], T],
                ) -> tuple[list[T], list[dict[str, str]]]:
    """``fn`` of each item under ``prefix`` (memoised); the items that do not decode as
    ``{"key", "error"}`` rows."""
    found, errors = derive_all(store, prefix, fn, memo)
    return found, [{"key": e.key, "error": e.reason} for e in errors]


def _guest_row(base: dict[str, Any], fact: tuple[bool, str, str | None, str | None],
               held: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    live, kind, pool, waiting = fact
    return {**base, "state": base["reported_state"] if live else "unknown", "kind": kind,
            "pool": pool, "fences": list(held), "waiting": waiting}


def _host(item: Item) -> HostRecord:
    return decode(HostRecord, item.key, item.value)


def _guest_base(item: Item) -> tuple[dict[str, Any], tuple[str, ...], int]:
    """A guest as ``guest list --json`` shows it, before the fleet's state is known; its
    shared volumes; the record's revision."""
    g = decode(GuestRecord, item.key, item.value)
    return ({**as_dict(g), "reported_state": g.state, "fenced": g.fenced}, g.volumes,
            item.mod_revision)


def _fence_row(keys: Keys, item: Item) -> dict[str, Any]:
    """A fence as ``fence list --json`` shows it; DecodeError when it does not decode."""
    from gridtool.fencing.rules import FenceError, Observed, observe

    try:
        obs = observe(item.key.removeprefix(keys.fences), item.value, item.mod_revision)
    except FenceError as exc:  # a key that names no valid volume
        raise DecodeError(item.key, str(exc)) from None
    if not isinstance(obs, Observed):
        raise DecodeError(item.key, getattr(obs, "error", "unreadable"))
    f = obs.fence
    return {"volume": f.volume, "guest": f.guest, "guest_name": f.guest_name,
            "holder": f.holder, "token": obs.mod_revision, "since": f.since,
            "kind": f.kind.value, "leased": bool(item.lease)}


def host_rows(records: list[HostRecord], guests: list[dict[str, Any]],
              fences: list[dict[str, Any]], draining: frozenset[str],
              now: float) -> list[dict[str, Any]]:
    """One row per host: each live record (up or draining), then each host that guest
    records or fences still name but that has no record (lost: its lease expired)."""
    running: dict[str, int] = {}
    total: dict[str, int] = {}
    for g in guests:
        total[g["host"]] = total.get(g["host"], 0) + 1
        if g["state"] == "running":
            running[g["host"]] = running.get(g["host"], 0) + 1
    rows = []
    for h in records:
        used = h.memory_mib - h.free_memory_mib
        rows.append({**as_dict(h), "state": "draining" if h.name in draining else "up",
                     "protected": h.protected, "running_guests": running.get(h.name, 0),
                     "guests": total.get(h.name, 0),
                     "memory_used_pct": _percent(used, h.memory_mib),
                     "report_age": max(0.0, round(now - h.reported_at, 1))})
    live = {h.name for h in records}
    lost = ({g["host"] for g in guests} | {f["holder"] for f in fences}) - live
    rows += [{"name": name, "state": "lost", "guests": total.get(name, 0),
              "running_guests": 0, "protected": False} for name in lost]
    rows.sort(key=lambda r: r["name"])
    return rows


def pool_rows(store: Store, keys: Keys) -> list[dict[str, Any]]:
    """``pool list --json``'s rows with the flex policy's last decision and message."""
    from gridtool.pools.rules import PoolStatus
    from gridtool.pools.shell import overview
    from gridtool.registry.records import decode

    rows = overview(store, keys)
    for row in rows:
        item = store.get(f"{keys.pools}{row['name']}/status")
        try:
            st = decode(PoolStatus, item.key, item.value) if item else None
        except DecodeError:
            st = None
        row.update(decision=_finite(st.decision) if st else {},
                   message=st.message if st else "")
    return rows


def _pool_members(store: Store, keys: Keys) -> dict[str, str]:
    """Guest uuid -> the pool it is a member of."""
    found = {}
    for item in store.list(keys.pools)[0]:
        name, _, rest = item.key.removeprefix(keys.pools).partition("/")
        if rest.startswith("members/"):
            found[rest.removeprefix("members/")] = name
    return found


def _manager(store: Store, keys: Keys) -> dict[str, Any]:
    """``manager status --json``'s document (``leader`` None when no manager leads)."""
    from gridtool.registry.records import ManagerStatus, decode

    leader = store.get(keys.manager_leader)
    try:
        who = json.loads(leader.value) if leader else {}
    except ValueError:
        who = {}
    item = store.get(keys.manager_status)
    try:
        st = decode(ManagerStatus, item.key, item.value) if item else None
    except DecodeError:
        st = None
    who = who if isinstance(who, dict) else {}
    return {"leader": who.get("leader"), "since": who.get("since"),
            "status": asdict(st) if st else None}


def check_report(store: Store, keys: Keys, member_count: int) -> dict[str, Any]:
    """``gridtool check --json``'s report on the snapshot (its endpoints: the last probe)."""
    from gridtool.health.checks import evaluate, unknown_report
    from gridtool.health.collect import collect
    from gridtool.health.params import build_params
    from gridtool.health.render import render_json

    try:
        report = evaluate(collect(store, keys, member_count), build_params())
    except Exception as exc:  # the view must load even when a check cannot run
        report = unknown_report(f"{type(exc).__name__}: {exc}")
    return render_json(report)


def _percent(part: int, whole: int) -> int:
    return max(0, min(100, round(100 * part / whole))) if whole > 0 else 0


def _finite(data: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of a decision as strict JSON (NaN and infinities as strings)."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in data.items()}


# -- guest filters and pages ------------------------------------------------------


class QueryError(ValueError):
    """A filter or page parameter that is not valid (one line, for a 400 answer)."""


@dataclass(frozen=True)
class GuestQuery:
    """Which guests the page asks for: filters (None: any), a search, a page."""

    host: str | None = None
    state: str | None = None
    pool: str | None = None
    kind: str | None = None
    search: str = ""
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> GuestQuery:
        """From a URL's query parameters; QueryError names the first bad one."""
        unknown = sorted(set(params) - {"host", "state", "pool", "kind", "q", "page",
                                        "per_page"})
        if unknown:
            raise QueryError(f"unknown parameter {unknown[0]!r}")
        state = params.get("state") or None
        if state is not None and state not in GUEST_STATES:
            raise QueryError(f"unknown state {state!r}")
        kind = params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise QueryError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
        return cls(host=params.get("host") or None, state=state,
                   pool=params.get("pool") or None, kind=kind,
                   search=params.get("q", "").strip().lower(),
                   page=_positive(params, "page", 1, 10**9),
                   per_page=_positive(params, "per_page", PER_PAGE, MAX_PER_PAGE))

    def matches(self, guest: Mapping[str, Any]) -> bool:
        kind = guest["kind"]
        return ((self.host is None or guest["host"] == self.host)
                and (self.state is None or guest["state"] == self.state)
                and (self.pool is None or guest["pool"] == self.pool)
                and (self.kind is None or kind == self.kind
                     or (self.kind == "fenced" and kind != "none"))
                and (not self.search or self.search in guest["name"].lower()
                     or self.search in guest["uuid"]))


def _positive(params: Mapping[str, str], name: str, default: int, most: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise QueryError(f"{name} must be a whole number from 1 to {most}, not {raw!r}")
    return int(raw)


def page_guests(guests: list[dict[str, Any]], query: GuestQuery) -> dict[str, Any]:
    """One page of the guests that match (a page past the last one: the last one)."""
    matched = [g for g in guests if query.matches(g)]
    pages = max(1, math.ceil(len(matched) / query.per_page))
    page = min(query.page, pages)
    start = (page - 1) * query.per_page
    return {"guests": matched[start:start + query.per_page], "total": len(matched),
            "page": page, "pages": pages, "per_page": query.per_page}
