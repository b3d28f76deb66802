"""A round's restarts in few transactions: the pure plan (order, pack) by property, and
the manager writing a 50-guest failover in one transaction, falling back to one guest
at a time when a guest's settings changed under it."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from gridtool.clock import Clock
from gridtool.config import Config
from gridtool.fencing.recovery import Method
from gridtool.fencing.rules import ReleasePlan
from gridtool.ha import batch
from gridtool.ha.batch import Cost, TxnLimits
from gridtool.ha.manager import Manager
from gridtool.ha.rules import (
    Action,
    Blocked,
    FenceHost,
    MarkError,
    NoteGone,
    ReleaseFences,
    Restart,
    RevokeLease,
)
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.records import GuestSettings, Intent, decode, encode
from gridtool.registry.store import Compare, Delete, Put

KEYS = Config().keys

# -- the plan -----------------------------------------------------------------------------

_BEFORE = st.sampled_from(["note", "fence", "release", "revoke", "block", "error"])


def _before(kind: str, guest: str) -> Action:
    return {
        "note": NoteGone(guest, guest, "hv9", 1.0),
        "fence": FenceHost(guest, guest, "hv9", Method.POWER),
        "release": ReleaseFences(guest, guest, "hv9", ReleasePlan(guest, "hv9", (), ())),
        "revoke": RevokeLease(guest, guest, "hv9"),
        "block": Blocked(guest, guest, "wait"),
        "error": MarkError(guest, guest, "no"),
    }[kind]


@st.composite
def rounds(draw: st.DrawFn) -> list[Action]:
    """Actions as ``decide`` gives them: each guest's in a run, a restart always last."""
    actions: list[Action] = []
    for n in range(draw(st.integers(0, 40))):
        guest = f"g{n}"
        actions += [_before(k, guest) for k in draw(st.lists(_BEFORE, max_size=3))]
        if draw(st.booleans()):
            actions.append(Restart(guest, guest, "hv1", "hv9", True, "gone", "power"))
    return actions


@given(rounds())
def test_every_restart_comes_after_its_guests_other_actions(actions: list[Action]) -> None:
    singles, restarts = batch.order(actions)
    assert singles == [a for a in actions if not isinstance(a, Restart)]  # decide's order
    assert sorted(map(id, singles + restarts)) == sorted(map(id, actions))  # all, once
    done = [*singles, *restarts]
    for i, action in enumerate(done):
        if isinstance(action, Restart):
            assert all(a.guest != action.guest for a in done[i + 1:])


_COSTS = st.lists(st.builds(Cost, st.integers(0, 3), st.integers(0, 5),
                            st.integers(0, 600_000)), max_size=200)


@given(_COSTS, st.integers(4, 200), st.integers(1_000, 2_000_000))
def test_pack_covers_every_item_in_order_within_the_limits(
        costs: Sequence[Cost], ops: int, size: int) -> None:
    limits, fixed = TxnLimits(ops, size), Cost(1, 0, 0)
    groups = batch.pack(costs, limits, fixed)
    assert [i for g in groups for i in g] == list(range(len(costs)))
    for group in groups:
        total = fixed
        for i in group:
            total = total + costs[i]
        assert total.within(limits) or len(group) == 1  # too big to share: alone
        if group.stop < len(costs):  # a group closes only when the next would not fit
            assert not (total + costs[group.stop]).within(limits)


def test_a_50_guest_restart_at_etcd_defaults_is_one_transaction() -> None:
    groups = batch.pack([Cost(1, 2, 1_500)] * 150)
    assert [len(g) for g in groups] == [64, 64, 22]  # 2 puts each: 128 a transaction


# -- the manager ---------------------------------------------------------------------------


class Txns(MemStore):
    """The in-memory store, counting transactions with a start intent in them."""

    def __init__(self) -> None:
        super().__init__(lambda: 0.0)
        self.starts: list[int] = []

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> bool:
        ok = super().txn(compares, success, failure)
        intents = sum(isinstance(p, Put) and p.key.startswith(KEYS.all_intents)
                      for p in success)
        if intents:
            self.starts.append(intents if ok else -intents)
        return ok


def _failover(guests: int) -> tuple[Txns, Manager]:
    """hv1 alive; hv9 gone with ``guests`` HA guests, seen gone, its timed grace over."""
    store = Txns()
    registry = Registry(store, KEYS)
    registry.put_host(HostRecord("hv1", "test:///", "test", 512, 1 << 20, 1 << 20, "0", 0.0,
                                 watchdog=True), None)
    for n in range(guests):
        uuid = f"00000000-0000-0000-0000-{n:012d}"
        disk = Disk("vda", f"/dev/e{n}", "block", shared=True, volume=f"aoe-e{n}")
        registry.put_guest(GuestRecord(uuid, f"g{n}", "hv9", "running", 1, 256, 0.0, (disk,)))
        store.put(KEYS.guest_settings(uuid), encode(GuestSettings(uuid, f"g{n}", ha=True)))
    now = [100.0]
    manager = Manager(Config(), store, "m1", threaded=False,
                      clock=Clock(lambda: now[0], lambda: now[0]))
    assert manager.step() and not store.starts  # noted gone: the grace runs
    now[0] += manager.fencing.grace + 1
    return store, manager


def _started(store: MemStore) -> list[Intent]:
    return [decode(Intent, i.key, i.value) for i in store.list(KEYS.all_intents)[0]]


def test_a_failover_of_50_guests_is_written_in_one_transaction() -> None:
    store, manager = _failover(50)
    assert manager.step()
    intents = _started(store)
    assert sorted(i.name for i in intents) == sorted(f"g{n}" for n in range(50))
    assert len({i.id for i in intents}) == 50 and {i.host for i in intents} == {"hv1"}
    assert all(i.params["fence"].startswith("timed:") for i in intents)  # the fence relied on
    assert store.starts == [50]
    for uuid in {i.guest for i in intents}:
        item = store.get(KEYS.guest_settings(uuid))
        assert item is not None and len(decode(GuestSettings, item.key, item.value).attempts) == 1


def test_a_batch_that_meets_a_changed_setting_is_written_one_guest_at_a_time() -> None:
    store, manager = _failover(3)
    changed = "00000000-0000-0000-0000-000000000001"
    held = manager._held

    def stale(key: str):  # type: ignore[no-untyped-def]
        item = held(key)
        if key == KEYS.guest_settings(changed):  # as if the view had not seen a write yet
            store.put(key, item.value)
        return item

    manager._held = stale  # type: ignore[method-assign]
    assert manager.step()
    assert store.starts == [-3, 1, 1, 1]
    assert sorted(i.name for i in _started(store)) == ["g0", "g1", "g2"]
