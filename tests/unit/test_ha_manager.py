"""The HA manager's action dispatch: every kind of action ``decide`` returns has a
handler, and an action without one is a loud error, never a silent success; its
snapshot never misses a restart that finishes while it is read."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import get_args

import pytest

from gridtool.config import Config
from gridtool.fencing.rules import Fence, FenceKind
from gridtool.ha.manager import _HANDLERS, Manager
from gridtool.ha.rules import Action, Blocked, Restart, Snapshot, decide
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.records import GuestSettings, Intent, encode
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


READS = 10  # more range reads than one snapshot makes


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
