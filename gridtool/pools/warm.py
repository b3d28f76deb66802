"""Warm pool workers, the shell: make them, put them to sleep, wake them.

The rules (which to wake, how many to refill, which to put to sleep) are
:func:`gridtool.pools.rules.plan`'s; this carries them out through the agents' intents.
A warm worker is a pool clone recorded with ``warm`` = ``booting``. The keeper never
waits for it: :func:`start_refill` only submits the clones; a later round sees one
booted and calls :func:`put_to_sleep` (recorded ``sleeping`` with the id of its ``sleep``
intent: ``hibernate`` = libvirt managed save, ``pause`` = suspend), and a later one
sees that intent done and calls :func:`mark_asleep` (``asleep``). :func:`refill` does
the same from start to end and waits (the bench's way of making one).
:func:`wake` sends ``wake`` intents (a hibernated worker is started, so its restore
goes through the fences and the hook like any start; a paused one has its fences
checked, then is resumed) and records the woken workers as serving (``warm`` "").
A template with a ready marker has a wake count as done only once the guest writes
to its console again after it (:data:`ALIVE_TIMEOUT`), not on the stale marker of its
first boot.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gridtool.config import Config
from gridtool.errors import GridtoolError
from gridtool.pools.rules import (
    WARM_ASLEEP,
    WARM_BOOTING,
    WARM_FAILED,
    WARM_SLEEPING,
    MemberRecord,
    PoolSpec,
)
from gridtool.registry import settings
from gridtool.registry.intents import IntentClient
from gridtool.registry.model import DecodeError
from gridtool.registry.records import Intent, decode, encode
from gridtool.registry.store import Compare, Delete, Put, Store

#: Seconds a woken worker (of a template with a ready marker) has to show it is alive.
ALIVE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Woken:
    """How one wake went: ``timings`` from the agent (``wake``: the libvirt call,
    ``alive``: to the guest's first console output after it) and ``seconds`` from
    submitting the intent to seeing its outcome."""

    uuid: str
    name: str
    host: str
    ok: bool
    error: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def set_member_warm(store: Store, cfg: Config, pool: str, uuid: str, warm: str, *,
                    was: tuple[str, ...] = (), intent: str = "") -> bool:
    """Record a member's ``warm`` state (and its sleep ``intent``), when it is now one of
    ``was`` (any when empty). False when the member is gone (removed, or its pool
    deleted) or in another state."""
    key = cfg.keys.pool_member(pool, uuid)
    for _ in range(5):
        item = store.get(key)
        if item is None:
            return False
        try:
            member = decode(MemberRecord, key, item.value)
        except DecodeError:
            return False
        if was and member.warm not in was:
            return False
        new = replace(member, warm=warm, intent=intent, since=time.time())
        if store.txn([Compare(key, "mod", item.mod_revision)], [Put(key, encode(new))]):
            return True
    return False


def put_to_sleep(store: Store, cfg: Config, pool: str, mode: str, uuid: str, name: str,
                 host: str) -> bool:
    """Submit a booted warm worker's ``sleep`` intent and record it ``sleeping`` (the
    intent is withdrawn when the member is no longer ``booting``: another manager got
    there first, or it was removed). Does not wait: :func:`mark_asleep` follows."""
    # stopped as the HA manager sees it first: a hibernated worker keeps its fences, and
    # a held fence with no settings would read as a guest that should run
    settings.set_desired_after(store, cfg.keys, uuid, name, "sleep")
    client = IntentClient(store, cfg.keys)
    intent = client.submit(host, "sleep", uuid, name, {"mode": mode})
    if set_member_warm(store, cfg, pool, uuid, WARM_SLEEPING, was=(WARM_BOOTING,),
                       intent=intent.id):
        return True
    key = cfg.keys.intent(host, intent.id)
    item = store.get(key)
    if item is not None and decode(Intent, key, item.value).state == "pending":
        store.txn([Compare(key, "mod", item.mod_revision)], [Delete(key)])
    return False


def mark_asleep(store: Store, cfg: Config, pool: str, uuid: str) -> bool:
    """Record a sleeping warm worker whose sleep intent is done as asleep."""
    return set_member_warm(store, cfg, pool, uuid, WARM_ASLEEP, was=(WARM_SLEEPING,))


def _run(store: Store, cfg: Config, action: str, targets: Sequence[tuple[str, str, str]],
         params: dict[str, Any], timeout: float) -> list[tuple[Intent | None, str, float]]:
    """Submit ``action`` for every (uuid, name, host) at once, then wait for each: its
    finished intent (None on error), the error, seconds from submit to outcome."""
    client = IntentClient(store, cfg.keys)
    submitted = [(client.submit(host, action, uuid, name, dict(params)), time.monotonic())
                 for uuid, name, host in targets]
    deadline = time.monotonic() + timeout
    out: list[tuple[Intent | None, str, float]] = []
    for intent, began in submitted:
        try:
            done = client.wait(intent, max(0.1, deadline - time.monotonic()),
                               host_alive=lambda h=intent.host: store.get(  # type: ignore[misc]
                                   cfg.keys.host(h)) is not None)
            out.append((done, "", time.monotonic() - began))
        except GridtoolError as exc:
            out.append((None, str(exc), time.monotonic() - began))
    return out


def _timings(intent: Intent | None) -> dict[str, float]:
    result = (intent.params.get("result") or {}) if intent else {}
    return {k: float(v) for k, v in (result.get("timings") or {}).items()}


def wake(store: Store, cfg: Config, pool: str, workers: Sequence[tuple[str, str, str]], *,
         alive_timeout: float = ALIVE_TIMEOUT, timeout: float = 60.0) -> list[Woken]:
    """Wake asleep warm workers ((uuid, name, host) each) all at once; a woken one is
    recorded as serving, one whose wake failed (e.g. its saved image was stale and
    discarded) as ``failed`` (the next round removes and replaces it).
    ``alive_timeout`` 0: done when libvirt's call returns."""
    found = []
    for (uuid, name, host), (done, error, seconds) in zip(workers, _run(
            store, cfg, "wake", workers, {"alive_timeout": alive_timeout}, timeout),
            strict=True):
        if done is not None:  # (after: while asleep, the HA manager must not start it)
            settings.set_desired_after(store, cfg.keys, uuid, name, "wake")
        set_member_warm(store, cfg, pool, uuid, "" if done is not None else WARM_FAILED)
        found.append(Woken(uuid, name, host, done is not None, error, seconds,
                           _timings(done)))
    return found


