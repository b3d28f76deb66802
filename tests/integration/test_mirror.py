"""The manager's watch-fed view on real etcd: history compacted away before its watch
starts (etcd answers with the compact revision) leads to a full resync, after which the
mirror equals the registry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from gridtool.auth.credfiles import password_path, read_password
from gridtool.config import Config
from gridtool.ha.manager import mirrored
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import PAGE, Registry
from gridtool.registry.mirror import Mirror, MirrorStore, guest_pages
from gridtool.registry.model import HostRecord
from gridtool.registry.store import Event, Watch, prefix_end
from gridtool.web.feed import Feed


class CompactsOnce:
    """The store, except that its first watch starts only after more writes and a
    compaction of etcd's history up to now (as etcd's auto-compaction can run between
    the mirror's listing and its watch)."""

    def __init__(self, store: EtcdStore, root: EtcdStore, cfg: Config) -> None:
        self.store, self.root, self.cfg, self.done = store, root, cfg, False

    def watch_prefix(self, prefix: str, on_event: Callable[[Event], None],
                     start_revision: int | None = None) -> Watch:
        if not self.done:
            self.done = True
            self.store.put(self.cfg.keys.guest("hv1", "u2"), b"missed")
            self.store.delete(self.cfg.keys.guest("hv1", "u1"))
            revision = self.store.put(self.cfg.keys.settings + "u2", b"missed too")
            self.root._call(lambda c: c.compact(revision))
        return self.store.watch_prefix(prefix, on_event, start_revision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def root_store(cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> Any:
    creds = tmp_path_factory.getbasetemp() / "etcd-credentials"
    root = EtcdStore(Config(endpoints=cfg.endpoints, user="root",
                            password=read_password(password_path(creds, "root"))))
    yield root
    root.close()


def test_a_compacted_watch_leads_to_a_full_resync(store: EtcdStore, root_store: EtcdStore,
                                                  cfg: Config) -> None:
    keys = cfg.keys
    store.put(keys.guest("hv1", "u1"), b"listed")
    view = MirrorStore(CompactsOnce(store, root_store, cfg), keys.prefix,  # type: ignore[arg-type]
                       mirrored(keys), catch_up=5.0)
    view.start()
    try:
        assert view.sync()  # reset by the compaction (or not caught up): listed again
        assert view.resyncs == 1
        for prefix in mirrored(keys):
            assert view.list(prefix)[0] == store.list(prefix)[0], prefix
        store.put(keys.guest("hv2", "u3"), b"after")
        assert not view.sync()  # the new watch delivers: no more listing
        assert [i.key for i in view.list(keys.guests)[0]] == \
            [keys.guest("hv1", "u2"), keys.guest("hv2", "u3")]
    finally:
        view.close()


class CountsRanges:
    """The store, counting its range reads."""

    def __init__(self, store: EtcdStore) -> None:
        self.store, self.ranges = store, []  # type: list[tuple[str, str, int]]

    def list_range(self, start: str, end: str, revision: int = 0) -> Any:
        self.ranges.append((start, end, revision))
        return self.store.list_range(start, end, revision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_one_mirror_for_the_manager_and_the_web_view(store: EtcdStore, cfg: Config) -> None:
    """The manager's view and the web feed load in ranges split by the hosts' guest counts,
    at one revision, then follow the same writes by watch to equal the registry."""
    keys = cfg.keys
    registry = Registry(store, keys)
    for h in ("hv1", "hv2", "hv3"):
        registry.put_host(HostRecord(h, "test:///", "test", 8, 8192, 8192, "0", 0.0,
                                     guests=PAGE // 2 + 100), None)
        store.put(keys.guest(h, "u-" + h), b"{}")
    counting = CountsRanges(store)
    view = MirrorStore(counting, keys.prefix, mirrored(keys),  # type: ignore[arg-type]
                       bounds=guest_pages(keys))
    changed = threading.Event()
    web = Mirror(keys.prefix, lambda _version: changed.set())
    feed = Feed(counting, web, interval=0.05, bounds=guest_pages(keys))  # type: ignore[arg-type]
    view.start()
    feed.start()
    try:
        guest_reads = [(s, e) for s, e, _ in counting.ranges if s.startswith(keys.guests)]
        assert (keys.guests, keys.host_guests("hv3")) in guest_reads  # PAGE + 200: split
        assert (keys.host_guests("hv3"), prefix_end(keys.guests)) in guest_reads
        assert len({r for _, _, r in counting.ranges[:6]}) == 1  # one revision
        store.delete(keys.guest("hv1", "u-hv1"))
        last = store.put(keys.guest("hv2", "u-new"), b"{}")
        assert not view.sync()
        deadline = time.monotonic() + 5
        while web.frozen().revision < last and changed.wait(deadline - time.monotonic()):
            changed.clear()  # the feed's thread applied something: look again
        for prefix in mirrored(keys):
            assert view.list(prefix)[0] == store.list(prefix)[0], prefix
            assert web.frozen().list(prefix)[0] == store.list(prefix)[0], prefix
    finally:
        feed.stop()
        view.close()
