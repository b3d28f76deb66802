"""The ``Store`` contract: the same cases against the real etcd (``EtcdStore``) and the
in-memory store (``MemStore``, on a clock the test moves).

Everything the product relies on: transaction compares on create revision (absent),
mod revision and value; one revision per write request; leases (grant, keepalive, info,
revoke, expiry deleting the attached keys); prefix ranges; watches seeing puts and
deletes (also those caused by a lease expiry) and replaying from a revision.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from gridtool.config import Config
from gridtool.errors import LeaseGone
from gridtool.lab.procs import wait_for
from gridtool.registry.httpreads import ReadStore
from gridtool.registry.memstore import MemStore
from gridtool.registry.store import Compare, Delete, Event, Put, Store, scan

TTL = 2  # seconds; etcd's lessor checks expiry every 500 ms


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    """A store under test, its key prefix, and how time passes for it."""

    store: Store
    prefix: str
    clock: FakeClock | None  # None: real time (etcd)

    @property
    def real(self) -> bool:
        return self.clock is None

    def key(self, name: str) -> str:
        return self.prefix + name

    def wait_gone(self, key: str, ttl: float) -> None:
        """Let the lease of ``key`` run out: wait until the store deleted the key."""
        if self.clock is not None:
            self.clock.advance(ttl)
        wait_for(lambda: self.store.get(key) is None, ttl + 5, f"{key} deleted")

    def run_for(self, seconds: float, step: Callable[[], None]) -> None:
        """Call ``step`` again and again while ``seconds`` go by."""
        if self.clock is not None:
            for _ in range(int(seconds / (TTL / 4)) + 1):
                self.clock.advance(TTL / 4)
                step()
            return
        end = time.monotonic() + seconds
        wait_for(lambda: step() is None and time.monotonic() >= end, seconds + 5,
                 f"{seconds} s of {step}", interval=TTL / 4)


@dataclass
class Recorder:
    """Collects a watch's events; waits on a condition for them."""

    events: list[Event] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, event: Event) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[Event]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.events) >= count, timeout), self.events
            return list(self.events)


