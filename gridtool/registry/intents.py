"""Ask a host to do something (write an intent) and follow it to its outcome."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gridtool.errors import OperationFailed, Timeout
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError
from gridtool.registry.records import Intent, decode, encode
from gridtool.registry.store import Compare, Delete, Put, Store

#: How long a collected intent stays listed by ``gridtool intent list`` (under a lease of
#: its own); the agents drop finished intents nobody collected after the same time.
DONE_KEEP_S = 600


def new_id() -> str:
    """A new intent id: time-ordered, with a random tail."""
    return f"{time.time_ns():x}-{uuidlib.uuid4().hex[:6]}"


def who() -> str:
    """Who asks: user@machine, for the intent's ``by`` field and the logs."""
    return f"{os.environ.get('USER', 'root')}@{socket.gethostname()}"


@dataclass
class IntentClient:
    """Submits intents and waits for them through a watch (no polling)."""

    store: Store
    keys: Keys

    def submit(self, host: str, action: str, guest: str, name: str,
               params: dict[str, Any] | None = None, by: str | None = None) -> Intent:
        intent = Intent(id=new_id(), host=host, action=action, guest=guest, name=name,
                        created=time.time(), by=by or who(), params=params or {})
        self.store.put(self.keys.intent(host, intent.id), encode(intent))
        return intent

    def submit_once(self, intent: Intent) -> bool:
        """Write ``intent`` under its own id unless an intent of that id was ever
        written (queued, finished or collected): a step recorded before it is sent can
        be sent again by whoever finds it unsent, and runs once. False: it was there."""
        keys = (self.keys.intent(intent.host, intent.id),
                self.keys.intent_done(intent.host, intent.id))
        return self.store.txn([Compare(k, "create", 0) for k in keys],
                              [Put(keys[0], encode(intent))])

    def withdraw(self, intent: Intent) -> bool:
        """Take an unsent intent's id for good: record it finished and failed (in
        ``intents-done/``, expiring like any) unless an intent of that id was ever
        written, so that a late :meth:`submit_once` of it fails. False: it was there."""
        keys = (self.keys.intent(intent.host, intent.id),
                self.keys.intent_done(intent.host, intent.id))
        gone = replace(intent, state="failed", updated=time.time(),
                       message=intent.message or "withdrawn before it was sent")
        return self.store.txn([Compare(k, "create", 0) for k in keys],
                              [Put(keys[1], encode(gone), self.store.grant_lease(DONE_KEEP_S))])

    def collect(self, done: Intent) -> None:
        """Move a finished intent out of its host's queue into ``intents-done/``, where
        it expires after DONE_KEEP_S (one transaction: it is never in both or neither)."""
        lease = self.store.grant_lease(DONE_KEEP_S)
        self.store.txn([], [Delete(self.keys.intent(done.host, done.id)),
                            Put(self.keys.intent_done(done.host, done.id), encode(done), lease)])

    def wait(self, intent: Intent, timeout: float,
             on_state: Callable[[Intent], None] | None = None,
             host_alive: Callable[[], bool] | None = None,
             raise_failed: bool = True) -> Intent:
        """Block until the intent is done or failed; raise on failure (unless
        ``raise_failed`` is false: then return the failed intent), host loss, timeout."""
        key = self.keys.intent(intent.host, intent.id)
        changed = threading.Event()
        watch = self.store.watch_prefix(key, lambda _ev: changed.set())
        deadline = time.monotonic() + timeout
        try:
            while True:
                item = self.store.get(key)
                queued = item is not None
                if item is None:  # collected already (by whoever else waited for it)?
                    item = self.store.get(self.keys.intent_done(intent.host, intent.id))
                current = decode(Intent, key, item.value) if item else None
                if current is None:
                    raise OperationFailed(f"intent {intent.id} for {intent.host} was withdrawn")
                if on_state is not None:
                    on_state(current)
                if current.finished:
                    if queued:
                        self.collect(current)
                    if current.state == "failed" and raise_failed:
                        raise OperationFailed(f"{intent.action} {intent.name} on "
                                              f"{intent.host} failed: {current.message}")
                    return current
                if host_alive is not None and not host_alive():
                    raise OperationFailed(f"host {intent.host} is gone (its lease expired) "
                                          f"before it finished {intent.action} {intent.name}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"{intent.action} {intent.name} on {intent.host}: no outcome "
                                  f"after {timeout:g} s (intent {intent.id} left in place)")
                changed.wait(min(left, 1.0))
                changed.clear()
        finally:
            watch.cancel()


def read_intents(store: Store, keys: Keys) -> tuple[list[Intent], list[DecodeError]]:
    """Every intent the registry still has, oldest first: queued, running, or finished
    and not yet collected (``intents/``), and collected in the last DONE_KEEP_S
    (``intents-done/``). Undecodable records are returned apart, never raised."""
    found: list[Intent] = []
    errors: list[DecodeError] = []
    for prefix in (keys.all_intents, keys.intents_done):
        for item in store.list(prefix)[0]:
            try:
                found.append(decode(Intent, item.key, item.value))
            except DecodeError as exc:
                errors.append(exc)
    return sorted(found, key=lambda i: (i.created, i.id)), errors
