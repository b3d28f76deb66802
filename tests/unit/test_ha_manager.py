"""The HA manager's action dispatch: every kind of action ``decide`` returns has a
handler, and an action without one is a loud error, never a silent success; its
snapshot never misses a restart that finishes while it is read."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, get_args

import pytest

from gridtool.config import Config
from gridtool.fencing.power import Outcome
from gridtool.fencing.recovery import HostFence, StorageResult
from gridtool.fencing.rules import Fence, FenceKind
from gridtool.ha.manager import _HANDLERS, Manager
from gridtool.ha.rules import Action, Blocked, Restart, Snapshot, decide
from gridtool.registry import fenceagents
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.records import GuestSettings, Intent, ManagerStatus, decode, encode
from gridtool.registry.store import Item

EMPTY = Snapshot(now=0.0, hosts=(), guests=())


@dataclass(frozen=True)
class Unknown:
    """An action kind the manager was never taught."""

    guest: str
    name: str


@pytest.fixture
def manager() -> Manager:
    return Manager(Config(), MemStore(lambda: 0.0), "m1", threaded=False)


def test_every_action_kind_has_a_handler() -> None:
    assert set(_HANDLERS) == set(get_args(Action))


def test_an_unknown_action_is_logged_and_raised(manager: Manager,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="gridtool.ha.manager"), \
            pytest.raises(TypeError, match="no handler for Unknown"):
        manager._act(Unknown("u1", "web1"), EMPTY)  # type: ignore[arg-type]
    assert "event=ha_unknown_action type=Unknown" in caplog.text


def test_a_known_action_goes_to_its_handler(manager: Manager) -> None:
    assert manager._act(Blocked("u1", "web1", "no host"), EMPTY)
    assert manager.blocked == {"u1": "no host"}


class _FinishingStore(MemStore):
    """A MemStore on which an agent finishes an HA restart right after the manager's
    ``after``-th range read (0: before the first): the agent takes the fence, then writes
    the intent's outcome (its guest record follows later, as in the agent)."""

    def __init__(self, after: int, finish: Callable[[MemStore], None]) -> None:
        super().__init__(lambda: 0.0)
        self.after, self.finish, self.reads = after, finish, 0

    def list(self, prefix: str) -> tuple[list[Item], int]:
        if self.reads == self.after:
            self.finish(self)
        self.reads += 1
        return super().list(prefix)


READS = 13  # more range reads than one snapshot makes


@pytest.mark.parametrize("after", range(READS + 1))
def test_a_restart_finishing_during_the_snapshot_is_not_ordered_again(after: int) -> None:
    """Found by the etcd quorum-loss test: the manager read the guests and fences, the
    agent then finished the restart (fence taken, intent done), and the manager's intent
    read no longer counted it in flight: a second restart of a guest already running,
    another of its 3 restarts an hour used up. Whenever the agent finishes, the snapshot
    holds either the intent in flight or the fence taken."""
    keys = Config().keys
    uuid, volume = "66666666-7777-8888-9999-000000000000", "aoe-e9.2"
    disk = Disk("vda", "/dev/etherd/e9.2", "block", shared=True, volume=volume)
    intent = Intent("i1", "hv2", "start", uuid, "web", time.time(), "manager:m1", "running")

    def finish(store: MemStore) -> None:
        fence = Fence(volume, "hv2", uuid, "web", FenceKind.HA, 0.0)
        store.put(keys.fence(volume), fence.to_json().encode())
        store.put(keys.intent("hv2", "i1"), encode(replace(intent, state="done")))

    store = _FinishingStore(after, finish)
    registry = Registry(store, keys)
    for host in ("hv1", "hv2"):
        registry.put_host(HostRecord(host, "test:///", "test", 4, 4096, 4096, "0", 0.0), None)
        registry.put_guest(GuestRecord(uuid, "web", host, "shutoff", 1, 128, 0.0, (disk,)))
    store.put(keys.guest_settings(uuid), encode(GuestSettings(uuid, "web", ha=True,
                                                              attempts=[[0.0, 1.0]])))
    store.put(keys.intent("hv2", "i1"), encode(intent))
    manager = Manager(Config(), store, "m1", threaded=False)
    snap, _ = manager.snapshot()
    assert store.reads < READS
    assert [a for a in decide(snap, manager.limits) if isinstance(a, Restart)] == []


# --------------------------------------------------------------------------- fencing


class _Storage:
    """A StorageFencer port implementation for the test: answers ``result`` or raises."""

    def __init__(self, result: Any) -> None:
        self.result, self.calls = result, []  # type: list[tuple[str, tuple[str, ...]]]

    def preempt(self, host: str, volumes: Any) -> Any:
        self.calls.append((host, tuple(volumes)))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _lost_hv1(store: MemStore) -> None:
    """hv2 alive; hv1 gone (no host record), its HA guest ``web`` left on its records."""
    keys = Config().keys
    uuid = "66666666-7777-8888-9999-000000000000"
    disk = Disk("vda", "/dev/etherd/e9.2", "block", shared=True, volume="aoe-e9.2")
    registry = Registry(store, keys)
    registry.put_host(HostRecord("hv2", "test:///", "test", 4, 4096, 4096, "0", 0.0,
                                 watchdog=True), None)
    registry.put_guest(GuestRecord(uuid, "web", "hv1", "running", 1, 128, 0.0, (disk,)))
    store.put(keys.guest_settings(uuid), encode(GuestSettings(uuid, "web", ha=True)))
    fenceagents.write(store, keys, "hv1", "fence_ipmilan", {"ip": "10.0.0.11"})


def _intents(store: MemStore) -> list[Intent]:
    keys = Config().keys
    return [decode(Intent, i.key, i.value) for i in store.list(keys.all_intents)[0]]


