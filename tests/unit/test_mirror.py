"""The manager's watch-fed view: the pure mirror, its shell over the in-memory store
(a reset or a missed event leads to a full resync), and a manager that reads by watch
deciding as one that lists the registry every round."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gridtool.clock import Clock
from gridtool.config import Config
from gridtool.ha.manager import Manager, mirrored
from gridtool.ha.rules import decide
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.mirror import Mirror, MirrorStore, Probe, behind
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.records import GuestSettings, encode
from gridtool.registry.store import Event, Item, Watch

KEYS = Config().keys


def test_apply_puts_deletes_and_ignores_replays() -> None:
    m = Mirror(("/r/a/", "/r/b/"), quiet=("/r/b/",))
    assert m.apply([Event("put", "/r/a/x", b"1", 5, create_revision=5)])
    assert m.list("/r/a/") == [Item("/r/a/x", b"1", 5, 5, 0)]
    assert not m.apply([Event("put", "/r/a/x", b"0", 4, create_revision=4)])  # a replay
    assert not m.apply([Event("delete", "/r/a/x", b"", 3)])  # older than what is held
    assert m.apply([Event("put", "/r/a/x", b"2", 7, lease=9)])
    assert m.list("/r/a/") == [Item("/r/a/x", b"2", 7, 5, 9)]  # creation kept
    assert m.changes == 2
    assert m.apply([Event("put", "/r/b/hb", b"t", 8)])  # quiet: held, not counted
    assert m.changes == 2 and m.list("/r/b/") != []
    assert not m.apply([Event("put", "/r/c/z", b"", 9)])  # not mirrored: only the revision
    assert m.revision == 9 and m.list("/r/c/") is None
    assert m.apply([Event("delete", "/r/a/x", b"", 10)])
    assert m.list("/r/a/") == [] and m.changes == 3
    assert not m.apply([Event("delete", "/r/a/x", b"", 11)])


def test_list_is_sorted_and_answers_a_narrower_prefix() -> None:
    m = Mirror(("/r/g/",))
    for rev, key in enumerate(("/r/g/h2/u1", "/r/g/h1/u2", "/r/g/h1/u1"), start=1):
        m.apply([Event("put", key, b"", rev)])
    assert [i.key for i in m.list("/r/g/")] == ["/r/g/h1/u1", "/r/g/h1/u2", "/r/g/h2/u1"]
    assert [i.key for i in m.list("/r/g/h1/")] == ["/r/g/h1/u1", "/r/g/h1/u2"]


class Counting(MemStore):
    """The in-memory store, counting listings and able to lose its watches' events."""

    def __init__(self) -> None:
        super().__init__(lambda: 0.0)
        self.lists = 0
        self.deaf = False

    def list(self, prefix: str) -> tuple[list[Item], int]:
        self.lists += 1
        return super().list(prefix)

    def watch_prefix(self, prefix: str, on_event: Callable[[Event], None],
                     start_revision: int | None = None) -> Watch:
        def deliver(ev: Event) -> None:
            if not self.deaf:
                on_event(ev)
        return super().watch_prefix(prefix, deliver, start_revision)


def _mirror(store: MemStore, catch_up: float = 2.0) -> MirrorStore:
    view = MirrorStore(store, KEYS.prefix, mirrored(KEYS), catch_up=catch_up)
    view.start()
    return view


def _same(view: MirrorStore, store: MemStore) -> None:
    for prefix in mirrored(KEYS):
        assert view.list(prefix)[0] == MemStore.list(store, prefix)[0], prefix


def test_the_view_follows_writes_without_listing_the_registry() -> None:
    store = Counting()
    store.put(KEYS.host("hv1"), b"{}")
    view = _mirror(store)
    store.put(KEYS.guest("hv1", "u1"), b"1")
    store.delete(KEYS.host("hv1"))
    lists = store.lists
    assert not view.sync()
    _same(view, store)
    assert store.lists == lists + 1  # sync's revision read; the listings come from the mirror
    assert view.resyncs == 0


