"""The manager's fence keys, fence agents and host settings kept per changed key
(``registry/keyindex.py``): by property, over the pure mirror and its journal, they equal
what ``read_all_fences``, ``fenceagents.read_all`` and ``hostconf.read_all`` read from
scratch; the audit repairs a change the journal lost and leaves one it holds; a
manager's round decodes only the keys that changed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.config import Config
from gridtool.fencing.rules import Fence, FenceKind
from gridtool.fencing.shell import read_all_fences
from gridtool.ha.manager import Manager
from gridtool.registry import fenceagents, hostconf
from gridtool.registry.fenceagents import FenceAgentConf
from gridtool.registry.hostconf import HostConf
from gridtool.registry.keyindex import KeyIndex, decoded
from gridtool.registry.memstore import MemStore
from gridtool.registry.records import encode
from tests.unit.test_fleet_index import Feed

KEYS = Config().keys
NAMES = ("hv1", "hv2", "hv2-b")  # "hv2-b" sorts before "hv2/..." keys
VOLUMES = ("aoe-1", "aoe-10", "aoe-2")  # "aoe-1" is a prefix of "aoe-10"


def _fence(volume: str, holder: str) -> bytes:
    return Fence(volume, holder, "u1", "g1", FenceKind.HA, 1.0).to_json().encode()


writes = st.one_of(
    st.builds(lambda v, h: (KEYS.fence(v), _fence(v, h)), st.sampled_from(VOLUMES),
              st.sampled_from(NAMES)),
    st.builds(lambda v: (KEYS.fence(v), b"{not json"), st.sampled_from(VOLUMES)),
    st.builds(lambda v: (KEYS.fence(v), None), st.sampled_from(VOLUMES)),
    st.builds(lambda h, a: (KEYS.fence_agent(h), encode(FenceAgentConf(h, a, {}))),
              st.sampled_from(NAMES), st.sampled_from(("fence_ipmilan", "fence_virsh"))),
    st.builds(lambda h: (KEYS.fence_agent(h), b"[]"), st.sampled_from(NAMES)),
    st.builds(lambda h: (KEYS.fence_agent(h), None), st.sampled_from(NAMES)),
    st.builds(lambda h, d: (KEYS.hostconf(h), encode(HostConf(h, draining=d))),
              st.sampled_from(NAMES), st.booleans()),
    st.builds(lambda h: (KEYS.hostconf(h), b"{not json"), st.sampled_from(NAMES)),
    st.builds(lambda h: (KEYS.hostconf(h), None), st.sampled_from(NAMES)),
)


def _indexes() -> tuple[KeyIndex, KeyIndex, KeyIndex]:  # type: ignore[type-arg]
    manager = Manager(Config(), MemStore(lambda: 0.0), "m1", threaded=False)
    return manager._fences, manager._agents, manager._hostconfs


def _scratch(feed: Feed) -> tuple[object, ...]:
    snap = feed.mirror.frozen()
    return (read_all_fences(snap, KEYS)[0], fenceagents.read_all(snap, KEYS),
            hostconf.read_all(snap, KEYS))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(writes, min_size=1, max_size=6), min_size=1, max_size=8))
def test_kept_per_changed_key_they_read_as_a_full_decode(
        rounds: list[list[tuple[str, bytes | None]]]) -> None:
    feed = Feed()
    feed.mirror.prefixes += (KEYS.fences,)
    indexes = _indexes()
    for batch in rounds:
        for key, value in batch:
            feed.write(key, value)
        changed = feed.mirror.take_changed()
        for index in indexes:
            index.update(feed.list, changed)
        assert tuple(i.values for i in indexes) == _scratch(feed)
        assert [i.audit(feed.list) for i in indexes] == [[], [], []]


def test_the_audit_repairs_a_lost_change_and_leaves_a_journaled_one() -> None:
    feed = Feed()
    index = KeyIndex(KEYS.hostconfs, decoded(HostConf))
    feed.write(KEYS.hostconf("hv1"), encode(HostConf("hv1")))
    index.update(feed.list, feed.mirror.take_changed())
    feed.write(KEYS.hostconf("hv1"), encode(HostConf("hv1", draining=True)))
    assert index.audit(feed.list, feed.mirror.journaled) == []  # the next round reads it
    feed.mirror.take_changed()  # lost: the journal no longer names it
    assert index.values["hv1"].draining is False
    assert index.audit(feed.list, feed.mirror.journaled) == ["hv1"]
    assert index.values["hv1"].draining is True
    feed.write(KEYS.hostconf("hv2"), encode(HostConf("hv2")))
    feed.mirror.take_changed()
    assert index.audit(feed.list, feed.mirror.journaled) == ["hv2"]  # a lost new key


def test_a_round_decodes_only_the_keys_that_changed() -> None:
    feed = Feed()
    seen: list[str] = []
    decode = decoded(HostConf)
    index = KeyIndex(KEYS.hostconfs, lambda name, item: seen.append(name) or decode(
        name, item))
    for name in NAMES:
        feed.write(KEYS.hostconf(name), encode(HostConf(name)))
    index.update(feed.list, feed.mirror.take_changed())
    assert sorted(seen) == sorted(NAMES)
    seen.clear()
    feed.write(KEYS.hostconf("hv2"), encode(HostConf("hv2", draining=True)))
    index.update(feed.list, feed.mirror.take_changed())
    assert seen == ["hv2"]  # the old round decoded all three
    index.update(feed.list, None)  # a listing: everything again
    assert sorted(seen) == sorted(["hv2", *NAMES])
