"""A local copy of registry prefixes, kept current by one watch: the manager's view and
the web view's (one module for both).

The pure core, :class:`Mirror`, holds the items under some prefixes (a dict and its sorted
keys: a listing is a bisect, not a sort) and the revision it has seen up to;
:meth:`Mirror.reset` takes a listing, :meth:`Mirror.apply` watch events (older than what
it holds: ignored, so a replayed event changes nothing). :meth:`Mirror.frozen` hands out
an immutable :class:`Snapshot` that the registry's readers read like etcd (the web view).

The shells: :func:`read_prefixes` lists prefixes at one revision in ranges with explicit
ends (``bounds``: e.g. :func:`guest_pages`, one range per about ``PAGE`` guests, never one
giant read); :class:`MirrorStore` is a ``Store`` whose ``list`` of a mirrored prefix is
answered from the mirror and every other call goes to the registry. It loads, then
watches the whole registry prefix from the listing's revision on (events are replayed in
order, so the mirror ends equal to the registry), and resyncs (lists again) when the watch
says its history was compacted away or the store went back in time (``reset`` events),
and when :meth:`MirrorStore.sync` cannot see it catch up with the registry's revision.
:meth:`MirrorStore.check` is the same judgement without waiting: a background probe
reads the registry's revision, and :func:`behind` (pure) says when the watch failed to
deliver it within ``catch_up`` seconds (a manager's quiet round: no round trip, no wait).
"""

from __future__ import annotations

import bisect
import builtins
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, TypeVar, cast

from gridtool.registry.fleet import PAGE, page_bounds
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError, HostRecord, decode
from gridtool.registry.store import (
    Compare,
    Delete,
    EndpointStatus,
    Event,
    Item,
    Put,
    Store,
    StoreProxy,
    Watch,
    prefix_end,
    scan,
)

log = logging.getLogger("gridtool.registry.mirror")

T = TypeVar("T")

#: Where to split the range reads of each prefix (sorted keys under it), from the
#: registry as of a revision: ``bounds(store, revision)``.
Bounds = Callable[[Store, int], Mapping[str, Sequence[str]]]


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

    def __init__(self, items: dict[str, Item], keys: builtins.list[str], revision: int,
                 state: RegistryState, version: int) -> None:
        self._items = items
        self._keys = keys  # sorted
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
    raise PermissionError("the mirror's registry copy is read-only")


def _nothing(_version: int) -> None:
    pass