def test_a_reset_watch_makes_the_next_sync_list_again() -> None:
    store = Counting()
    view = _mirror(store)
    store.put(KEYS.guest("hv1", "u1"), b"1")
    view._event(Event("reset", KEYS.prefix, b"", store.revision))  # as etcd after a compaction
    store.deaf = True  # and the events it missed meanwhile never come
    store.put(KEYS.guest("hv1", "u2"), b"2")
    store.deaf = False
    assert view.sync()
    assert view.resyncs == 1
    _same(view, store)


def test_a_missed_event_is_caught_by_the_revision_and_resynced() -> None:
    store = Counting()
    view = _mirror(store, catch_up=0.05)
    store.deaf = True
    store.put(KEYS.settings + "u1", b"lost")
    store.deaf = False
    assert view.sync()  # the registry's revision is ahead of every event seen: list again
    _same(view, store)
    store.put(KEYS.settings + "u2", b"seen")
    assert not view.sync()
    _same(view, store)


def test_behind_is_a_probed_revision_not_delivered_within_the_catch_up_time() -> None:
    probe = Probe(revision=50, at=10.0)
    assert not behind(None, 7, 99.0, 2.0)  # nothing probed yet
    assert not behind(probe, 50, 99.0, 2.0)  # delivered
    assert not behind(probe, 49, 12.0, 2.0)  # in flight, within the catch-up time
    assert behind(probe, 49, 12.01, 2.0)


