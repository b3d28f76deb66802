"""Templates and copy-on-write clones: the shell around :mod:`gridtool.clone.rules`.

**Template** (:func:`create_template`): the guest's host freezes its disks into read-only
golden images (``template`` intent); the template record then goes into the registry.

**Clones** (:func:`clone_guests`):

1. plan: names (skipping every name in use), a fresh UUID and MACs per clone, and hosts
   from the allocator (:func:`gridtool.placement.rules.place_many`, so each clone sees the
   hosts as left by the ones placed before it; overflow hosts only when no other host
   has room; ``prefer_labels`` add to a host's score);
2. a clone record per clone (and a pool member key for a pool) *before* anything is
   made, so its template cannot be deleted under it;
3. one ``clone`` intent per clone, all submitted at once: every host's agent works
   through its own clones (overlay, define, start) while the other hosts do theirs;
4. each clone is done when its agent reports it running in the registry.

A clone that fails leaves nothing: its agent removes the overlay and the definition it
made, and its records are deleted; the others go on. Timings per clone (seconds):
``overlay``, ``define``, ``start`` as measured by the agent, ``running`` from submitting
the intent until the registry showed the clone running (the clone's whole latency), and
``wait`` the part of it not spent in the agent's phases (behind the host's earlier
clones, and messages through etcd). ``--no-start``: ``defined`` (submitted to the
agent's outcome) instead of ``running``. A template with a ready marker: a clone is
done when its agent reports it ready (``GuestRecord.ready_at``, the marker seen on its
serial console); ``ready`` is submitted -> the registry showing that, and ``boot`` the
agent's own start -> marker seen (its clock on both ends).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from gridtool.clone import rules as cloneplan
from gridtool.clone import templates
from gridtool.clone.templates import CloneRecord, Template
from gridtool.config import Config
from gridtool.errors import Conflict, GridtoolError, OperationFailed, Timeout, UsageError
from gridtool.placement.rules import DEFAULT_POLICY, GuestNeeds, HostView, add_guest, place_many
from gridtool.placement.shell import FleetView, current_record, read_fleet
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient, new_id, who
from gridtool.registry.keys import Keys, validate_name
from gridtool.registry.model import DecodeError, GuestRecord
from gridtool.registry.model import decode as decode_guest
from gridtool.registry.records import Intent, decode
from gridtool.registry.store import Compare, Delete, Event, Store

Progress = Callable[["CloneResult | str"], None]


@dataclass(frozen=True)
class CloneResult:
    """How one clone went. ``timings``: seconds per phase (see the module docstring)."""

    name: str
    uuid: str
    host: str
    ok: bool
    error: str
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- templates


def create_template(store: Store, cfg: Config, name: str, guest: str,
                    timeout: float = 600.0, ready_marker: str = "") -> Template:
    """Freeze ``guest`` (name or uuid) as template ``name`` and record it. With
    ``ready_marker`` its clones count as up once their agent sees it on their serial
    console (``UsageError`` when the guest has no serial console writing to a file)."""
    keys = cfg.keys
    try:
        cloneplan.check_name("template", name)
        if ready_marker:
            cloneplan.check_marker(ready_marker)
    except cloneplan.ClonePlanError as exc:
        raise UsageError(str(exc)) from None
    if store.get(keys.template(name)) is not None:
        raise Conflict(f"template {name!r} already exists")
    registry = Registry(store, keys)
    live = {h.name for h in registry.list_hosts()[0]}
    rec = current_record(registry.find_guest(guest), live)
    client = IntentClient(store, keys)
    intent = client.submit(rec.host, "template", rec.uuid, rec.name, {"template": name})
    done = client.wait(intent, timeout, host_alive=lambda: _alive(store, keys, rec.host))
    result = done.params.get("result") or {}
    xml = str(result.get("xml", ""))
    template = Template(
        name=name, xml=xml, disks=list(result.get("disks", [])),
        images=dict(result.get("images", {})), memory_mib=rec.memory_mib, vcpus=rec.vcpus,
        images_dir=str(result.get("images_dir", cfg.images_dir)), source_guest=rec.uuid,
        source_name=rec.name, source_host=rec.host, created_at=time.time(),
        nics=cloneplan.interface_count(xml), macs=list(cloneplan.macs_of(xml)),
        ready_marker=ready_marker)
    try:
        if ready_marker:
            try:
                cloneplan.check_ready(xml, ready_marker)
            except cloneplan.ClonePlanError as exc:
                raise UsageError(f"template {name}: {exc}") from None
        templates.create_template(store, keys, template)
    except Conflict:
        raise  # a record written meanwhile names the same directory: leave the images
    except GridtoolError:  # nothing half-made: the golden images go again
        client.submit(rec.host, "remove_template", rec.uuid, rec.name, {"template": name})
        raise
    return template


def delete_template(store: Store, cfg: Config, name: str, timeout: float = 120.0) -> None:
    """Delete a template and its golden images; ``Conflict`` while clones or pools use
    it. A live host's agent deletes the images (they are on shared storage)."""
    keys = cfg.keys
    template = templates.get_template(store, keys, name)
    clones = templates.clones_of(store, keys, name)
    if clones:
        shown = ", ".join(c.name for c in clones[:5]) + (" ..." if len(clones) > 5 else "")
        raise Conflict(f"template {name} has {len(clones)} clone(s) ({shown}): "
                       "remove them first")
    pools = templates.pools_using(store, keys, name)
    if pools:
        raise Conflict(f"template {name} is used by pool(s) {', '.join(pools)}")
    hosts = sorted(h.name for h in Registry(store, keys).list_hosts()[0])
    if not hosts:
        raise OperationFailed(f"no live host to delete the golden images of {name}")
    host = template.source_host if template.source_host in hosts else hosts[0]
    client = IntentClient(store, keys)
    intent = client.submit(host, "remove_template", template.source_guest, name,
                           {"template": name})
    client.wait(intent, timeout, host_alive=lambda: _alive(store, keys, host))
    templates.delete_template(store, keys, name)


