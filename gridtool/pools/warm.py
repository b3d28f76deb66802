"""Warm pool workers, the shell: make them, put them to sleep, wake them.

The rules (which to wake, how many to refill, which to put to sleep) are
:func:`gridtool.pools.rules.plan`'s; this carries them out through the agents' intents.
A warm worker is a pool clone recorded with ``warm`` = ``booting``. The keeper never
waits for it: :func:`start_clones` only submits the clones (cold ones too, recorded
``cloning``: a later round marks each serving once it runs, :func:`mark_awake`, or
removes it; :func:`withdraw_clone` takes the id of one its leader never sent); a later
round sees one booted and calls :func:`put_to_sleep` (recorded ``sleeping`` with the id
of its ``sleep`` intent: ``hibernate`` = libvirt managed save, ``pause`` = suspend), and
a later one
sees that intent done and calls :func:`mark_asleep` (``asleep``). :func:`refill` does
the same from start to end and waits (the bench's way of making one).
:func:`start_wake` records an asleep worker ``waking`` with the id of its ``wake``
intent, then sends that intent (a hibernated worker is started, so its restore goes
through the fences and the hook like any start; a paused one has its fences checked,
then is resumed), and returns; a later round sees the intent done and calls
:func:`mark_awake` (serving, ``warm`` ""). A template with a ready marker has a wake
count as done only once the guest writes to its console again after it
(:data:`ALIVE_TIMEOUT`), not on the stale marker of its first boot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from gridtool.config import Config
from gridtool.errors import Conflict, GridtoolError
from gridtool.pools.rules import (
    WARM_ASLEEP,
    WARM_BOOTING,
    WARM_CLONING,
    WARM_REMOVING,
    WARM_SLEEPING,
    WARM_WAKING,
    MemberRecord,
    PoolSpec,
)
from gridtool.registry import settings
from gridtool.registry.intents import IntentClient, new_id, who
from gridtool.registry.model import DecodeError
from gridtool.registry.records import Intent, decode, encode
from gridtool.registry.store import Compare, Delete, Put, Store

#: Seconds a woken worker (of a template with a ready marker) has to show it is alive.
ALIVE_TIMEOUT = 30.0


def set_member_warm(store: Store, cfg: Config, pool: str, uuid: str, warm: str, *,
                    was: tuple[str, ...] = (), intent: str = "") -> bool:
    """Record a member's ``warm`` state (and its sleep ``intent``), when it is now one of
    ``was`` (any when empty). False when the member is gone (removed, or its pool
    deleted) or in another state."""
    def change(member: MemberRecord) -> MemberRecord | None:
        if was and member.warm not in was:
            return None
        return replace(member, warm=warm, intent=intent, since=time.time())

    return _change_member(store, cfg.keys.pool_member(pool, uuid), change, attempts=5)


def _change_member(store: Store, key: str,
                   change: Callable[[MemberRecord], MemberRecord | None],
                   attempts: int = 1) -> bool:
    """Compare-and-set the member record at ``key`` to ``change(member)``, re-read up to
    ``attempts`` times when it changed meanwhile. False when it is gone or does not
    decode, when ``change`` returns None, or when every try lost its race."""
    for _ in range(attempts):
        item = store.get(key)
        if item is None:
            return False
        try:
            member = decode(MemberRecord, key, item.value)
        except DecodeError:
            return False
        new = change(member)
        if new is None:
            return False
        if store.txn([Compare(key, "mod", item.mod_revision)], [Put(key, encode(new))]):
            return True
    return False


def desire(store: Store, cfg: Config, pool: str, uuid: str, name: str, action: str,
           was: tuple[str, ...]) -> bool:
    """Set a warm worker's desired state for ``action`` (``sleep``: stopped, ``wake``:
    running) while its member is one of ``was``, guarded by the member's revision: a
    worker removed meanwhile never gets a settings record again (it would be left
    behind). False when the member is gone or in another state."""
    key = cfg.keys.pool_member(pool, uuid)
    item = store.get(key)
    if item is None or decode(MemberRecord, key, item.value).warm not in was:
        return False
    desired = settings.DESIRED_AFTER[action]
    try:
        settings.update(store, cfg.keys, uuid, name,
                        lambda s: replace(s, desired=desired, error=""),
                        guard=[Compare(key, "mod", item.mod_revision)])
    except Conflict:  # the member changed (removed, or moved on by another manager)
        return False
    return True


def put_to_sleep(store: Store, cfg: Config, pool: str, mode: str, uuid: str, name: str,
                 host: str) -> bool:
    """Submit a booted warm worker's ``sleep`` intent and record it ``sleeping`` (the
    intent is withdrawn when the member is no longer ``booting``: another manager got
    there first, or it was removed). Does not wait: :func:`mark_asleep` follows."""
    # stopped as the HA manager sees it first: a hibernated worker keeps its fences, and
    # a held fence with no settings would read as a guest that should run
    if not desire(store, cfg, pool, uuid, name, "sleep", (WARM_BOOTING,)):
        return False
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
    return [_outcome(store, cfg, intent, began, timeout) for intent, began in submitted]


def _outcome(store: Store, cfg: Config, intent: Intent, began: float,
             timeout: float) -> tuple[Intent | None, str, float]:
    """Wait for ``intent`` (submitted at monotonic ``began``) until ``began + timeout``."""
    try:
        done = IntentClient(store, cfg.keys).wait(
            intent, max(0.1, began + timeout - time.monotonic()),
            host_alive=lambda: store.get(cfg.keys.host(intent.host)) is not None)
        return done, "", time.monotonic() - began
    except GridtoolError as exc:
        return None, str(exc), time.monotonic() - began


def wake_intent(uuid: str, name: str, host: str, intent_id: str,
                alive_timeout: float = ALIVE_TIMEOUT) -> Intent:
    """The ``wake`` intent of an asleep warm worker, under the id recorded for it."""
    return Intent(intent_id, host, "wake", uuid, name, time.time(), who(),
                  params={"alive_timeout": alive_timeout})


def start_wake(store: Store, cfg: Config, pool: str, uuid: str, name: str, host: str, *,
               intent_id: str = "", alive_timeout: float = ALIVE_TIMEOUT) -> str:
    """Wake an asleep warm worker without waiting: record it ``waking`` with a new wake
    intent id, then send that intent under that id (it runs once: see
    :meth:`IntentClient.submit_once`). With ``intent_id`` (recorded by a leader that
    stopped before sending it): send it, if the member still waits for it. The id
    sent, "" when nothing was (another manager got there first, or it was removed). A
    later round sees the intent's outcome (:func:`mark_awake`, or removes it)."""
    key = cfg.keys.pool_member(pool, uuid)
    if intent_id:
        item = store.get(key)
        member = decode(MemberRecord, key, item.value) if item else None
        if member is None or (member.warm, member.intent) != (WARM_WAKING, intent_id):
            return ""
    else:
        intent_id = new_id()
        if not set_member_warm(store, cfg, pool, uuid, WARM_WAKING,
                               was=(WARM_ASLEEP, WARM_SLEEPING), intent=intent_id):
            return ""
    sent = IntentClient(store, cfg.keys).submit_once(
        wake_intent(uuid, name, host, intent_id, alive_timeout))
    return intent_id if sent else ""