def _until(done: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling a condition, with a deadline
    return True


def test_check_catches_a_missed_event_without_waiting_in_the_caller() -> None:
    store = Counting()
    view = _mirror(store, catch_up=0.05)
    assert view.check()  # nothing probed yet: trusted, and the first probe starts
    assert _until(lambda: not view._probing)
    store.deaf = True
    store.put(KEYS.settings + "u1", b"lost")  # the watch never delivers it
    store.deaf = False
    assert _until(lambda: not view.check())  # the probe saw a revision the watch never did
    assert view.sync() and view.resyncs == 1  # so the barrier lists again
    _same(view, store)
    assert _until(lambda: view.check() and not view._probing and view._probe is None)


# --------------------------------------------------------------------------- the manager


def _fleet(store: MemStore) -> None:
    """hv1 and hv2 alive with HA guests; hv3 gone (no record) with one HA guest left."""
    registry = Registry(store, KEYS)
    for h in ("hv1", "hv2"):
        registry.put_host(HostRecord(h, "test:///", "test", 8, 8192, 8192, "0", 0.0), None)
    for n, host in enumerate(("hv1", "hv1", "hv2", "hv3")):
        uuid = f"00000000-0000-0000-0000-00000000000{n}"
        disk = Disk("vda", f"/dev/e{n}", "block", shared=True, volume=f"aoe-e{n}")
        registry.put_guest(GuestRecord(uuid, f"g{n}", host, "running", 1, 256, 0.0, (disk,)))
        store.put(KEYS.guest_settings(uuid), encode(GuestSettings(uuid, f"g{n}", ha=True)))


def _manager(store: MemStore, mirror: bool, now: list[float]) -> Manager:
    clock = Clock(lambda: now[0], lambda: now[0])
    return Manager(Config(), store, "m1", threaded=False, clock=clock, mirror=mirror,
                   power_fence=lambda _h: _fail())


def _fail() -> Any:
    from gridtool.fencing.power import Outcome
    return Outcome(False, "no power here")


def test_reading_by_watch_decides_as_listing_does() -> None:
    store = MemStore(lambda: 0.0)
    _fleet(store)
    now = [100.0]
    listing, watching = _manager(store, False, now), _manager(store, True, now)
    watching._watches = watching._watch()
    watching.view.sync()  # type: ignore[attr-defined]
    snap_l, names_l = listing.snapshot()
    snap_w, names_w = watching.snapshot()
    assert snap_w == snap_l and names_w == names_l
    assert decide(snap_w, watching.limits) == decide(snap_l, listing.limits) != ()


def test_a_round_with_nothing_changed_is_quiet_until_something_changes() -> None:
    store = MemStore(lambda: 0.0)
    registry = Registry(store, KEYS)
    registry.put_host(HostRecord("hv1", "test:///", "test", 8, 8192, 8192, "0", 0.0), None)
    now = [100.0]
    manager = _manager(store, True, now)
    assert manager.step() and manager.step() and manager.step()
    assert [r.full for r in manager.rounds] == [True, False, False]
    store.put(KEYS.guest_settings("u9"), encode(GuestSettings("u9", "x")))
    now[0] += 1
    manager.step()
    assert manager.rounds[-1].full is True  # something it reads changed: a full round
    now[0] += manager.full_every
    manager.step()
    manager.step()
    assert [r.full for r in manager.rounds][-2:] == [True, False]  # a full one at least
    # every ``full_every`` seconds


def test_a_quiet_round_makes_no_round_trip_to_the_registry() -> None:
    """The barrier (a revision read, then a wait for the watch) is for rounds that read
    and act; a quiet round's check reads in a background probe, never in its own thread
    (under load that read alone took up to 199 ms at 100,000 guests)."""
    me = threading.get_ident()
    store = Counting()
    mine: list[str] = []
    listing = store.list

    def list_(prefix: str) -> tuple[list[Item], int]:
        if threading.get_ident() == me:
            mine.append(prefix)
        return listing(prefix)

    store.list = list_  # type: ignore[method-assign]
    Registry(store, KEYS).put_host(HostRecord("hv1", "test:///", "test", 8, 8192, 8192, "0",
                                              0.0), None)
    manager = _manager(store, True, [100.0])
    assert manager.step() and manager.step()
    assert [r.full for r in manager.rounds] == [True, False]
    mine.clear()
    for _ in range(3):
        assert manager.step()
    assert [r.full for r in manager.rounds][-3:] == [False] * 3 and mine == []


def test_a_round_is_full_while_something_is_to_do() -> None:
    store = MemStore(lambda: 0.0)
    _fleet(store)  # hv3's guest must be recovered: never quiet
    manager = _manager(store, True, [100.0])
    for _ in range(3):
        manager.step()
    assert all(r.full for r in manager.rounds)


def test_a_full_round_decodes_only_the_records_that_changed(monkeypatch: Any) -> None:
    from gridtool.placement import index, shell

    decoded: list[str] = []
    record, guest = shell._record, index.decode

    def counting(cls: type, item: Any) -> Any:
        decoded.append(item.key)
        return record(cls, item)

    def counting_guest(cls: type, key: str, value: bytes) -> Any:
        decoded.append(key)
        return guest(cls, key, value)

    monkeypatch.setattr(shell, "_record", counting)  # host records
    monkeypatch.setattr(index, "decode", counting_guest)  # guest records (the fleet index)
    store = MemStore(lambda: 0.0)
    _fleet(store)
    registry = Registry(store, KEYS)
    plain = GuestRecord("00000000-0000-0000-0000-0000000000aa", "plain", "hv2", "running", 1,
                        512, 0.0)
    registry.put_guest(plain)  # no shared disk: not managed, but it uses hv2's memory
    now = [100.0]
    manager = _manager(store, True, now)
    manager._watches = manager._watch()
    manager.view.sync()  # type: ignore[attr-defined]
    snap, _ = manager.snapshot()
    assert len(decoded) == 2 + 5  # every host and guest record, once
    assert plain.uuid not in {g.uuid for g in snap.guests}
    assert "plain" in {g.name for h in snap.hosts if h.name == "hv2" for g in h.guests}
    decoded.clear()
    manager.snapshot()
    assert decoded == []  # nothing changed: nothing decoded again
    registry.put_guest(replace(plain, state="paused"))
    manager.view.sync()  # type: ignore[attr-defined]
    manager.snapshot()
    assert decoded == [KEYS.guest("hv2", plain.uuid)]
