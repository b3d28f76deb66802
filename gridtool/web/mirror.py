"""An in-memory copy of the registry's keys, fed by one watch, read as a ``Store``.

Pure data: ``Mirror`` applies a listing and watch events (thread-safe); ``frozen()``
hands out an immutable ``Snapshot`` that the registry's own readers (``Registry``,
``read_fence_rows``, ``collect``...) read like etcd, without a round trip.
"""

from __future__ import annotations

import bisect
import builtins
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from gridtool.registry.store import (
    Compare,
    Delete,
    EndpointStatus,
    Event,
    Item,
    Put,
    Watch,
    prefix_end,
)


@dataclass(frozen=True)
class RegistryState:
    """Whether the mirror follows the registry: ``up``; else why not (``error``) and since
    when (``since``, epoch seconds). ``endpoints``: the last probe's answer per endpoint;
    ``alarms``: the etcd alarms it saw raised (member, name)."""

    up: bool = False
    error: str = "not connected yet"
    since: float = 0.0
    endpoints: tuple[EndpointStatus, ...] = ()
    alarms: tuple[tuple[str, str], ...] = ()


class Snapshot:
    """One moment of the registry, read-only, with the Store's read methods."""

    def __init__(self, items: dict[str, Item], revision: int, state: RegistryState,
                 version: int) -> None:
        self._items = items
        self._keys = sorted(items)
        self.revision = revision
        self.state = state
        self.version = version

    def get(self, key: str) -> Item | None:
        return self._items.get(key)

    def list(self, prefix: str) -> tuple[builtins.list[Item], int]:
        return self.list_range(prefix, prefix_end(prefix))

    def list_range(self, start: str, end: str,
                   revision: int = 0) -> tuple[builtins.list[Item], int]:
        low, high = bisect.bisect_left(self._keys, start), bisect.bisect_left(self._keys, end)
        return [self._items[k] for k in self._keys[low:high]], self.revision

    def lease_info(self, lease: int) -> tuple[int, float] | None:
        return None  # a watch does not tell lease TTLs; nothing in the view needs them

    def status(self) -> builtins.list[EndpointStatus]:
        return list(self.state.endpoints)

    def alarms(self) -> builtins.list[tuple[str, str]]:
        return list(self.state.alarms)

    def unanswered_for(self) -> float:
        return 0.0 if self.state.up else float("inf")

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        _refuse()

    def delete(self, key: str) -> bool:
        _refuse()

    def delete_prefix(self, prefix: str) -> None:
        _refuse()

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> bool:
        _refuse()

    def grant_lease(self, ttl: int) -> int:
        _refuse()

    def keepalive(self, lease: int) -> int:
        _refuse()

    def revoke_lease(self, lease: int) -> None:
        _refuse()

    def watch_prefix(self, prefix: str, on_event: Callable[[Event], None],
                     start_revision: int | None = None) -> Watch:
        _refuse()

    def close(self) -> None:
        pass


def _refuse() -> NoReturn:
    raise PermissionError("the web view's registry copy is read-only")


@dataclass
class Mirror:
    """The registry's keys under ``prefix`` as the last listing and events left them.

    ``version`` grows with every change (data or state); ``on_change`` is called after
    each, under the lock: it must only schedule work (the server's
    ``call_soon_threadsafe`` that wakes its event streams)."""

    prefix: str
    on_change: Callable[[int], None] = lambda version: None
    version: int = 0
    _items: dict[str, Item] = field(default_factory=dict)
    _revision: int = 0
    _listed: int = 0  # the revision of the last listing: events up to it are in it
    _state: RegistryState = field(default_factory=RegistryState)
    _frozen: Snapshot | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, items: Iterable[Item], revision: int) -> None:
        """Replace everything with a fresh listing read at ``revision``."""
        with self._lock:
            self._items = {i.key: i for i in items if i.key.startswith(self.prefix)}
            self._revision = self._listed = revision
            self._bump()

    def apply(self, events: Iterable[Event]) -> None:
        """Apply watch events (those the listing already has: ignored). One transaction
        (or a lease's expiry) is several events at one revision: each one counts."""
        with self._lock:
            changed = False
            for ev in events:
                if ev.kind not in ("put", "delete") or ev.revision <= self._listed \
                        or not ev.key.startswith(self.prefix):
                    continue  # a "reset" (compaction) is the feed's: it lists again
                if ev.kind == "put":
                    self._items[ev.key] = Item(ev.key, ev.value, ev.revision,
                                               ev.create_revision or ev.revision, ev.lease)
                elif ev.kind == "delete":
                    self._items.pop(ev.key, None)
                self._revision = max(self._revision, ev.revision)
                changed = True
            if changed:
                self._bump()

    def set_state(self, state: RegistryState) -> None:
        """Record whether the registry answers (a change of up/down or error wakes pages;
        a repeated probe with the same outcome does not)."""
        with self._lock:
            old = self._state
            self._state = state
            if (old.up, old.error) != (state.up, state.error):
                self._bump()
            elif self._frozen is not None:
                self._frozen.state = state

    def touch(self) -> None:
        """Wake the pages: something derived from the registry changed (the check)."""
        with self._lock:
            self.version += 1
            self.on_change(self.version)

    @property
    def state(self) -> RegistryState:
        return self._state

    def frozen(self) -> Snapshot:
        """The current moment (the same object until the next change)."""
        with self._lock:
            if self._frozen is None:
                self._frozen = Snapshot(dict(self._items), self._revision, self._state,
                                        self.version)
            return self._frozen

    def _bump(self) -> None:
        self.version += 1
        self._frozen = None
        version = self.version
        self.on_change(version)