def mark_awake(store: Store, cfg: Config, pool: str, uuid: str, name: str,
               was: str = WARM_WAKING) -> bool:
    """Record a waking (or cloning: ``was``) worker whose intent is done as serving: a
    woken one's guest desired running again first (while asleep the HA manager had to
    leave it stopped), then its member."""
    if was == WARM_WAKING and not desire(store, cfg, pool, uuid, name, "wake", (was,)):
        return False
    return set_member_warm(store, cfg, pool, uuid, "", was=(was,))


def withdraw_clone(store: Store, cfg: Config, pool: str, uuid: str, name: str, host: str,
                   intent_id: str) -> bool:
    """Take a cloning member's recorded clone intent id, never sent (its leader stopped
    first), so that a late send fails and the clone is never made; a later round
    removes the member as failed. False: the id was taken (sent after all), or the
    member moved on."""
    key = cfg.keys.pool_member(pool, uuid)
    item = store.get(key)
    member = decode(MemberRecord, key, item.value) if item else None
    if member is None or (member.warm, member.intent) != (WARM_CLONING, intent_id):
        return False
    return IntentClient(store, cfg.keys).withdraw(Intent(
        intent_id, host, "clone", uuid, name, time.time(), who(),
        message="withdrawn: its manager stopped before sending it"))


