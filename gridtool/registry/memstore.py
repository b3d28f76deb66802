"""An in-memory ``Store`` with etcd's semantics, on an injected clock (simulator, tests).

What it keeps of etcd: one store revision, bumped once per write request (a transaction
is one revision however many keys it writes; a request that changes nothing bumps
nothing); per key ``create_revision`` and ``mod_revision``; leases with a TTL measured on
the injected clock, whose expiry deletes every attached key in one revision; transaction
compares on ``create`` / ``mod`` revision and ``value`` (a value compare on an absent key
fails, as in etcd); prefix watches that see every put and delete in revision order,
including deletes caused by lease expiry, and can replay history from a revision.

Time only moves when the clock says so: leases are expired lazily at the start of every
call, or explicitly with :meth:`MemStore.expire`. :meth:`MemStore.promote` extends every
lease as etcd's lessor does when a new leader takes over. Watch callbacks run
synchronously on the writer's thread, after the write, outside the store's lock.
No etcd import: the contract tests run the same cases against this and ``EtcdStore``.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gridtool.errors import LeaseGone
from gridtool.registry.store import (
    Compare,
    Delete,
    EndpointStatus,
    Event,
    Item,
    Put,
    prefix_end,
)


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


@dataclass
class _Watch:
    store: MemStore
    prefix: str
    on_event: Callable[[Event], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        self.store._forget(self)


@dataclass(frozen=True)
class Expired:
    """One lease that expired, and the keys its expiry deleted."""

    lease: int
    keys: tuple[str, ...]
    revision: int


class MemStore:
    """``gridtool.registry.store.Store`` in memory; ``clock`` gives seconds (monotonic)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._items: dict[str, Item] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self._history: list[Event] = []
        self._watches: list[_Watch] = []
        self.revision = 1  # etcd's revision of an empty store

    def unanswered_for(self) -> float:
        """Always answered: the store is in this process."""
        return 0.0

    # -- key-value -----------------------------------------------------------

    def get(self, key: str) -> Item | None:
        self.expire()
        with self._lock:
            return self._items.get(key)

    def list(self, prefix: str) -> tuple[list[Item], int]:
        return self.list_range(prefix, prefix_end(prefix))

    def list_range(self, start: str, end: str,
                   revision: int = 0) -> tuple[builtins.list[Item], int]:
        """``start <= key < end`` (``revision`` is ignored: the store keeps no history)."""
        self.expire()
        with self._lock:
            found = sorted((i for k, i in self._items.items() if start <= k < end),
                           key=lambda i: i.key)
            return found, revision or self.revision

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        self._write(lambda: [Put(key, value, lease)])
        return self.revision

    def delete(self, key: str) -> bool:
        return bool(self._write(lambda: [Delete(key)]))

    def delete_prefix(self, prefix: str) -> None:
        self._write(lambda: [Delete(k) for k in self._items if k.startswith(prefix)])

    def _write(self, ops: Callable[[], builtins.list[Put | Delete]]) -> builtins.list[Event]:
        """Apply the ops ``ops()`` lists (under the lock) as one revision."""
        self.expire()
        with self._lock:
            events = self._apply(ops())
        self._deliver(events)
        return events

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> bool:
        self.expire()
        with self._lock:
            ok = all(self._holds(c) for c in compares)
            events = self._apply(success if ok else failure)
        self._deliver(events)
        return ok

    def _holds(self, cmp: Compare) -> bool:
        item = self._items.get(cmp.key)
        if cmp.target == "value":
            return item is not None and item.value == cmp.value
        if cmp.target not in ("create", "mod"):
            raise ValueError(f"unknown compare target {cmp.target!r}")
        actual = 0 if item is None else (
            item.create_revision if cmp.target == "create" else item.mod_revision)
        return actual == cmp.value

    def _apply(self, ops: Sequence[Put | Delete]) -> builtins.list[Event]:
        """Apply ``ops`` as one revision (caller holds the lock); return the events."""
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseGone(f"memstore: requested lease {op.lease:x} not found")
        touched = [op for op in ops if isinstance(op, Put) or op.key in self._items]
        if not touched:
            return []
        self.revision += 1
        events = [self._put(op) if isinstance(op, Put) else self._delete(op.key)
                  for op in touched]
        self._history.extend(events)
        return events

    def _put(self, op: Put) -> Event:
        old = self._items.get(op.key)
        if old is not None and old.lease in self._leases:
            self._leases[old.lease].keys.discard(op.key)
        lease = op.lease or 0
        if lease:
            self._leases[lease].keys.add(op.key)
        created = old.create_revision if old is not None else self.revision
        self._items[op.key] = Item(op.key, op.value, self.revision, created, lease)
        return Event("put", op.key, op.value, self.revision, lease, created)

    def _delete(self, key: str) -> Event:
        old = self._items.pop(key)
        if old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        return Event("delete", key, b"", self.revision)

    # -- leases --------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        self.expire()
        with self._lock:
            self._next_lease += 1
            self._leases[self._next_lease] = _Lease(ttl, self._clock() + ttl)
            return self._next_lease

    def keepalive(self, lease: int) -> int:
        self.expire()
        with self._lock:
            found = self._leases.get(lease)
            if found is None:
                return 0
            found.expires_at = self._clock() + found.ttl
            return found.ttl

    def revoke_lease(self, lease: int) -> None:
        self.expire()
        with self._lock:
            if lease not in self._leases:
                raise LeaseGone(f"memstore: requested lease {lease:x} not found")
            events = self._drop(lease)
        self._deliver(events)

    def lease_info(self, lease: int) -> tuple[int, float] | None:
        """(granted TTL, remaining seconds) of a live lease; None when it is gone."""
        self.expire()
        with self._lock:
            found = self._leases.get(lease)
            return None if found is None else (found.ttl, found.expires_at - self._clock())

    def expire(self) -> builtins.list[Expired]:
        """Expire every lease whose time has come, oldest deadline first."""
        with self._lock:
            now = self._clock()
            due = sorted((x.expires_at, lid) for lid, x in self._leases.items()
                         if x.expires_at <= now)
            gone: list[Expired] = []
            events: list[Event] = []
            for _, lid in due:
                keys = tuple(sorted(self._leases[lid].keys))
                events += self._drop(lid)
                gone.append(Expired(lid, keys, self.revision))
        self._deliver(events)
        return gone

    def _drop(self, lease: int) -> builtins.list[Event]:
        keys = sorted(self._leases.pop(lease).keys)
        return self._apply([Delete(k) for k in keys])

    def promote(self, extend: float) -> None:
        """A new etcd leader: every lease now expires no earlier than TTL + ``extend``
        from now (etcd's ``lessor.Promote``)."""
        with self._lock:
            now = self._clock()
            for lease in self._leases.values():
                lease.expires_at = max(lease.expires_at, now + lease.ttl + extend)

    # -- watches and status --------------------------------------------------

    def watch_prefix(self, prefix: str, on_event: Callable[[Event], None],
                     start_revision: int | None = None) -> _Watch:
        watch = _Watch(self, prefix, on_event)
        with self._lock:
            old = [e for e in self._history
                   if start_revision and e.revision >= start_revision
                   and e.key.startswith(prefix)]
            self._watches.append(watch)
        for event in old:
            on_event(event)
        return watch

    def _forget(self, watch: _Watch) -> None:
        with self._lock:
            self._watches = [w for w in self._watches if w is not watch]

    def _deliver(self, events: builtins.list[Event]) -> None:
        if not events:
            return
        with self._lock:
            watches = list(self._watches)
        for event in events:
            for watch in watches:
                if not watch.cancelled and event.key.startswith(watch.prefix):
                    watch.on_event(event)

    def status(self) -> builtins.list[EndpointStatus]:
        return [EndpointStatus("memory", True, leader=True, revision=self.revision,
                               version="memstore")]

    def alarms(self) -> builtins.list[tuple[str, str]]:
        return []

    def close(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, []
        for watch in watches:
            watch.cancelled = True

    def snapshot(self) -> dict[str, Item]:
        """Every item, by key (for checks in tests and the simulator)."""
        with self._lock:
            return dict(self._items)
