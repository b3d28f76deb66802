"""Reads that cost what is asked (issue 20), on the in-memory store: paged scans, the
guest index kept by the registry's writers, ``guest list``'s paging and streamed JSON."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import replace

import pytest

from gridtool.cli.common import output
from gridtool.cli.guest.listing import Paging
from gridtool.errors import NotFound
from gridtool.registry.fleet import Registry, page_bounds
from gridtool.registry.guestindex import entry, index_ops, located
from gridtool.registry.keys import Keys
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import DecodeError, GuestRecord, HostRecord, encode
from gridtool.registry.store import Delete, Item, Put, StoreProxy, scan

KEYS = Keys("/t/")
U1, U2 = "11111111-0000-0000-0000-000000000001", "11111111-0000-0000-0000-000000000002"


def guest(uuid: str, name: str, host: str, state: str = "running") -> GuestRecord:
    return GuestRecord(uuid, name, host, state, 1, 512, 1.0)


@pytest.fixture
def registry() -> Registry:
    return Registry(MemStore(lambda: 0.0), KEYS)


def index(registry: Registry) -> list[str]:
    return [i.key.removeprefix(KEYS.guest_index) for i in
            registry.store.list(KEYS.guest_index)[0]]


@pytest.mark.parametrize("bounds", [[], ["/p/3"], ["/p/1", "/p/2", "/p/6"]])
def test_scan_reads_every_key_once_in_order(bounds: list[str]) -> None:
    store = MemStore(lambda: 0.0)
    for n in range(7):
        store.put(f"/p/{n}", b"x")
    store.put("/q", b"outside")
    assert [i.key for i in scan(store, "/p/", bounds)] == [f"/p/{n}" for n in range(7)]


def test_scan_reads_the_next_range_ahead_at_the_first_ones_revision() -> None:
    """While the caller takes one range's items the next is being read (etcd serves it
    meanwhile), as of the first range's revision (one consistent view); one range
    ahead at most."""
    store = MemStore(lambda: 0.0)
    for n in range(6):
        store.put(f"/p/{n}", b"x")
    reads: list[tuple[str, int]] = []
    second = threading.Event()
    list_range = store.list_range

    def recording(start: str, end: str, revision: int = 0) -> tuple[list[Item], int]:
        reads.append((start, revision))
        if len(reads) == 2:
            second.set()
        return list_range(start, end, revision)

    store.list_range = recording  # type: ignore[method-assign]
    items = scan(store, "/p/", ["/p/2", "/p/4"])
    assert next(items).key == "/p/0"
    assert second.wait(5)  # the second range is read while the caller holds the first
    assert len(reads) == 2
    assert [i.key for i in items] == [f"/p/{n}" for n in range(1, 6)]
    assert reads == [("/p/", 0), ("/p/2", store.revision), ("/p/4", store.revision)]


def test_page_bounds_split_by_the_hosts_counts() -> None:
    hosts = [("c", 600), ("a", 600), ("b", None), ("d", 10), ("e", 1000)]
    assert page_bounds(hosts, 1000) == ["d"]  # a + b (50 assumed) + c = 1250 >= 1000
    assert page_bounds(hosts, 600) == ["b", "d"]
    assert page_bounds(hosts, 10_000) == []
    assert page_bounds([], 1000) == []


def test_listing_every_guest_reads_the_ranges_between_hosts(registry: Registry) -> None:
    """A host without a record (lost) is listed with the range around it."""
    for n, host in enumerate(("hv1", "hv2", "hv3")):
        registry.write_guests(tuple(guest(f"{n}{g:07d}-0000-0000-0000-000000000000", f"{host}-{g}",
                                          host) for g in range(3)), (), host)
    for host in ("hv1", "hv3"):
        registry.store.put(KEYS.host(host), encode(HostRecord(
            host, "test:///", "test", 1, 1, 1, "0", 0.0, guests=3)))
    listed = [d["name"] for d in registry.guest_data() if isinstance(d, dict)]
    assert sorted(listed) == sorted(f"hv{h}-{g}" for h in (1, 2, 3) for g in range(3))
    assert len(listed) == 9


def test_index_ops_of_a_rename_drop_the_old_name() -> None:
    ops = index_ops(KEYS, "hv1", U1, "old", guest(U1, "new", "hv1"))
    assert ops == [Delete(entry(KEYS, "old", "hv1", U1)),
                   Put(entry(KEYS, U1, "hv1", U1), b""), Put(entry(KEYS, "new", "hv1", U1), b"")]
    assert index_ops(KEYS, "hv1", U1, None, None) == [Delete(entry(KEYS, U1, "hv1", U1))]


def test_located_refuses_what_is_not_an_entry() -> None:
    assert located(KEYS, "web", entry(KEYS, "web", "hv1", U1)) == ("hv1", U1)
    assert located(KEYS, "web", f"{KEYS.guest_lookup('web')}hv1") is None
    assert located(KEYS, "web", f"{KEYS.guest_lookup('web')}x/hv1/{U1}") is None


def test_the_index_follows_rename_migration_and_undefine(registry: Registry) -> None:
    registry.write_guests((guest(U1, "web", "hv1"), guest(U2, "db", "hv1")), (), "hv1")
    assert [g.host for g in registry.find_guest("web")] == ["hv1"]
    assert registry.find_guest(U2.upper())[0].name == "db"
    registry.put_guest(guest(U1, "www", "hv1"))  # renamed
    with pytest.raises(NotFound):
        registry.find_guest("web")
    assert registry.find_guest("www")[0].uuid == U1
    registry.put_guest(guest(U1, "www", "hv2"))  # migrated: both hosts report it a moment
    assert sorted(g.host for g in registry.find_guest("www")) == ["hv1", "hv2"]
    registry.delete_guest("hv1", U1)
    assert [g.host for g in registry.find_guest(U1)] == ["hv2"]
    registry.write_guests((), (U2,), "hv1")  # undefined
    with pytest.raises(NotFound):
        registry.find_guest("db")
    assert index(registry) == [f"{U1}/hv2/{U1}", f"www/hv2/{U1}"]
    registry.forget_guests("hv2")
    assert index(registry) == [] and registry.store.list(KEYS.guests)[0] == []


class CountingStore(StoreProxy):
    """A store that counts its reads."""

    def __init__(self, inner: MemStore) -> None:
        self._inner, self.reads = inner, 0

    @property
    def inner(self) -> MemStore:
        return self._inner

    def get(self, key: str) -> Item | None:
        self.reads += 1
        return self._inner.get(key)

    def list(self, prefix: str) -> tuple[list[Item], int]:
        self.reads += 1
        return self._inner.list(prefix)


def test_a_guest_shown_by_its_name_is_read_once() -> None:
    """One index listing and one record read for a name in lower case (the uuid's
    lookup and the name's are the same index entries), two listings for another."""
    counting = CountingStore(MemStore(lambda: 0.0))
    registry = Registry(counting, KEYS)
    registry.write_guests((guest(U1, "web", "hv1"), guest(U2, "Db", "hv1")), (), "hv1")
    counting.reads = 0
    assert [g.uuid for g in registry.find_guest("web")] == [U1]
    assert counting.reads == 2
    counting.reads = 0
    assert [g.uuid for g in registry.find_guest("Db")] == [U2]
    assert counting.reads == 3  # "db" (as a uuid: no entry), then "Db" and its record
    assert [g.name for g in registry.find_guest(U2)] == ["Db"]


def test_a_stale_or_forged_entry_is_passed_over(registry: Registry) -> None:
    registry.put_guest(guest(U1, "web", "hv1"))
    registry.store.put(entry(KEYS, "web", "hv9", U2), b"")  # no such record
    registry.store.put(entry(KEYS, "web", "hv1", U2), b"")
    registry.store.put(KEYS.guest("hv1", U2), b"{corrupt")
    assert [g.uuid for g in registry.find_guest("web")] == [U1]


def test_index_guests_gives_old_records_their_entries(registry: Registry) -> None:
    registry.store.put(KEYS.guest("hv1", U1), b"")  # as an older agent wrote it: no entry
    registry.index_guests([guest(U1, "web", "hv1")])
    registry.put_guest(guest(U1, "web", "hv1"))
    assert registry.find_guest("web")[0].uuid == U1


def test_write_guests_keeps_each_guest_in_one_transaction(registry: Registry) -> None:
    many = tuple(guest(f"{n:08d}-0000-0000-0000-000000000000", f"g{n}", "hv1")
                 for n in range(90))
    registry.write_guests(many, (), "hv1")
    renamed = tuple(replace(g, name=g.name + "x") for g in many)
    registry.write_guests(renamed, (), "hv1")
    assert len(index(registry)) == 180
    assert registry.find_guest("g89x")[0].uuid == many[89].uuid


def test_paging_shows_one_page_and_counts_the_rest() -> None:
    bad = DecodeError("/k", "not JSON")
    rows = [{"n": n} for n in range(10)]
    paging = Paging(limit=3, page=2)
    shown = list(paging.select([rows[0], bad, *rows[1:]], lambda r: r["n"] != 4))
    assert [r["n"] for r in shown] == [3, 5, 6]
    assert (paging.matched, paging.more, paging.errors) == (9, 3, [bad])
    assert paging.footer() is not None and "3 more" in paging.footer()
    everything = Paging()
    assert len(list(everything.select(rows, lambda r: True))) == 10
    assert everything.more == 0 and everything.footer() is None


def test_stream_json_writes_one_document(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    output.stream_json("guests", iter([{"a": 1}, {"b": [2]}]), lambda: {"errors": []})
    assert json.loads(out.getvalue()) == {"v": 1, "guests": [{"a": 1}, {"b": [2]}],
                                          "errors": []}
    out.seek(0)
    out.truncate()
    output.stream_json("guests", iter([]), dict)
    assert json.loads(out.getvalue()) == {"v": 1, "guests": []}


def test_stream_json_through_the_byte_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Written as bytes under a text stdout (what a terminal or pipe is), after what the
    text layer holds; what json does not know is written as its str(), as before."""
    from pathlib import Path

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    monkeypatch.setattr("sys.stdout", out)
    out.write("before ")
    items = [{"name": "gäst", "n": 1.5, "ok": None, "path": Path("/x"), 3: "int key"}]
    output.stream_json("guests", iter(items), lambda: {"matched": 1})
    text = raw.getvalue().decode()
    assert text.startswith("before {") and text.endswith("}\n")
    assert json.loads(text.removeprefix("before ")) == {
        "v": 1, "guests": [{"name": "gäst", "n": 1.5, "ok": None, "path": "/x",
                            "3": "int key"}], "matched": 1}


class _NoIndexGrant(MemStore):
    """etcd with a host role from before the guest index: writes under it refused."""

    def txn(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        if any(op.key.startswith(KEYS.guest_index) for op in success):
            from gridtool.errors import AuthError
            raise AuthError("etcd refused the request (user host-hv1): permission denied")
        return super().txn(compares, success, failure)


def test_a_refused_index_never_holds_back_a_guest_record() -> None:
    registry = Registry(_NoIndexGrant(lambda: 0.0), KEYS)
    registry.write_guests((guest(U1, "web", "hv1"),), (), "hv1")
    registry.put_guest(guest(U2, "db", "hv1"))
    assert sorted(registry.guests_of("hv1")[0]) == [U1, U2]
    registry.delete_guest("hv1", U2)
    assert sorted(registry.guests_of("hv1")[0]) == [U1]


def test_stream_json_writes_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Items already JSON (bytes) and dicts mixed, over several chunks: one document,
    written a chunk at a time (not one write per item)."""
    writes: list[int] = []

    class Buffer(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            writes.append(len(data))
            return super().write(data)

    raw = Buffer()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(raw, encoding="utf-8"))
    items = [b'{"i":%d,"pad":"%s"}' % (i, b"x" * 100) if i % 2 else {"i": i, "pad": "x" * 100}
             for i in range(3000)]
    output.stream_json("guests", iter(items), lambda: {"errors": []})
    assert [g["i"] for g in json.loads(raw.getvalue())["guests"]] == list(range(3000))
    assert len(writes) == sum(writes) // output.CHUNK + 1
