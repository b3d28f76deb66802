"""The fleet index (``placement/index.py``): kept per changed key, it gives what
``read_fleet`` reads from scratch (by property, over the pure mirror and its journal);
its audit finds and repairs a change the journal lost (and leaves one the journal holds);
a manager's round reads only the guest records of the hosts that changed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.clock import Clock
from gridtool.config import Config
from gridtool.ha.manager import Manager
from gridtool.placement.index import AUDIT_ROUNDS, FleetIndex, classify
from gridtool.placement.shell import guest_needs, read_fleet, read_hosts
from gridtool.registry.fleet import Registry
from gridtool.registry.hostconf import HostConf
from gridtool.registry.memstore import MemStore
from gridtool.registry.mirror import Memo, Mirror
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.model import encode as encode_record
from gridtool.registry.records import GuestSettings, encode
from gridtool.registry.store import Event, Item

KEYS = Config().keys
HOSTS = ("hv1", "hv2", "hv2-b")  # "hv2-b/" sorts before "hv2/"
UUIDS = tuple(f"00000000-0000-0000-0000-00000000000{n}" for n in range(4))


def _guest(uuid: str, host: str, state: str, shared: bool, vcpus: int) -> bytes:
    disk = Disk("vda", f"/dev/e{uuid[-1]}", "block", shared=shared,
                volume=f"aoe-e{uuid[-1]}" if shared else "")
    return encode_record(GuestRecord(uuid, f"g{uuid[-1]}", host, state, vcpus, 256, 0.0,
                                     (disk,)))


def _host(name: str, storage: bool) -> bytes:
    return encode_record(HostRecord(name, "test:///", "test", 8, 8192, 4096, "0", 0.0,
                             storage=("aoe-",) if storage else ()))


#: One write to the registry: (key, value or None for a delete).
writes = st.one_of(
    st.builds(lambda u, h, state, shared, vcpus: (KEYS.guest(h, u),
                                                  _guest(u, h, state, shared, vcpus)),
              st.sampled_from(UUIDS), st.sampled_from(HOSTS),
              st.sampled_from(("running", "shutoff", "paused")), st.booleans(),
              st.integers(1, 4)),
    st.builds(lambda u, h, other: (KEYS.guest(h, u), _guest(u, other, "running", True, 1)),
              st.sampled_from(UUIDS), st.sampled_from(HOSTS), st.sampled_from(HOSTS)),
    st.builds(lambda u, h: (KEYS.guest(h, u), None), st.sampled_from(UUIDS),
              st.sampled_from(HOSTS)),
    st.builds(lambda u, h: (KEYS.guest(h, u), b"{not json"), st.sampled_from(UUIDS),
              st.sampled_from(HOSTS)),
    st.builds(lambda u, ha, group: (KEYS.guest_settings(u), encode(GuestSettings(
        u, f"g{u[-1]}", ha=ha, anti_affinity=group))),
        st.sampled_from(UUIDS), st.booleans(), st.sampled_from(("", "web"))),
    st.builds(lambda u: (KEYS.guest_settings(u), None), st.sampled_from(UUIDS)),
    st.builds(lambda h, storage: (KEYS.host(h), _host(h, storage)), st.sampled_from(HOSTS),
              st.booleans()),
    st.builds(lambda h: (KEYS.host(h), None), st.sampled_from(HOSTS)),
    st.builds(lambda h, d: (KEYS.hostconf(h), encode(HostConf(h, draining=d))),
              st.sampled_from(HOSTS), st.booleans()),
)


class Feed:
    """The pure mirror with a journal, fed one write at a time as a watch would."""

    def __init__(self) -> None:
        self.mirror = Mirror((KEYS.hosts, KEYS.guests, KEYS.settings, KEYS.hostconfs,
                              KEYS.fence_agents), journal=True)
        self.revision = 0

    def write(self, key: str, value: bytes | None) -> None:
        self.revision += 1
        self.mirror.apply([Event("delete" if value is None else "put", key, value or b"",
                                 self.revision)])

    def list(self, prefix: str) -> list[Item]:
        return self.mirror.list(prefix) or []


def _index_view(index: FleetIndex, feed: Feed) -> tuple[Any, ...]:
    """What the manager's round takes from the index (``Manager._fleet``)."""
    hosts, draining, declared = read_hosts(feed.mirror.frozen(), KEYS, Memo())
    return index.views(hosts, draining, declared), index.fenced(), dict(index.settings)


def _scratch(feed: Feed) -> tuple[Any, ...]:
    """The same from ``read_fleet`` reading everything."""
    fleet = read_fleet(feed.mirror.frozen(), KEYS)
    return fleet.hosts, tuple(r for r in fleet.guests if r.fenced), fleet.settings


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(writes, min_size=1, max_size=6), min_size=1, max_size=8))
def test_the_index_kept_per_changed_key_reads_as_read_fleet_from_scratch(
        rounds: list[list[tuple[str, bytes | None]]]) -> None:
    feed, index = Feed(), FleetIndex(KEYS, guest_needs)
    for batch in rounds:
        for key, value in batch:
            feed.write(key, value)
        index.update(feed.list, feed.mirror.take_changed())
        assert _index_view(index, feed) == _scratch(feed)
        assert index.audit(feed.list) == []  # nothing for the audit to repair