# --------------------------------------------------------------------------- clones


@dataclass
class _Job:
    """One clone under way."""

    record: CloneRecord
    xml: str
    overlays: dict[str, dict[str, str]]  # target -> {"path": overlay, "backing": golden}
    intent: Intent | None = None
    submitted: float = 0.0


def clone_guests(store: Store, cfg: Config, template: str, count: int, *,
                 pool: str | None = None, name_prefix: str | None = None,
                 on: str | None = None, exclude_hosts: Collection[str] = (),
                 prefer_labels: Sequence[str] = ("dedicated", "overflow"),
                 start: bool = True, timeout: float = 60.0,
                 progress: Progress | None = None, warm: str = "",
                 follow: bool = True) -> list[CloneResult]:
    """Make ``count`` clones of ``template``; one :class:`CloneResult` per clone (in name
    order). ``on``: every clone on that host; else placement over the live hosts minus
    ``exclude_hosts``; hosts carrying ``prefer_labels`` score higher (the overflow label
    is never a preference: overflow hosts are used only when no other host has room).
    ``warm``: the pool members are recorded with that ``warm`` state (warm workers).
    ``follow`` false: return once the records are written and the intents submitted
    (each result ``ok`` with no timings; the caller watches the registry itself).
    ``progress`` gets ``"NAME: what"`` lines as clones move along and
    each :class:`CloneResult` as it is settled. Raises only for a bad request (unknown
    template or host, bad count or prefix); failed clones are results with ``ok`` false.
    """
    keys, emit = cfg.keys, progress or (lambda _item: None)
    tpl = templates.get_template(store, keys, template)
    if pool is not None:
        _valid("pool", pool)
    fleet = read_fleet(store, keys)
    others = templates.clones_of(store, keys)
    in_use = {g.name for g in fleet.guests} | {c.name for c in others}
    try:
        names = cloneplan.clone_names(template, count, in_use, name_prefix)
    except cloneplan.ClonePlanError as exc:
        raise UsageError(str(exc)) from None
    excluded = set(exclude_hosts) if on is None else set(fleet.records) - {fleet.host(on).name}
    hosts = _with_pending(tuple(h for h in fleet.hosts if h.name not in excluded), fleet,
                          others, {**_templates_of(store, keys, others, tpl.name), tpl.name: tpl})
    preferred = frozenset(prefer_labels) - {DEFAULT_POLICY.overflow_label}
    needs = [GuestNeeds(n, tpl.memory_mib, tpl.vcpus, preferred_labels=preferred)
             for n in names]
    placements, _ = place_many(needs, hosts)
    idents = cloneplan.identities(names, tpl.nics, random.SystemRandom(), tpl.macs)
    results: dict[str, CloneResult] = {}
    jobs: list[_Job] = []
    now = time.time()
    for ident, placement in zip(idents, placements, strict=True):
        if placement.host is None:
            results[ident.name] = CloneResult(ident.name, ident.uuid, "", False,
                                              f"no host for it: {placement.reason}", {})
            emit(results[ident.name])
            continue
        jobs.append(_plan_job(tpl, ident, placement.host, pool or "", now, warm))
    if jobs:
        for job in jobs:
            emit(f"{job.record.name}: placed on {job.record.host}")
        run = _Run(store, cfg, jobs, start, timeout, emit, ready=bool(tpl.ready_marker))
        results.update(run.run() if follow else run.submit())
    return [results[n] for n in names]