def sleep(store: Store, cfg: Config, pool: str, mode: str,
          workers: Sequence[tuple[str, str, str]], timeout: float = 60.0) -> list[str]:
    """Put booted warm workers to sleep; each one asleep is recorded so. The errors."""
    errors = []
    for uuid, name, _host in workers:
        settings.set_desired_after(store, cfg.keys, uuid, name, "sleep")
    for (uuid, name, _host), (done, error, _s) in zip(workers, _run(
            store, cfg, "sleep", workers, {"mode": mode}, timeout), strict=True):
        if done is None:
            errors.append(f"{name}: {error}")
        else:
            set_member_warm(store, cfg, pool, uuid, WARM_ASLEEP)
    return errors


def start_refill(store: Store, cfg: Config, spec: PoolSpec, count: int,
                 exclude_hosts: Collection[str] = ()) -> list[str]:
    """Submit ``count`` warm clones (recorded ``booting`` first) without waiting for
    them; the errors (no host for one)."""
    from gridtool.clone import shell as clone

    results = clone.clone_guests(store, cfg, spec.template, count, pool=spec.name,
                                 name_prefix=f"{spec.name}-", exclude_hosts=exclude_hosts,
                                 warm=WARM_BOOTING, follow=False)
    return [f"{r.name}: {r.error}" for r in results if not r.ok]


def refill(store: Store, cfg: Config, spec: PoolSpec, count: int,
           exclude_hosts: Collection[str] = (), timeout: float = 120.0) -> list[str]:
    """Clone ``count`` warm workers, boot them until ready, put them to sleep, waiting
    for each step (the bench; the keeper uses :func:`start_refill`). The errors (a
    failed clone leaves nothing; one that did not go to sleep stays ``booting``)."""
    from gridtool.clone import shell as clone

    results = clone.clone_guests(store, cfg, spec.template, count, pool=spec.name,
                                 name_prefix=f"{spec.name}-", exclude_hosts=exclude_hosts,
                                 timeout=timeout, warm=WARM_BOOTING)
    errors = [f"{r.name}: {r.error}" for r in results if not r.ok]
    booted = [(r.uuid, r.name, r.host) for r in results if r.ok]
    if booted:
        errors += sleep(store, cfg, spec.name, spec.warm_mode, booted, timeout)
    return errors
