"""A local mirror of registry prefixes, kept current by one watch (the manager's view).

The pure core, :class:`Mirror`, holds the items under some prefixes and the revision it
has seen up to; :meth:`Mirror.load` takes a listing, :meth:`Mirror.apply` a watch event
(older than what it holds: ignored, so a replayed event changes nothing). The shell,
:class:`MirrorStore`, is a ``Store`` whose ``list`` of a mirrored prefix is answered from
the mirror; every other call goes to the registry. It loads each prefix, then watches the
whole registry prefix from the oldest listing's revision on (events are replayed in order,
so the mirror ends equal to the registry), and resyncs (lists again) when the watch says
its history was compacted away or the store went back in time (``reset`` events), and
when :meth:`MirrorStore.sync` cannot see it catch up with the registry's revision.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gridtool.registry.store import (
    Compare,
    Delete,
    EndpointStatus,
    Event,
    Item,
    Put,
    Store,
    Watch,
)

log = logging.getLogger("gridtool.registry.mirror")


@dataclass
class Mirror:
    """The items under ``prefixes`` as of ``revision`` (pure: no I/O, no threads).

    ``quiet`` prefixes (heartbeats, the manager's own status) are mirrored but do not
    count as changes: ``changes`` counts the events that changed anything else.
    """

    prefixes: tuple[str, ...]
    quiet: tuple[str, ...] = ()
    revision: int = 0
    changes: int = 0
    items: dict[str, dict[str, Item]] = field(default_factory=dict)  # by prefix, then key

    def __post_init__(self) -> None:
        for p in self.prefixes:
            self.items.setdefault(p, {})

    def prefix_of(self, key: str) -> str | None:
        """The mirrored prefix ``key`` falls under (the longest), or None."""
        found = [p for p in self.prefixes if key.startswith(p)]
        return max(found, key=len) if found else None

    def load(self, prefix: str, items: Iterable[Item], revision: int) -> None:
        """Replace what is held under ``prefix`` with a listing read at ``revision``."""
        self.items[prefix] = {i.key: i for i in items if self.prefix_of(i.key) == prefix}
        self.changes += 1

    def apply(self, ev: Event) -> bool:
        """Take one watch event (``put`` or ``delete``); True when it changed an item.

        An event older than the item held is a replay and changes nothing; a delete of a
        key held at a later revision too."""
        self.revision = max(self.revision, ev.revision)
        prefix = self.prefix_of(ev.key)
        if prefix is None:
            return False
        held = self.items[prefix].get(ev.key)
        if held is not None and held.mod_revision >= ev.revision:
            return False
        if ev.kind == "put":
            create = held.create_revision if held is not None and not ev.create_revision \
                else ev.create_revision
            self.items[prefix][ev.key] = Item(ev.key, ev.value, ev.revision, create, ev.lease)
        elif held is None:
            return False
        else:
            del self.items[prefix][ev.key]
        if not any(ev.key.startswith(q) for q in self.quiet):
            self.changes += 1
        return True

    def list(self, prefix: str) -> builtins.list[Item] | None:
        """The items under ``prefix`` sorted by key, or None when ``prefix`` lies outside
        every mirrored prefix (the caller must ask the registry)."""
        outer = self.prefix_of(prefix)
        if outer is None:
            return None
        return sorted((i for k, i in self.items[outer].items() if k.startswith(prefix)),
                      key=lambda i: i.key)


class MirrorStore:
    """A ``Store`` whose listings of the mirrored prefixes come from a watch-fed mirror.

    ``root`` is the prefix watched (the registry's); ``prefixes`` those mirrored under
    it; ``on_event`` also sees every event (the manager's wake-ups and heartbeats).
    Start it with :meth:`start`, call :meth:`sync` before reading a consistent view.
    """

    def __init__(self, store: Store, root: str, prefixes: Sequence[str],
                 quiet: Sequence[str] = (), on_event: Callable[[Event], None] | None = None,
                 catch_up: float = 2.0) -> None:
        self.store = store
        self.root = root
        self.mirror = Mirror(tuple(prefixes), tuple(quiet))
        self.on_event = on_event
        self.catch_up = catch_up
        self.resyncs = 0  # full re-listings after the first load
        self._cond = threading.Condition()
        self._watch: Watch | None = None
        self._stale = True

    # -- the mirror's life ----------------------------------------------------

    def start(self) -> None:
        """List every mirrored prefix, then watch from the oldest listing on."""
        self.cancel()
        oldest = 0
        loaded: list[tuple[str, list[Item], int]] = []
        for prefix in self.mirror.prefixes:
            items, revision = self.store.list(prefix)
            loaded.append((prefix, items, revision))
            oldest = revision if not oldest else min(oldest, revision)
        with self._cond:
            self.mirror = Mirror(self.mirror.prefixes, self.mirror.quiet, oldest,
                                 self.mirror.changes)
            for prefix, items, revision in loaded:
                self.mirror.load(prefix, items, revision)
            self._stale = False
        self._watch = self.store.watch_prefix(self.root, self._event, start_revision=oldest + 1)
        log.info("event=mirror_loaded revision=%s keys=%s", oldest,
                 sum(len(v) for v in self.mirror.items.values()))

    def _event(self, ev: Event) -> None:
        with self._cond:
            if ev.kind == "reset":
                self._stale = True  # history compacted or store restored: list again
                log.warning("event=mirror_watch_reset revision=%s", ev.revision)
            else:
                self.mirror.apply(ev)
            self._cond.notify_all()
        if self.on_event is not None:
            self.on_event(ev)

    def sync(self) -> bool:
        """Bring the mirror up to the registry's current revision: wait (at most
        ``catch_up`` seconds) for the watch to deliver it, else list everything again.
        True when it had to list again (a resync)."""
        _, current = self.store.list(self.root + "\0")  # the revision, no keys
        deadline = time.monotonic() + self.catch_up
        with self._cond:
            while not self._stale and self.mirror.revision < current:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            fresh = not self._stale and self.mirror.revision >= current
        if fresh:
            return False
        log.warning("event=mirror_resync revision=%s seen=%s", current, self.mirror.revision)
        self.resyncs += 1
        self.start()
        return True

    @property
    def changes(self) -> int:
        """How many changes outside the quiet prefixes the mirror has taken."""
        with self._cond:
            return self.mirror.changes

    def cancel(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        self._stale = True

    # -- Store -----------------------------------------------------------------

    def list(self, prefix: str) -> tuple[builtins.list[Item], int]:
        with self._cond:
            items = None if self._stale else self.mirror.list(prefix)
            if items is not None:
                return items, self.mirror.revision
        return self.store.list(prefix)

    def list_range(self, start: str, end: str,
                   revision: int = 0) -> tuple[builtins.list[Item], int]:
        return self.store.list_range(start, end, revision)

    def get(self, key: str) -> Item | None:
        return self.store.get(key)

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        return self.store.put(key, value, lease)

    def delete(self, key: str) -> bool:
        return self.store.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.store.delete_prefix(prefix)

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> bool:
        return self.store.txn(compares, success, failure)

    def grant_lease(self, ttl: int) -> int:
        return self.store.grant_lease(ttl)

    def keepalive(self, lease: int) -> int:
        return self.store.keepalive(lease)

    def revoke_lease(self, lease: int) -> None:
        self.store.revoke_lease(lease)

    def lease_info(self, lease: int) -> tuple[int, float] | None:
        return self.store.lease_info(lease)

    def watch_prefix(self, prefix: str, on_event: Callable[[Event], None],
                     start_revision: int | None = None) -> Watch:
        return self.store.watch_prefix(prefix, on_event, start_revision)

    def status(self) -> builtins.list[EndpointStatus]:
        return self.store.status()

    def alarms(self) -> builtins.list[tuple[str, str]]:
        return self.store.alarms()

    def unanswered_for(self) -> float:
        return self.store.unanswered_for()

    def close(self) -> None:
        self.cancel()