def start_removal(store: Store, cfg: Config, pool: str, uuid: str, name: str, host: str, *,
                  intent_id: str = "", retry: str = "") -> str:
    """Remove a worker without waiting: record it ``removing`` with a new
    ``remove_clone`` intent id (when it is in no removal yet, or in the failed one of id
    ``retry``), then send that intent under that id (it runs once:
    :meth:`IntentClient.submit_once`). With ``intent_id`` (recorded by a leader that
    stopped before sending it): send it, if the member still waits for it. The id sent,
    "" when nothing was (another manager got there first, or it is gone). A later round
    sees the intent done and forgets the worker (:func:`finish_removal`)."""
    from gridtool.clone import shell as clone
    from gridtool.clone import templates

    key = cfg.keys.pool_member(pool, uuid)
    if not intent_id:
        intent_id = new_id()
        if not _take_for_removal(store, key, intent_id, retry):
            return ""
    item = store.get(key)
    member = decode(MemberRecord, key, item.value) if item else None
    if member is None or (member.warm, member.intent) != (WARM_REMOVING, intent_id):
        return ""
    sent = IntentClient(store, cfg.keys).submit_once(clone.removal_intent(
        templates.find_clone(store, cfg.keys, uuid), host, uuid, name, pool, intent_id))
    return intent_id if sent else ""


def _take_for_removal(store: Store, key: str, intent_id: str, retry: str) -> bool:
    """Record the member at ``key`` ``removing`` under ``intent_id`` (compare-and-set on
    its revision), unless it is already in a removal other than the failed ``retry``."""
    def change(member: MemberRecord) -> MemberRecord | None:
        if member.warm == WARM_REMOVING and not (retry and member.intent == retry):
            return None
        return replace(member, warm=WARM_REMOVING, intent=intent_id, since=time.time())

    return _change_member(store, key, change)


def finish_removal(store: Store, cfg: Config, pool: str, uuid: str) -> bool:
    """Forget a worker whose removal is done: its clone record, membership and settings
    at once (while its member is still ``removing``). False: it is gone already."""
    from gridtool.clone import templates

    key = cfg.keys.pool_member(pool, uuid)
    item = store.get(key)
    if item is None or decode(MemberRecord, key, item.value).warm != WARM_REMOVING:
        return False
    template = decode(MemberRecord, key, item.value).template
    templates.forget_clone(store, cfg.keys, template, uuid, pool)
    return True


def sleep(store: Store, cfg: Config, pool: str, mode: str,
          workers: Sequence[tuple[str, str, str]], timeout: float = 60.0) -> list[str]:
    """Put booted warm workers to sleep; each one asleep is recorded so. The errors."""
    errors = []
    for uuid, name, _host in workers:
        desire(store, cfg, pool, uuid, name, "sleep", (WARM_BOOTING,))
    for (uuid, name, _host), (done, error, _s) in zip(workers, _run(
            store, cfg, "sleep", workers, {"mode": mode}, timeout), strict=True):
        if done is None:
            errors.append(f"{name}: {error}")
        else:
            set_member_warm(store, cfg, pool, uuid, WARM_ASLEEP)
    return errors


def start_clones(store: Store, cfg: Config, spec: PoolSpec, count: int,
                 exclude_hosts: Collection[str] = (), state: str = WARM_CLONING) -> list[str]:
    """Submit ``count`` clones without waiting for them, each recorded first in
    ``state`` (``cloning``: cold ones, serving once they run; ``booting``: warm ones, put
    to sleep once booted) with its clone intent's id; the errors (no host for one)."""
    from gridtool.clone import shell as clone

    results = clone.clone_guests(store, cfg, spec.template, count, pool=spec.name,
                                 name_prefix=f"{spec.name}-", exclude_hosts=exclude_hosts,
                                 warm=state, follow=False)
    return [f"{r.name}: {r.error}" for r in results if not r.ok]


def refill(store: Store, cfg: Config, spec: PoolSpec, count: int,
           exclude_hosts: Collection[str] = (), timeout: float = 120.0) -> list[str]:
    """Clone ``count`` warm workers, boot them until ready, put them to sleep, waiting
    for each step (the bench; the keeper uses :func:`start_clones`). The errors (a
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
