"""Fixtures with the real parts: an etcd started on free loopback ports, real libvirtd
test-driver hosts, and agents as separate processes. Every server started is stopped."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gridtool.config import Config

if TYPE_CHECKING:
    from gridtool.lab.testbed import LabHosts


def _need(binary: str) -> None:
    if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
        pytest.fail(f"{binary} is not installed: run scripts/setup (scripts/test does)")


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One real etcd member for the whole session; tests share it under their own prefix."""
    from gridtool.lab.etcd import EtcdCluster

    _need("etcd")
    cluster = EtcdCluster.create(tmp_path_factory.mktemp("etcd"), 1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cfg(etcd_cluster) -> Config:  # type: ignore[no-untyped-def]
    """A config for this test alone: its own key prefix, a short lease TTL."""
    return Config(endpoints=tuple(etcd_cluster.endpoints),
                  prefix=f"/gt-test-{uuid.uuid4().hex[:10]}/", ttl=3, resync_interval=2.0,
                  timeout=3.0)


@pytest.fixture
def store(cfg: Config) -> Iterator:
    from gridtool.etcdstore import EtcdStore

    s = EtcdStore(cfg)
    yield s
    s.delete_prefix(cfg.prefix)
    s.close()


@pytest.fixture
def registry(store, cfg: Config):  # type: ignore[no-untyped-def]
    from gridtool.registry import Registry

    return Registry(store, cfg.keys)


@pytest.fixture
def lab_hosts(tmp_path: Path, cfg: Config) -> Iterator[LabHosts]:
    from gridtool.lab.testbed import LabHosts

    _need("libvirtd")
    hosts = LabHosts(tmp_path / "hosts", cfg)
    yield hosts
    hosts.close()