def _record(store: MemStore, host: str = "hv1") -> HostFence:
    item = store.get(Config().keys.host_fence(host))
    assert item is not None
    return decode(HostFence, item.key, item.value)


def test_the_power_fence_runs_once_is_recorded_and_the_restart_names_it() -> None:
    store = MemStore(lambda: 0.0)
    _lost_hv1(store)
    calls: list[str] = []

    def power(host: str) -> Outcome:
        calls.append(host)
        return Outcome(True, "power off confirmed by status after 0.4 s")

    first = Manager(Config(), store, "m1", threaded=False, power_fence=power)
    first.step()
    assert calls == ["hv1"]
    assert _record(store).power == "off"
    (intent,) = _intents(store)
    assert (intent.host, intent.params["fence"]) == (
        "hv2", "power: power off confirmed by status after 0.4 s")
    # a new leader: the fence is recorded, so it is not run again
    first._resign()
    second = Manager(Config(), store, "m2", threaded=False, power_fence=power)
    second.step()
    assert second.leader_rev and calls == ["hv1"]


def test_a_failed_power_fence_is_recorded_and_nothing_is_restarted() -> None:
    store = MemStore(lambda: 0.0)
    _lost_hv1(store)
    manager = Manager(Config(), store, "m1", threaded=False,
                      power_fence=lambda host: Outcome(False, "fence agent off failed (exit 1)"))
    manager.step()
    record = _record(store)
    assert (record.power, record.failed) == (
        "failed", "power fence of hv1 failed: fence agent off failed (exit 1)")
    assert _intents(store) == []
    status = decode(ManagerStatus, "k", store.get(Config().keys.manager_status).value)  # type: ignore[union-attr]
    assert status.fences == {"hv1": f"FAILED: {record.failed}"}
    assert status.blocked == {"web": record.failed}


@pytest.mark.parametrize(("result", "restarted", "state"), [
    (StorageResult(preempted=("aoe-e9.2",)), True, "preempted"),
    (StorageResult(refused={"aoe-e9.2": "RESERVATION CONFLICT"}), False, "refused"),
    (RuntimeError("target unreachable"), False, "refused"),
], ids=["preempted", "refused", "port-raises"])
def test_the_storage_fence_port(result: Any, restarted: bool, state: str) -> None:
    """Preempted on every LUN: recovered without power; refused, or a port that raises:
    never counted as fenced (and the power agent is not tried instead)."""
    store = MemStore(lambda: 0.0)
    _lost_hv1(store)
    storage = _Storage(result)
    power: list[str] = []
    manager = Manager(Config(), store, "m1", threaded=False, storage_fencer=storage,
                      power_fence=lambda h: power.append(h) or Outcome(True, "off"))
    manager.step()
    assert storage.calls == [("hv1", ("aoe-e9.2",))] and power == []
    assert _record(store).storage == {"aoe-e9.2": state}
    assert bool(_intents(store)) == restarted


def test_without_a_storage_fencer_wired_there_is_no_storage_fencing() -> None:
    store = MemStore(lambda: 0.0)
    _lost_hv1(store)
    manager = Manager(Config(), store, "m1", threaded=False,
                      power_fence=lambda h: Outcome(True, "off"))
    snap, _ = manager.snapshot()
    assert not snap.storage_fencer and snap.power_agents == {"hv1"}


class _Unreachable(MemStore):
    """A registry that never answers (etcd down)."""

    def grant_lease(self, ttl: int) -> int:
        from gridtool.errors import RegistryUnavailable

        raise RegistryUnavailable("no etcd endpoint answered")


class _CountedStop(threading.Event):
    """A stop event that records each timed wait's timeout instead of sleeping, and is
    set after ``limit`` of them (a wait without a timeout blocks until it is set)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        self.waits.append(timeout)
        if len(self.waits) >= self.limit:
            self.set()
        return self.is_set()


def test_a_candidate_that_cannot_reach_etcd_backs_off_with_jitter() -> None:
    """After an etcd outage many candidates must not retry in lockstep: each failed turn
    waits a random time under a doubling ceiling (0.5 s, 1 s, ... 5 s), not a fixed 0.5 s."""
    waits: list[list[float]] = []
    for _ in range(20):
        stop = _CountedStop(8)
        Manager(Config(), _Unreachable(lambda: 0.0), "m1", threaded=False).run(stop)
        waits.append(list(stop.waits))
    assert all(len(w) == 8 for w in waits)
    for n in range(8):
        nth = [w[n] for w in waits]
        assert all(0.0 <= d <= min(5.0, 0.5 * 2 ** n) for d in nth)
        assert len(set(nth)) == 20  # twenty candidates, twenty different delays


# --------------------------------------------------------------------------- round timing


def test_the_round_after_a_lost_host_comes_when_its_timed_grace_ends() -> None:
    """A timed fence is recovered by the round at the grace's end, not up to a period
    (plus a round) later: the wait before the next round is cut to the grace left."""
    from gridtool.clock import Clock

    store = MemStore(lambda: 0.0)
    _lost_hv1(store)
    fenceagents.remove(store, Config().keys, "hv1")  # no fence agent: the timed path
    now = [1000.0]
    manager = Manager(Config(ttl=10), store, "m1", period=30.0, threaded=False,
                      clock=Clock(lambda: now[0], lambda: now[0]))
    manager.step()  # sees hv1 gone, notes it: the grace (TTL + 2 s = 12 s) starts now
    assert _record(store).gone_since == 1000.0 and _intents(store) == []
    now[0] += 5.0
    assert manager._until_next() == pytest.approx(7.0 + 0.01)
    now[0] += 7.0 + 0.01
    manager.step()
    (intent,) = _intents(store)
    assert intent.params["fence"].startswith("timed")