def test_changed_keys_name_the_hosts_and_settings_to_read_again() -> None:
    changes = classify(KEYS, [KEYS.guest("hv1", "u1"), KEYS.guest("hv2", "u2"),
                              KEYS.guest_settings("u3"), KEYS.host("hv9"),
                              KEYS.guests + "hv4"])  # not a record's key: no host
    assert changes.hosts == {"hv1", "hv2"} and changes.settings == {"u3"}


def test_the_journal_names_each_change_once_and_everything_after_a_listing() -> None:
    m = Mirror(("/r/a/", "/r/hb/"), quiet=("/r/hb/",), journal=True)
    assert m.take_changed() is None  # nothing taken yet: everything
    m.apply([Event("put", "/r/a/x", b"1", 1), Event("put", "/r/a/y", b"1", 2),
             Event("put", "/r/hb/h1", b"t", 3), Event("put", "/r/a/x", b"2", 4)])
    assert m.take_changed() == {"/r/a/x", "/r/a/y"}  # heartbeats are quiet: not journaled
    assert m.take_changed() == frozenset()
    m.reset([Item("/r/a/x", b"3", 5, 1, 0)], 5)
    assert m.take_changed() is None
    assert Mirror("/r/a/").take_changed() is None and Mirror("/r/a/").take_changed() is None


def test_the_audit_repairs_a_change_the_journal_lost_within_one_pass() -> None:
    feed, index = Feed(), FleetIndex(KEYS, guest_needs)
    for h in HOSTS:
        feed.write(KEYS.host(h), _host(h, False))
    feed.write(KEYS.guest("hv2", UUIDS[0]), _guest(UUIDS[0], "hv2", "running", True, 2))
    index.update(feed.list, feed.mirror.take_changed())
    _index_view(index, feed)
    feed.write(KEYS.guest("hv2", UUIDS[1]), _guest(UUIDS[1], "hv2", "running", True, 3))
    feed.write(KEYS.guest_settings(UUIDS[0]),
               encode(GuestSettings(UUIDS[0], "g0", ha=True, anti_affinity="db")))
    feed.mirror.take_changed()  # lost: the index never hears of these two writes
    index.update(feed.list, frozenset())
    assert _index_view(index, feed) != _scratch(feed)
    repaired = [h for _ in range(AUDIT_ROUNDS) for h in index.audit(feed.list)]
    assert repaired == ["hv2"]
    assert _index_view(index, feed) == _scratch(feed)


# --------------------------------------------------------------------------- the manager


def test_a_round_after_one_guest_changed_reads_only_that_hosts_guests() -> None:
    store = MemStore(lambda: 0.0)
    registry = Registry(store, KEYS)
    for h in range(20):
        registry.put_host(HostRecord(f"hv{h:02d}", "test:///", "test", 8, 8192, 8192, "0",
                                     0.0), None)
        for n in range(10):
            uuid = f"00000000-0000-0000-0000-0000000{h:02d}{n:03d}"
            registry.put_guest(GuestRecord(uuid, f"g{h}-{n}", f"hv{h:02d}", "running", 1,
                                           256, 0.0))
    manager = Manager(Config(), store, "m1", threaded=False,
                      clock=Clock(lambda: 100.0, lambda: 100.0))
    manager._watches = manager._watch()
    view: Any = manager.view
    read = [0]  # guest records the mirror's listings return
    inner = view.mirror.list
    view.mirror.list = lambda prefix: _counted(read, inner(prefix))
    view.sync()
    snap, _ = manager.snapshot()
    assert read == [200]  # the first round reads every guest
    read[0] = 0
    registry.put_guest(GuestRecord("00000000-0000-0000-0000-000000003001", "g3-1", "hv03",
                                   "paused", 1, 256, 0.0))
    view.sync()
    again, _ = manager.snapshot()
    assert read == [10]  # hv03's guests, not the fleet's 200
    assert [len(h.guests) for h in again.hosts] == [len(h.guests) for h in snap.hosts]


def _counted(read: list[int], items: list[Item] | None) -> list[Item] | None:
    read[0] += sum(i.key.startswith(KEYS.guests) for i in items or [])
    return items


def test_the_audit_leaves_a_change_the_journal_holds_for_the_next_round() -> None:
    feed, index = Feed(), FleetIndex(KEYS, guest_needs)
    feed.write(KEYS.host("hv2"), _host("hv2", False))
    feed.write(KEYS.guest("hv2", UUIDS[0]), _guest(UUIDS[0], "hv2", "running", True, 2))
    index.update(feed.list, feed.mirror.take_changed())
    _index_view(index, feed)
    # written while the round acted, after it took the journal: the next round reads it
    feed.write(KEYS.guest("hv2", UUIDS[1]), _guest(UUIDS[1], "hv2", "running", True, 3))
    feed.write(KEYS.guest_settings(UUIDS[0]), encode(GuestSettings(UUIDS[0], "g0", ha=True)))
    assert [h for _ in range(AUDIT_ROUNDS)
            for h in index.audit(feed.list, feed.mirror.journaled)] == []
    index.update(feed.list, feed.mirror.take_changed())
    assert _index_view(index, feed) == _scratch(feed)