def _templates_of(store: Store, keys: Keys, clones: list[CloneRecord],
                  known: str) -> dict[str, Template]:
    """The templates of ``clones`` other than ``known`` (already read)."""
    found = {}
    for name in {c.template for c in clones} - {known}:
        try:
            found[name] = templates.get_template(store, keys, name)
        except GridtoolError:
            continue  # gone or corrupt: its clones are not counted
    return found


def _with_pending(hosts: tuple[HostView, ...], fleet: FleetView, clones: list[CloneRecord],
                  made_from: dict[str, Template]) -> tuple[HostView, ...]:
    """The hosts with clones still being made (by another call: a clone record but no
    guest record yet) counted as running, so concurrent calls do not crowd one host."""
    known = {(g.host, g.uuid) for g in fleet.guests}
    pending: dict[str, list[GuestNeeds]] = {}
    for c in clones:
        tpl = made_from.get(c.template)
        if tpl is not None and (c.host, c.uuid) not in known:
            pending.setdefault(c.host, []).append(GuestNeeds(c.name, tpl.memory_mib,
                                                             tpl.vcpus))
    out = []
    for host in hosts:
        for needs in pending.get(host.name, ()):
            host = add_guest(host, needs)
        out.append(host)
    return tuple(out)


def _valid(kind: str, name: str) -> str:
    try:
        return validate_name(kind, name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _plan_job(tpl: Template, ident: cloneplan.CloneIdentity, host: str, pool: str,
              now: float, warm: str = "") -> _Job:
    overlays = {t: {"path": cloneplan.overlay_path(tpl.images_dir, host, ident.uuid, t),
                    "backing": tpl.images[t]} for t in tpl.disks}
    xml = cloneplan.rewrite(tpl.xml, ident, {t: o["path"] for t, o in overlays.items()},
                            tpl.ready_marker)
    record = CloneRecord(ident.uuid, ident.name, tpl.name, host, now, pool,
                         [o["path"] for o in overlays.values()], warm, new_id())
    return _Job(record, xml, overlays)


class _Run:
    """Submit every clone intent at once, follow each host's intents in order on its own
    thread, and watch the hosts' guest records for the clones to be reported running
    (with ``ready``: running and past their ready marker)."""

    def __init__(self, store: Store, cfg: Config, jobs: list[_Job], start: bool,
                 timeout: float, emit: Progress, ready: bool = False) -> None:
        self.store, self.cfg, self.keys, self.jobs = store, cfg, cfg.keys, jobs
        self.start, self.timeout, self.emit, self.ready = start, timeout, emit, ready
        self.client = IntentClient(store, self.keys)
        self.running: dict[str, threading.Event] = {j.record.uuid: threading.Event()
                                                    for j in jobs}
        self.running_at: dict[str, float] = {}
        self.ready_at: dict[str, tuple[float, float]] = {}  # (monotonic, agent's ready_at)
        self.emit_lock = threading.Lock()

    def submit(self) -> dict[str, CloneResult]:
        """Record every clone (with its clone intent's id), then send that intent under
        that id (create-only: a new leader that withdrew an unsent one wins, and the
        clone is never made); results without waiting."""
        for job in self.jobs:  # recorded first: the template cannot go away under them
            templates.put_clone(self.store, self.keys, job.record)
        results = {}
        for job in self.jobs:
            rec = job.record
            job.submitted = time.monotonic()
            job.intent = Intent(rec.intent, rec.host, "clone", rec.uuid, rec.name, time.time(),
                                who(), params={"xml": job.xml, "overlays": job.overlays,
                                               "template": rec.template, "start": self.start})
            sent = self.client.submit_once(job.intent)
            results[rec.name] = CloneResult(rec.name, rec.uuid, rec.host, sent,
                                            "" if sent else "withdrawn before it was sent", {})
        return results

    def run(self) -> dict[str, CloneResult]:
        watch = self.store.watch_prefix(self.keys.guests, self._guest_event) \
            if self.start else None
        try:
            unsent = {n: r for n, r in self.submit().items() if not r.ok}
            by_host: dict[str, list[_Job]] = {}
            for job in self.jobs:
                if job.record.name not in unsent:
                    by_host.setdefault(job.record.host, []).append(job)
            if not by_host:
                return unsent
            with ThreadPoolExecutor(max_workers=len(by_host)) as pool:
                done = pool.map(self._follow_host, by_host.values())
                return {**unsent, **{r.name: r for results in done for r in results}}
        finally:
            if watch is not None:
                watch.cancel()

    def _guest_event(self, ev: Event) -> None:
        uuid = ev.key.rsplit("/", 1)[-1]
        flag = self.running.get(uuid)
        if flag is None or flag.is_set() or ev.kind != "put":
            return
        try:
            rec = decode_guest(GuestRecord, ev.key, ev.value)
        except DecodeError:
            return
        if rec.state != "running":
            return
        self.running_at.setdefault(uuid, time.monotonic())
        if not self.ready:
            flag.set()
        elif rec.ready_at > 0:
            self.ready_at[uuid] = (time.monotonic(), rec.ready_at)
            flag.set()

    def _say(self, item: CloneResult | str) -> None:
        with self.emit_lock:
            self.emit(item)

    def _follow_host(self, jobs: list[_Job]) -> list[CloneResult]:
        deadline = time.monotonic() + self.timeout
        return [self._follow(job, deadline) for job in jobs]

    def _follow(self, job: _Job, deadline: float) -> CloneResult:
        rec, intent = job.record, job.intent
        assert intent is not None

        told = False

        def on_state(i: Intent) -> None:
            nonlocal told
            if i.state == "running" and not told:
                told = True
                self._say(f"{rec.name}: cloning on {rec.host}")

        try:
            done = self.client.wait(intent, max(0.1, deadline - time.monotonic()),
                                    on_state=on_state, raise_failed=False,
                                    host_alive=lambda: _alive(self.store, self.keys, rec.host))
        except (OperationFailed, Timeout) as exc:
            return self._settle(job, {}, self._lost(job, str(exc)))
        timings = {k: float(v) for k, v in
                   ((done.params.get("result") or {}).get("timings") or {}).items()}
        if done.state == "failed":
            templates.forget_clone(self.store, self.keys, rec.template, rec.uuid, rec.pool)
            return self._settle(job, timings, done.message)
        work = sum(timings.get(p, 0.0) for p in ("overlay", "define", "start"))
        if not self.start:  # the agent's outcome time (NTP-close clocks) ends it
            timings["defined"] = max(work, done.updated - done.created)
            timings["wait"] = timings["defined"] - work
            return self._settle(job, timings, "")
        what = "ready" if self.ready else "running"
        self._say(f"{rec.name}: started on {rec.host}, waiting for its agent to report it "
                  f"{what}")
        if not self.running[rec.uuid].wait(max(0.0, deadline - time.monotonic())):
            error = f"not reported {what} within {self.timeout:g} s"
            try:
                remove_clone(self.store, self.cfg, rec.host, rec.uuid, rec.name,
                             pool=rec.pool or None, timeout=max(5.0, self.timeout / 4))
            except (OperationFailed, Timeout) as exc:
                error += f"; removing it failed: {exc}"
            return self._settle(job, timings, error)
        timings["running"] = self.running_at[rec.uuid] - job.submitted
        timings["wait"] = max(0.0, timings["running"] - work)
        if self.ready:  # the agent's clock on both ends: started -> marker seen
            seen, agent_ready = self.ready_at[rec.uuid]
            timings["ready"] = seen - job.submitted
            timings["boot"] = max(0.0, agent_ready - done.updated)
        return self._settle(job, timings, "")

    def _lost(self, job: _Job, error: str) -> str:
        """The host stopped answering or the deadline passed. An intent no agent has
        picked up is withdrawn (nothing was made); otherwise the records stay so the
        clone is not forgotten (the agent cleans up a failed clone itself)."""
        rec, intent = job.record, job.intent
        assert intent is not None
        key = self.keys.intent(rec.host, intent.id)
        item = self.store.get(key)
        try:
            state = decode(Intent, key, item.value).state if item else "pending"
        except DecodeError:
            state = "pending"
        if state == "pending" and (item is None or self.store.txn(
                [Compare(key, "mod", item.mod_revision)], [Delete(key)])):
            templates.forget_clone(self.store, self.keys, rec.template, rec.uuid, rec.pool)
            return f"{error} (withdrawn: nothing was made)"
        return (f"{error}; the clone may be left on {rec.host}: remove it with "
                f"gridtool.clone.shell.remove_clone once the host answers")

    def _settle(self, job: _Job, timings: dict[str, float], error: str) -> CloneResult:
        rec = job.record
        result = CloneResult(rec.name, rec.uuid, rec.host, not error, error, timings)
        self._say(result)
        return result


def _alive(store: Store, keys: Keys, host: str) -> bool:
    return store.get(keys.host(host)) is not None


def removal_intent(record: CloneRecord | None, host: str, uuid: str, name: str, pool: str,
                   intent_id: str = "") -> Intent:
    """A clone's ``remove_clone`` intent (params: its template, pool and overlays), under
    ``intent_id`` (one recorded for it before it was sent, so it runs once) or a new id."""
    params = {"template": record.template if record else "", "pool": pool,
              "overlays": record.overlays if record else []}
    return Intent(intent_id or new_id(), host, "remove_clone", uuid, name, time.time(), who(),
                  params=params)


def remove_clone(store: Store, cfg: Config, host: str, uuid: str, name: str, *,
                 pool: str | None = None, timeout: float = 60.0,
                 intent_id: str = "") -> None:
    """Destroy and undefine a clone on ``host``, delete its overlays and forget its clone
    record, pool membership and settings (one transaction, once it is gone).

    ``intent_id``: the removal's id recorded in its pool member (``removing``): that
    intent is sent unless it was already (:meth:`IntentClient.submit_once`) and waited
    for, so a removal under way is not sent twice.

    When ``host`` is not alive, its pool membership is dropped at once and the intent
    stays queued: the host's agent carries it out (and forgets the clone record) when it
    comes back; its settings stay (until then a hibernated warm worker's desired
    ``stopped`` keeps the HA manager from starting it) and ``gridtool check`` reports
    them once no host reports the guest (``SETTINGS_ORPHAN``). Raises
    ``OperationFailed`` if the agent reports failure, ``Timeout``.
    """
    keys = cfg.keys
    record = templates.find_clone(store, keys, uuid)
    pool = pool if pool is not None else (record.pool if record else None)
    client = IntentClient(store, keys)
    intent = removal_intent(record, host, uuid, name, pool or "", intent_id)
    client.submit_once(intent)  # (False: that id was sent already; it is waited for)
    if pool:
        store.delete(keys.pool_member(pool, uuid))
    if not _alive(store, keys, host):
        return
    client.wait(intent, timeout, host_alive=lambda: _alive(store, keys, host))
    if record is not None:  # its clone record, membership and settings, at once
        templates.forget_clone(store, keys, record.template, uuid, pool or "")
    else:
        store.delete(keys.guest_settings(uuid))