class Mirror:
    """The items under ``prefixes`` (one or several) as of ``revision``; thread-safe.

    ``version`` grows with every change (data or state); ``on_change(version)`` is called
    after each, under the lock: it must only schedule work (the web server's
    ``call_soon_threadsafe`` that wakes its event streams). ``changes`` counts the changes
    outside the ``quiet`` prefixes (heartbeats, the manager's own status): what makes a
    manager round decide again. With ``journal``, it also keeps the keys of those changes
    until :meth:`take_changed` (what the manager's fleet index reads again).
    """

    def __init__(self, prefixes: str | Sequence[str],
                 on_change: Callable[[int], None] = _nothing,
                 quiet: Sequence[str] = (), journal: bool = False) -> None:
        self.prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
        self.quiet = tuple(quiet)
        self.on_change = on_change
        self.version = 0
        self.changes = 0
        self.revision = 0
        self._listed = 0  # the revision of the last listing: events up to it are in it
        self._items: dict[str, Item] = {}
        self._keys: builtins.list[str] = []  # sorted
        self._state = RegistryState()
        self._frozen: Snapshot | None = None
        self._lock = threading.Lock()
        self._journal: set[str] | None = set() if journal else None
        self._everything = True  # a listing replaced everything since the last take

    @property
    def prefix(self) -> str:
        """The first (for the web view: the only) mirrored prefix."""
        return self.prefixes[0]

    def mirrors(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    def reset(self, items: Iterable[Item], revision: int) -> None:
        """Replace everything with a listing read at ``revision``."""
        with self._lock:
            self._items = {i.key: i for i in items if self.mirrors(i.key)}
            self._keys = sorted(self._items)
            self.revision = self._listed = revision
            self.changes += 1
            self._everything = True
            self._bump()

    def apply(self, events: Iterable[Event]) -> int:
        """Apply watch events (``put``/``delete``); how many changed an item. One
        transaction (or a lease's expiry) is several events at one revision: each one
        counts. An event older than the item held, or than the listing, is a replay and
        changes nothing; a ``reset`` is the feed's (it lists again)."""
        changed = 0
        with self._lock:
            for ev in events:
                self.revision = max(self.revision, ev.revision)
                if ev.kind in ("put", "delete") and ev.revision > self._listed and \
                        self.mirrors(ev.key) and self._apply(ev):
                    changed += 1
                    if not ev.key.startswith(self.quiet):
                        self.changes += 1
                        if self._journal is not None:
                            self._journal.add(ev.key)
            if changed:
                self._bump()
        return changed

    def _apply(self, ev: Event) -> bool:
        held = self._items.get(ev.key)
        if held is not None and held.mod_revision >= ev.revision:
            return False
        if ev.kind == "put":
            create = ev.create_revision or (held.create_revision if held else ev.revision)
            self._items[ev.key] = Item(ev.key, ev.value, ev.revision, create, ev.lease)
            if held is None:
                bisect.insort(self._keys, ev.key)
            return True
        if held is None:
            return False
        del self._items[ev.key]
        del self._keys[bisect.bisect_left(self._keys, ev.key)]
        return True

    def take_changed(self) -> frozenset[str] | None:
        """The keys changed outside the quiet prefixes since the last call (the journal,
        emptied), or None when a listing may have changed anything since (the first call
        too, and always without ``journal``)."""
        with self._lock:
            taken = None if self._everything or self._journal is None \
                else frozenset(self._journal)
            self._everything = False
            if self._journal is not None:
                self._journal.clear()
            return taken

    def journaled(self, prefix: str) -> bool:
        """Whether a key under ``prefix`` changed since the last :meth:`take_changed`
        (an item listed newer than what was taken is journaled: both happen under one
        lock)."""
        with self._lock:
            return self._everything or self._journal is None or \
                any(k.startswith(prefix) for k in self._journal)

    def list(self, prefix: str) -> builtins.list[Item] | None:
        """The items under ``prefix`` sorted by key, or None when ``prefix`` lies outside
        every mirrored prefix (the caller must ask the registry)."""
        if not self.mirrors(prefix):
            return None
        with self._lock:
            low = bisect.bisect_left(self._keys, prefix)
            high = bisect.bisect_left(self._keys, prefix_end(prefix))
            return [self._items[k] for k in self._keys[low:high]]

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
                self._frozen = Snapshot(dict(self._items), list(self._keys), self.revision,
                                        self._state, self.version)
            return self._frozen

    def _bump(self) -> None:
        self.version += 1
        self._frozen = None
        self.on_change(self.version)


class Memo:
    """Results of a pure function of one registry item, kept while the item's
    ``mod_revision`` stays: a view of 10,000 guests decodes only what changed since the
    last one. ``sweep()`` forgets the keys a build did not ask for (deleted ones)."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Hashable, Any]] = {}
        self._used: set[str] = set()

    def __call__(self, item: Item, fn: Callable[[Item], T]) -> T:
        return self.derive(item.key, item.mod_revision, lambda: fn(item))

    def derive(self, name: str, stamp: Hashable, fn: Callable[[], T]) -> T:
        """``fn()``, kept under ``name`` while ``stamp`` (what it depends on) stays."""
        self._used.add(name)
        hit = self._kept.get(name)
        if hit is not None and hit[0] == stamp:
            return cast(T, hit[1])
        value = fn()
        self._kept[name] = (stamp, value)
        return value

    def sweep(self) -> None:
        self._kept = {k: v for k, v in self._kept.items() if k in self._used}
        self._used = set()


def derive_all(store: Store, prefix: str, fn: Callable[[Item], T], memo: Memo,
               ) -> tuple[builtins.list[T], builtins.list[DecodeError]]:
    """``fn`` of each item under ``prefix``, memoised (only what changed since the last
    call is decoded again), and the items whose ``fn`` raised ``DecodeError``."""
    found, errors = [], []
    for item in store.list(prefix)[0]:
        value = memo(item, partial(_or_error, fn))
        if isinstance(value, DecodeError):
            errors.append(value)
        else:
            found.append(value)
    return found, errors


def _or_error(fn: Callable[[Item], T], item: Item) -> T | DecodeError:
    try:
        return fn(item)
    except DecodeError as exc:
        return exc


def read_prefixes(store: Store, prefixes: Sequence[str], bounds: Bounds | None = None,
                  ) -> tuple[builtins.list[Item], int]:
    """Every item under ``prefixes`` as of one revision (the registry's now), read in
    ranges split at ``bounds`` (each range read names its end: etcd 3.4 walks the rest of
    a prefix for a ``limit`` read)."""
    _, revision = store.list(prefixes[0] + "\0")  # the revision, no keys
    split = bounds(store, revision) if bounds is not None else {}
    items = [i for p in prefixes for i in scan(store, p, split.get(p, ()), revision)]
    return items, revision


def guest_pages(keys: Keys) -> Bounds:
    """Split the guest records' read at the hosts about ``PAGE`` guests apart (by the
    counts in the host records read at the same revision)."""
    def bounds(store: Store, revision: int) -> dict[str, builtins.list[str]]:
        hosts, _ = store.list_range(keys.hosts, prefix_end(keys.hosts), revision)
        counts: builtins.list[tuple[str, int | None]] = []
        for item in hosts:
            name = item.key.removeprefix(keys.hosts)
            try:
                counts.append((name, decode(HostRecord, item.key, item.value).guests))
            except DecodeError:
                counts.append((name, None))
        return {keys.guests: [keys.host_guests(h) for h in page_bounds(counts, PAGE)]}

    return bounds


@dataclass(frozen=True)
class Probe:
    """The registry's ``revision`` as read at ``at`` (monotonic seconds)."""

    revision: int
    at: float


def behind(probe: Probe | None, seen: int, now: float, catch_up: float) -> bool:
    """A watch that has delivered events up to revision ``seen`` is behind when it has
    not reached the revision of ``probe`` within ``catch_up`` seconds of its reading:
    an event lost, or the watch stuck (the mirror must list again)."""
    return probe is not None and seen < probe.revision and now - probe.at > catch_up


class MirrorStore(StoreProxy):
    """A ``Store`` whose listings of the mirrored prefixes come from a watch-fed mirror.

    ``root`` is the prefix watched (the registry's); ``prefixes`` those mirrored under
    it; ``on_event`` also sees every event (the manager's wake-ups and heartbeats);
    ``bounds`` splits the loads' range reads; ``journal``: the mirror keeps the changed
    keys (:meth:`Mirror.take_changed`). Start it with :meth:`start`, call :meth:`sync`
    before reading a consistent view.
    """

    def __init__(self, store: Store, root: str, prefixes: Sequence[str],
                 quiet: Sequence[str] = (), on_event: Callable[[Event], None] | None = None,
                 catch_up: float = 2.0, bounds: Bounds | None = None,
                 journal: bool = False) -> None:
        self.store = store
        self.root = root
        self.mirror = Mirror(prefixes, quiet=quiet, journal=journal)
        self.on_event = on_event
        self.catch_up = catch_up
        self.bounds = bounds
        self.resyncs = 0  # full re-listings after the first load
        self._cond = threading.Condition()
        self._watch: Watch | None = None
        self._stale = True
        self._probe: Probe | None = None  # the last revision probed, until the watch has it
        self._probing = False  # a probe's read is under way

    # -- the mirror's life ----------------------------------------------------

    def start(self) -> None:
        """List every mirrored prefix at one revision, then watch from there on."""
        self.cancel()
        items, revision = read_prefixes(self.store, self.mirror.prefixes, self.bounds)
        with self._cond:
            self.mirror.reset(items, revision)
            self._stale = False
            self._probe = None
        self._watch = self.store.watch_prefix(self.root, self._event,
                                              start_revision=revision + 1)
        log.info("event=mirror_loaded revision=%s keys=%s", revision, len(items))

    def _event(self, ev: Event) -> None:
        with self._cond:
            if ev.kind == "reset":
                self._stale = True  # history compacted or store restored: list again
                log.warning("event=mirror_watch_reset revision=%s", ev.revision)
            else:
                self.mirror.apply((ev,))
            self._cond.notify_all()
        if self.on_event is not None:
            self.on_event(ev)

    def sync(self) -> bool:
        """Bring the mirror up to the registry's current revision: wait (at most
        ``catch_up`` seconds) for the watch to deliver it, else list everything again.
        True when it had to list again (a resync)."""
        _, current = self.store.list(self.root + "\0")  # the revision, no keys
        if self.wait_for(current, self.catch_up):
            return False
        log.warning("event=mirror_resync revision=%s seen=%s", current, self.mirror.revision)
        self.resyncs += 1
        self.start()
        return True

    def wait_for(self, revision: int, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the watch to deliver ``revision``; whether
        the mirror holds it now (a stale one never does)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stale and self.mirror.revision < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return not self._stale and self.mirror.revision >= revision

    def check(self) -> bool:
        """Without waiting or a round trip in the caller's thread: False when the mirror
        cannot be trusted (stale, or :func:`behind` its last probe: :meth:`sync` then
        lists again); True when the watch delivered, within ``catch_up``, every revision
        probed so far. Starts the next probe (a thread reading the registry's revision)
        once the last one was reached. The mirror may lag the registry by the events
        in flight, at most ``catch_up`` seconds plus one probe's read."""
        with self._cond:
            if self._probe is not None and self.mirror.revision >= self._probe.revision:
                self._probe = None
            trusted = not self._stale and not behind(self._probe, self.mirror.revision,
                                                     time.monotonic(), self.catch_up)
            start = self._probe is None and not self._probing
            self._probing = self._probing or start
        if start:
            threading.Thread(target=self._read_probe, daemon=True, name="mirror-probe").start()
        return trusted

    def _read_probe(self) -> None:
        revision = 0
        try:
            _, revision = self.store.list(self.root + "\0")  # the revision, no keys
        except Exception as exc:  # (a closed store too): the manager's own calls see it
            log.debug("event=mirror_probe_failed error=%s", exc)
        finally:
            with self._cond:
                self._probing = False
                if revision > self.mirror.revision:
                    self._probe = Probe(revision, time.monotonic())

    def take_changed(self) -> frozenset[str] | None:
        """:meth:`Mirror.take_changed`; None also while the mirror is stale (the watch
        missed events: the journal cannot say what changed)."""
        with self._cond:
            taken = self.mirror.take_changed()
            return None if self._stale else taken

    def journaled(self, prefix: str) -> bool:
        """:meth:`Mirror.journaled`."""
        return self.mirror.journaled(prefix)

    @property
    def changes(self) -> int:
        """How many changes outside the quiet prefixes the mirror has taken."""
        return self.mirror.changes

    def cancel(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        self._stale = True

    # -- Store -----------------------------------------------------------------

    @property
    def inner(self) -> Store:
        return self.store

    def list(self, prefix: str) -> tuple[builtins.list[Item], int]:
        with self._cond:
            items = None if self._stale else self.mirror.list(prefix)
            if items is not None:
                return items, self.mirror.revision
        return self.store.list(prefix)

    def close(self) -> None:
        self.cancel()