@pytest.fixture(params=["etcd", "etcd-gateway", "memory"])
def kv(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()
        mem = MemStore(clock)
        yield Harness(mem, "/contract/", clock)
        mem.close()
        return
    cfg: Config = request.getfixturevalue("cfg")
    store = request.getfixturevalue("store")
    if request.param == "etcd":
        yield Harness(store, cfg.prefix, None)
        return
    # reads over etcd's JSON gateway (with the admin's password: auth is on), the rest
    # over gRPC: every read must have been answered by the gateway
    reader = ReadStore(cfg, lambda: store)
    yield Harness(reader, cfg.prefix, None)
    assert reader.gave_up == "", reader.gave_up
    reader.close()


def test_put_get_and_revisions(kv: Harness) -> None:
    s, k = kv.store, kv.key("a")
    assert s.get(k) is None
    r1 = s.put(k, b"1")
    first = s.get(k)
    assert first is not None and first.value == b"1"
    assert first.create_revision == first.mod_revision == r1 and first.lease == 0
    r2 = s.put(k, b"2")
    second = s.get(k)
    assert second is not None and r2 > r1
    assert second.create_revision == r1 and second.mod_revision == r2
    assert s.delete(k) is True and s.get(k) is None
    assert s.delete(k) is False
    r3 = s.put(k, b"3")
    again = s.get(k)
    assert again is not None and again.create_revision == again.mod_revision == r3 > r2


def test_list_by_prefix_sorted_with_revision(kv: Harness) -> None:
    s = kv.store
    for name in ("p/b", "p/a", "p/c/d", "q/x"):
        s.put(kv.key(name), name.encode())
    items, rev = s.list(kv.key("p/"))
    assert [i.key for i in items] == [kv.key(n) for n in ("p/a", "p/b", "p/c/d")]
    assert rev >= max(i.mod_revision for i in items)
    s.delete_prefix(kv.key("p/"))
    assert s.list(kv.key("p/"))[0] == []
    assert [i.key for i in s.list(kv.key("q/"))[0]] == [kv.key("q/x")]


def test_ranges_of_a_prefix_in_key_order_as_of_the_first(kv: Harness) -> None:
    s = kv.store
    for name in ("p/a", "p/b", "p/c", "p/d", "p/e", "q/x"):
        s.put(kv.key(name), name.encode())
    first, rev = s.list_range(kv.key("p/a"), kv.key("p/c"))
    assert [i.key for i in first] == [kv.key("p/a"), kv.key("p/b")]
    rest, same = s.list_range(kv.key("p/c"), kv.key("p0"), rev)
    assert [i.key for i in rest] == [kv.key(n) for n in ("p/c", "p/d", "p/e")] and same == rev
    assert [i.key for i in scan(s, kv.key("p/"), [kv.key("p/b"), kv.key("p/d")])] == [
        kv.key(n) for n in ("p/a", "p/b", "p/c", "p/d", "p/e")]
    if kv.real:  # etcd keeps history: a later range reads the first one's revision
        s.put(kv.key("p/f"), b"late")
        late, _ = s.list_range(kv.key("p/e0"), kv.key("p0"), rev)
        assert late == []


def test_txn_create_revision_zero_lets_one_creator_win(kv: Harness) -> None:
    s, k = kv.store, kv.key("fence")
    first = s.txn([Compare(k, "create", 0)], [Put(k, b"h1")])
    second = s.txn([Compare(k, "create", 0)], [Put(k, b"h2")], [Put(kv.key("lost"), b"h2")])
    assert (first, second) == (True, False)
    item = s.get(k)
    assert item is not None and item.value == b"h1"
    lost = s.get(kv.key("lost"))
    assert lost is not None and lost.value == b"h2"  # the failure branch ran


def test_txn_mod_revision_and_value(kv: Harness) -> None:
    s, k = kv.store, kv.key("x")
    s.put(k, b"v1")
    item = s.get(k)
    assert item is not None
    assert s.txn([Compare(k, "mod", item.mod_revision)], [Put(k, b"v2")])
    assert not s.txn([Compare(k, "mod", item.mod_revision)], [Put(k, b"v3")])
    assert s.txn([Compare(k, "value", b"v2")], [Delete(k)])
    assert s.get(k) is None
    assert not s.txn([Compare(k, "value", b"v2")], [Put(k, b"x")])  # absent: no value
    assert s.txn([Compare(k, "mod", 0)], [Put(k, b"back")])  # absent: mod revision 0


def test_one_revision_per_transaction(kv: Harness) -> None:
    s = kv.store
    a, b = kv.key("t/a"), kv.key("t/b")
    assert s.txn([], [Put(a, b"1"), Put(b, b"2")])
    ia, ib = s.get(a), s.get(b)
    assert ia is not None and ib is not None and ia.mod_revision == ib.mod_revision
    _, rev = s.list(kv.key("t/"))
    assert rev >= ia.mod_revision
    later = s.put(kv.key("t/c"), b"3")
    assert later == ia.mod_revision + 1 or (kv.real and later > ia.mod_revision)


def test_lease_keepalive_revoke(kv: Harness) -> None:
    s, k = kv.store, kv.key("leased")
    lease = s.grant_lease(TTL)
    s.put(k, b"x", lease=lease)
    item = s.get(k)
    assert item is not None and item.lease == lease
    assert 0 < s.keepalive(lease) <= TTL
    s.revoke_lease(lease)
    assert s.get(k) is None
    assert s.keepalive(lease) <= 0
    with pytest.raises(LeaseGone):
        s.put(k, b"y", lease=lease)


def test_lease_info_gives_granted_and_remaining_ttl(kv: Harness) -> None:
    s, ttl = kv.store, TTL * 5
    lease = s.grant_lease(ttl)
    if kv.clock is not None:
        kv.clock.advance(2)
    else:
        time.sleep(2.2)  # etcd counts remaining seconds whole
    info = s.lease_info(lease)
    assert info is not None
    granted, remaining = info
    assert granted == ttl and ttl - 3 <= remaining <= ttl - 1, info
    s.keepalive(lease)
    assert s.lease_info(lease) is not None
    assert ttl - 1 <= s.lease_info(lease)[1] <= ttl  # type: ignore[index]
    s.revoke_lease(lease)
    assert s.lease_info(lease) is None
    assert s.lease_info(lease + 987654) is None  # never granted


def test_lease_expiry_deletes_attached_keys_and_watch_sees_it(kv: Harness) -> None:
    s = kv.store
    rec = Recorder()
    watch = s.watch_prefix(kv.key("w/"), rec)
    try:
        lease = s.grant_lease(TTL)
        held, free = kv.key("w/held"), kv.key("w/free")
        s.txn([Compare(held, "create", 0)], [Put(held, b"h", lease), Put(free, b"f")])
        rec.wait(2)
        kv.wait_gone(held, TTL)
        events = rec.wait(3)
        assert [(e.kind, e.key) for e in events] == [
            ("put", held), ("put", free), ("delete", held)]
        assert events[2].revision > events[1].revision
        assert s.get(free) is not None
        assert s.keepalive(lease) <= 0
    finally:
        watch.cancel()


def test_keepalive_keeps_the_lease(kv: Harness) -> None:
    s, k = kv.store, kv.key("kept")
    lease = s.grant_lease(TTL)
    s.put(k, b"x", lease=lease)

    def renew() -> None:
        assert s.keepalive(lease) > 0

    kv.run_for(TTL * 2, renew)  # twice the TTL, renewed every quarter of it
    assert s.get(k) is not None
    s.revoke_lease(lease)


def test_watch_sees_puts_and_deletes_in_order_and_replays(kv: Harness) -> None:
    s = kv.store
    rec = Recorder()
    start = s.put(kv.key("r/0"), b"0")
    watch = s.watch_prefix(kv.key("r/"), rec)
    try:
        s.put(kv.key("r/1"), b"1")
        s.put(kv.key("other"), b"-")
        s.delete(kv.key("r/0"))
        events = rec.wait(2)
        assert [(e.kind, e.key, e.value) for e in events] == [
            ("put", kv.key("r/1"), b"1"), ("delete", kv.key("r/0"), b"")]
        assert events[0].revision < events[1].revision
    finally:
        watch.cancel()
    replay = Recorder()
    again = s.watch_prefix(kv.key("r/"), replay, start_revision=start)
    try:
        assert [(e.kind, e.key) for e in replay.wait(3)] == [
            ("put", kv.key("r/0")), ("put", kv.key("r/1")), ("delete", kv.key("r/0"))]
    finally:
        again.cancel()


def test_revisions_only_grow(kv: Harness) -> None:
    s = kv.store
    seen = [s.list(kv.prefix)[1]]
    for i in range(5):
        seen.append(s.put(kv.key(f"m/{i}"), b"x"))
        s.delete(kv.key(f"m/{i}"))
        seen.append(s.list(kv.prefix)[1])
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
