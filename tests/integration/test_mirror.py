"""The manager's watch-fed view on real etcd: history compacted away before its watch
starts (etcd answers with the compact revision) leads to a full resync, after which the
mirror equals the registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gridtool.auth.credfiles import password_path, read_password
from gridtool.config import Config
from gridtool.ha.manager import mirrored
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.mirror import MirrorStore
from gridtool.registry.store import Event, Watch


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
