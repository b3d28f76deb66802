"""The manager's pool round: keep every pool at its size (shell around ``poolplan``).

Every ``period`` seconds (and at once when a host's record vanishes, a pool's spec
changes, a load report says a surge began, or every recent reporter of a pool has
reported since its last round) the leading manager reads each pool's
spec, members, the live hosts and the load reports, asks
:func:`gridtool.pools.rules.plan` what to do, records the result
(``pools/<name>/status``) and carries the actions out through the clone API
(``gridtool.clone.shell``).

The round runs on its own thread, one round at a time, and sends clones, wakes, sleeps
and removals without waiting for them (each recorded in its member first; a later round
sees the outcome), while the manager's fencing/HA round keeps its short period.
``Manager.tick`` only starts a round when the previous one has finished and ``period``
has passed; it never waits for one. Each
action is bounded by ``action_timeout``; before each one the round checks that this
manager still leads, and a failed action is logged and planned again next round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from gridtool import supervise
from gridtool.clock import SYSTEM, Clock
from gridtool.config import Config
from gridtool.errors import GridtoolError, NotFound
from gridtool.pools import shell as pools
from gridtool.pools import warm
from gridtool.pools.flex import Decision, FlexState
from gridtool.pools.rules import (
    DEFAULT_GRACE,
    WARM_BOOTING,
    WARM_CLONING,
    Action,
    Clone,
    MarkAsleep,
    MarkAwake,
    MarkRemoved,
    MemberClass,
    Plan,
    PoolSpec,
    PoolStatus,
    Remove,
    Sleep,
    Wake,
    Withdraw,
    aggregate,
    all_reported,
    classify,
    direction,
    flex_step,
    is_serving,
    plan,
    target_size,
)
from gridtool.registry.keys import Keys
from gridtool.registry.records import encode
from gridtool.registry.store import Compare, Event, Put, Store, Watch

log = logging.getLogger("gridtool.pools.shell")

DEFAULT_PERIOD = 10.0
#: A reporter counts as reporting (a round waits for its report) while its last report
#: is at most this many periods old.
REPORTERS_WINDOW = 1.5


class _Deposed(Exception):
    """This manager no longer leads (or is stopping): drop the rest of the round."""


class _Skip(Exception):
    """The pool was deleted or changed during the round: leave it to the next round."""


class Leader(Protocol):
    """What a pool round needs from the manager that runs it: whether it leads (its
    election key's create revision, 0 when not) and the compare that guards its writes."""

    @property
    def leader_rev(self) -> int: ...

    @property
    def guard(self) -> list[Compare]: ...


class PoolKeeper:
    """Runs pool rounds for a leader (the :class:`gridtool.ha.manager.Manager`) while it
    leads. ``threaded=False`` runs each round inline in ``maybe_run`` (the simulator)."""

    def __init__(self, store: Store, cfg: Config, leader: Leader,
                 period: float = DEFAULT_PERIOD, action_timeout: float = 60.0,
                 grace: float = DEFAULT_GRACE, clock: Clock = SYSTEM,
                 threaded: bool = True, wake: Callable[[], None] | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.keys = cfg.keys
        self.leader = leader
        self.period = period
        self.action_timeout = action_timeout
        self.grace = grace
        self.clock = clock
        self.threaded = threaded
        self.errors: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._last = clock.monotonic() - period
        self._stop = threading.Event()
        self._due = threading.Event()
        self._surge = threading.Event()  # a surge report: a round now, off the period
        self._reported: set[str] = set()  # pools with a new load report since the round
        self._reported_lock = threading.Lock()
        self._wake = wake or (lambda: None)  # the leader's loop: call maybe_run soon
        self._watches: list[Watch] = []

    # -- scheduling (called from Manager.tick / Manager.run) -----------------

    def maybe_run(self) -> None:
        """Start a round on a worker thread if one is due and none is running: every
        ``period``, and at once when a host vanishes, a pool spec changes, a surge is
        reported or a pool's reporters have all reported since its last round (those
        rounds leave the period's rounds where they were; one of those that finds no
        report holds the pool and leaves its reports' window open)."""
        if self._stop.is_set() or not self.leader.leader_rev:
            return
        if not self._watches:
            self._watches = [self.store.watch_prefix(self.keys.hosts, self._on_host),
                             self.store.watch_prefix(self.keys.pools, self._on_pool)]
        if self.busy:
            return
        scheduled = self._due.is_set() or \
            self.clock.monotonic() - self._last >= self.period
        if not scheduled and not self._surge.is_set() and not self._reports_complete():
            return
        self._surge.clear()
        if scheduled:
            self._due.clear()
            self._last = self.clock.monotonic()
        if not self.threaded:
            self.round()
            return
        self._thread = supervise.thread(self._round_then_wake, "pool-round", logger=log)
        self._thread.start()

    def _round_then_wake(self) -> None:
        """A round; then, if a surge, a report or a host's loss came in while it ran
        (``maybe_run`` found it busy), have the leader's loop look again now, not a
        period on."""
        self.round()
        if self._surge.is_set() or self._due.is_set() or self._reported:
            self._wake()

    def _reports_complete(self) -> bool:
        """A pool with new load reports has one from every recent reporter since its
        last round (:func:`gridtool.pools.rules.all_reported`): decide on them now, not
        up to a period later at the rounds' own phase."""
        with self._reported_lock:
            pending, self._reported = self._reported, set()
        now = self.clock.wall()
        for name in sorted(pending):
            try:
                if pools.get(self.store, self.keys, name).policy != "flex":
                    continue  # (a fixed pool's size does not follow its reports)
                status = pools.status(self.store, self.keys, name)
                reports = pools.samples(self.store, self.keys, name)
            except NotFound:
                continue
            except GridtoolError as exc:
                log.warning("event=pool_reports_unread pool=%s error=%s", name, exc)
                continue
            if all_reported(reports, status.samples_until if status else 0.0, now,
                            REPORTERS_WINDOW * self.period):
                return True
        return False

    def _on_host(self, event: Event) -> None:
        if event.kind == "delete":  # a host's lease expired: replace its workers now
            self._due.set()

    def _on_pool(self, event: Event) -> None:
        if event.key.endswith("/spec"):  # created, scaled or deleted
            self._due.set()
        elif event.kind == "put" and "/samples/" in event.key:
            if is_surge(event.value):
                self._surge.set()
            else:
                with self._reported_lock:
                    self._reported.add(event.key[len(self.keys.pools):].split("/", 1)[0])
            self._wake()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """No new rounds or actions; wait up to ``timeout`` for the running action."""
        self._stop.set()
        for watch in self._watches:
            watch.cancel()
        self._watches = []
        if self._thread is not None:
            self._thread.join(timeout)

    # -- one round -----------------------------------------------------------

    def round(self) -> None:
        """Tend every pool once (errors are logged, the next round tries again)."""
        try:
            specs = pools.list_specs(self.store, self.keys)
        except GridtoolError as exc:
            log.warning("event=pool_round_failed error=%s", exc)
            return
        for spec in specs:
            try:
                self.tend(spec)
            except _Deposed:
                return
            except _Skip as exc:
                log.info("event=pool_skipped pool=%s reason=%s", spec.name, exc)
            except GridtoolError as exc:
                log.warning("event=pool_round_failed pool=%s error=%s", spec.name, exc)
                self.errors[spec.name] = str(exc)
            except Exception:  # a bug must not end the manager's pool rounds for good
                log.exception("event=pool_round_crashed pool=%s", spec.name)

    def tend(self, spec: PoolSpec) -> Plan:
        """Plan one pool, record the status, carry the actions out."""
        store, keys = self.store, self.keys
        now = self.clock.wall()
        before = pools.status(store, keys, spec.name)
        hosts, views = pools.observe(store, keys, spec.name)
        memory = _worker_memory(store, keys, spec.template)
        live = {h.name: h for h in hosts}
        # warm workers are not serving: neither ready nor starting for the flex policy
        # (one being woken is: starting)
        classes = Counter(classify(v, live, now, self.grace) for v in views if is_serving(v))
        decision, state = None, FlexState()
        if spec.policy == "flex":
            decision, state = self._flex(spec, before, classes, now)
        target = spec.clamp(decision.desired) if decision else target_size(spec, before)
        result = plan(spec, target, views, hosts, now=now, grace=self.grace,
                      worker_memory_mib=memory,
                      marker=bool(spec.warm or any(v.warm for v in views))
                      and _has_marker(store, keys, spec.template))
        self._record(spec, before, result, decision, state, now)
        if result.actions:
            log.info("event=pool_plan pool=%s target=%s ready=%s starting=%s lost=%s "
                     "actions=%s", spec.name, result.target, result.ready, result.starting,
                     result.lost, ",".join(type(a).__name__.lower() for a in result.actions))
        for action in result.actions:  # (wakes first: the plan puts them first)
            self._act(spec, action)
        return result

    def _flex(self, spec: PoolSpec, before: PoolStatus | None, classes: Counter,
              now: float) -> tuple[Decision | None, FlexState]:
        """Feed the reports since the last round to the pool's policy."""
        state = FlexState()
        if before is not None and before.flex_state:
            try:
                state = FlexState.from_dict(before.flex_state)
            except (TypeError, ValueError):
                log.warning("event=pool_flex_state_reset pool=%s", spec.name)
        reports = pools.samples(self.store, self.keys, spec.name)
        if before is not None and before.samples_until:
            start = before.samples_until
        else:  # first round (of a new pool or after a lost status): every live report
            start = min((s.timestamp - s.interval for s in reports), default=now - self.period)
        load = aggregate(reports, start, now)
        decision, state = flex_step(spec, state, load, classes[MemberClass.READY],
                                    classes[MemberClass.STARTING], now)
        if decision is not None:
            log.info("event=pool_flex pool=%s direction=%s desired=%s load=%.2f reason=%s",
                     spec.name, direction(decision), decision.desired, decision.offered_load,
                     decision.reason)
        return decision, state

    def _record(self, spec: PoolSpec, before: PoolStatus | None, result: Plan,
                decision: Decision | None, state: FlexState, now: float) -> None:
        counts = dict(before.decisions) if before else {}
        last: dict[str, Any] = dict(before.decision) if before else {}
        if decision is not None:
            counts[direction(decision)] = counts.get(direction(decision), 0) + 1
            last = {**decision.to_dict(), "direction": direction(decision)}
        notes = [self.errors.pop(spec.name, "")]
        if result.short:
            notes.append(f"no room for {result.short} worker(s)")
        failure, failed_at = (before.failure, before.failed_at) if before else ("", 0.0)
        if result.failures:
            notes += result.failures
            failure, failed_at = "; ".join(result.failures[:3]), now
            log.warning("event=pool_member_failed pool=%s failures=%s", spec.name,
                        " | ".join(result.failures))
        status = PoolStatus(
            spec.name, now, result.target, result.ready, result.starting, result.lost,
            "; ".join(n for n in notes if n),
            samples_until=_decided_until(spec, before, decision, now),
            flex_state=state.to_dict() if spec.policy == "flex" else {},
            decision=last, decisions=counts, warm=result.warm, warming=result.warming,
            failure=failure, failed_at=failed_at)
        spec_item = self.store.get(self.keys.pool(spec.name))
        if spec_item is None:
            raise _Skip("deleted")
        key = self.keys.pool_status(spec.name)
        guard = [*self.leader.guard, Compare(spec_item.key, "mod", spec_item.mod_revision)]
        if not self.store.txn(guard, [Put(key, encode(status))]):
            if not self._leading():
                raise _Deposed
            raise _Skip("changed during the round")

    # -- carrying out --------------------------------------------------------

    def _leading(self) -> bool:
        if self._stop.is_set() or not self.leader.leader_rev:
            return False
        item = self.store.get(self.keys.manager_leader)
        return item is not None and item.create_revision == self.leader.leader_rev

    def _act(self, spec: PoolSpec, action: Action) -> None:
        if not self._leading():
            raise _Deposed
        if self.store.get(self.keys.pool(spec.name)) is None:
            raise _Skip("deleted")
        try:
            self._do(spec, action)
        except GridtoolError as exc:
            log.warning("event=pool_action_failed pool=%s action=%s error=%s", spec.name,
                        type(action).__name__.lower(), exc)
            self.errors[spec.name] = f"{type(action).__name__.lower()}: {exc}"

    def _do(self, spec: PoolSpec, action: Action) -> None:
        from gridtool.clone import shell as clone  # imported on first use (agent startup)

        if isinstance(action, Clone):  # submitted only: a later round sees each one run
            errors = warm.start_clones(self.store, self.cfg, spec, action.count,
                                       action.exclude_hosts,
                                       WARM_BOOTING if action.warm else WARM_CLONING)
            log.info("event=pool_%s pool=%s count=%s failed=%s reason=%s",
                     "warm_refill" if action.warm else "clone", spec.name, action.count,
                     len(errors), action.reason)
            if errors:
                self.errors[spec.name] = ("warm: " if action.warm else "clone: ") + \
                    "; ".join(errors[:3])
            return
        if isinstance(action, Wake):  # sent only: a later round sees its outcome
            intent_id = warm.start_wake(
                self.store, self.cfg, spec.name, action.uuid, action.name, action.host,
                intent_id=action.intent, alive_timeout=warm.ALIVE_TIMEOUT if _has_marker(
                    self.store, self.keys, spec.template) else 0.0)
            log.info("event=pool_wake pool=%s guest=%s host=%s intent=%s reason=%s",
                     spec.name, action.name, action.host, intent_id or "-", action.reason)
            return
        if isinstance(action, MarkAwake):
            if warm.mark_awake(self.store, self.cfg, spec.name, action.uuid, action.name,
                               action.was):
                log.info("event=pool_serving pool=%s guest=%s host=%s after=%s", spec.name,
                         action.name, action.host, action.was)
            return
        if isinstance(action, Withdraw):
            taken = warm.withdraw_clone(self.store, self.cfg, spec.name, action.uuid,
                                        action.name, action.host, action.intent)
            log.info("event=pool_clone_withdrawn pool=%s guest=%s host=%s intent=%s "
                     "taken=%s", spec.name, action.name, action.host, action.intent, taken)
            return
        if isinstance(action, Sleep):
            sent = warm.put_to_sleep(self.store, self.cfg, spec.name, spec.warm_mode,
                                     action.uuid, action.name, action.host)
            log.info("event=pool_warm_sleep pool=%s guest=%s host=%s mode=%s sent=%s",
                     spec.name, action.name, action.host, spec.warm_mode, sent)
            return
        if isinstance(action, MarkAsleep):
            warm.mark_asleep(self.store, self.cfg, spec.name, action.uuid)
            log.info("event=pool_warm_asleep pool=%s guest=%s host=%s", spec.name,
                     action.name, action.host)
            return
        if isinstance(action, Remove):  # sent only: a later round sees it done
            intent_id = warm.start_removal(self.store, self.cfg, spec.name, action.uuid,
                                           action.name, action.host, intent_id=action.intent,
                                           retry=action.retry)
            log.info("event=pool_remove pool=%s guest=%s host=%s intent=%s reason=%s",
                     spec.name, action.name, action.host, intent_id or "-", action.reason)
            return
        if isinstance(action, MarkRemoved):
            if warm.finish_removal(self.store, self.cfg, spec.name, action.uuid):
                log.info("event=pool_removed pool=%s guest=%s host=%s", spec.name,
                         action.name, action.host)
            return
        if action.intent:  # one being removed on a host that is gone: its removal waits
            warm.start_removal(self.store, self.cfg, spec.name, action.uuid, action.name,
                               action.host, intent_id=action.intent)  # (if never sent)
            self.store.delete(self.keys.pool_member(spec.name, action.uuid))
            log.info("event=pool_forget pool=%s guest=%s host=%s reason=%s", spec.name,
                     action.name, action.host, action.reason)
            return
        # Forget: for a host that is gone, remove_clone drops the membership at once and
        # leaves the removal queued for that host's agent, should it return.
        with contextlib.suppress(NotFound):  # already gone: just drop the membership
            clone.remove_clone(self.store, self.cfg, action.host, action.uuid,
                               action.name, pool=spec.name, timeout=self.action_timeout)
        self.store.delete(self.keys.pool_member(spec.name, action.uuid))
        log.info("event=pool_%s pool=%s guest=%s host=%s reason=%s",
                 type(action).__name__.lower(), spec.name, action.name, action.host,
                 action.reason)


def _decided_until(spec: PoolSpec, before: PoolStatus | None, decision: Decision | None,
                   now: float) -> float:
    """Up to when a flex pool's reports were decided on: ``now`` after a decision; a
    round without reports leaves it where it was, so the next decision's load covers
    all the time since the last one (not the last moment after a round that saw none:
    a report decided on right after such a round would weigh as a fraction of a second)."""
    if spec.policy != "flex":
        return 0.0
    return now if decision is not None else (before.samples_until if before else 0.0)


def is_surge(raw: bytes) -> bool:
    """A load report written at once on a surge (a record that does not decode: no)."""
    try:
        return json.loads(raw).get("surge") is True
    except (ValueError, AttributeError):
        return False


def _has_marker(store: Store, keys: Keys, template: str) -> bool:
    """The template's clones print a ready marker (so a wake can be checked alive)."""
    from gridtool.clone import templates

    try:
        return bool(templates.get_template(store, keys, template).ready_marker)
    except NotFound:
        return False


def _worker_memory(store: Store, keys: Keys, template: str) -> int | None:
    """The template's memory (bounds how many clones fit); None when it is unknown (no
    clones can be made then, but the pool can still shrink and forget lost workers)."""
    from gridtool.clone import templates

    try:
        return templates.get_template(store, keys, template).memory_mib
    except NotFound:
        return None
