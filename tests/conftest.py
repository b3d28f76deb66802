"""Fixtures with the real parts: an etcd started on free loopback ports, real libvirtd
test-driver hosts, and agents as separate processes. Every server started is stopped."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings

from gridtool.config import Config

if TYPE_CHECKING:
    from tests.harness.testbed import LabHosts

#: strict_ci: with CI=true a skip fails the run; pytester: tests that run pytest itself.
pytest_plugins = ("tests.harness.strict_ci", "pytester")

#: In CI the property tests draw the same examples on every run (a counterexample found
#: by chance must not turn a landing red at random: look for them locally, where each
#: run draws new ones).
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI", "").lower() == "true":
    hypothesis_settings.load_profile("ci")


def _need(binary: str) -> None:
    if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
        pytest.fail(f"{binary} is not installed: run scripts/setup (scripts/test does)")


def _credentials(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "etcd-credentials"


@pytest.fixture(autouse=True)
def _no_running_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lab running on this machine must not be picked up by in-process CLI runs."""
    monkeypatch.setenv("GRIDTOOL_LAB_DIR", "/nonexistent")


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One real etcd member for the whole session; tests share it under their own prefix.
    Authentication is on: root and an admin user (readwrite on every '/' key), whose
    passwords are in the session's ``etcd-credentials`` folder, with ``admin.conf``."""
    from gridtool.auth.credfiles import password_path
    from gridtool.auth.rules import admin_user
    from gridtool.auth.shell import init_registry
    from gridtool.config import render
    from gridtool.lab.etcd import EtcdCluster

    _need("etcd")
    cluster = EtcdCluster.create(tmp_path_factory.mktemp("etcd"), 1)
    cluster.start()
    try:
        directory = _credentials(tmp_path_factory)
        init_registry(Config(endpoints=tuple(cluster.endpoints), prefix="/"), directory, [])
        (directory / "admin.conf").write_text(render(Config(
            endpoints=tuple(cluster.endpoints), user=admin_user("/"),
            password_file=str(password_path(directory, admin_user("/"))))))
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def cfg(etcd_cluster, tmp_path_factory: pytest.TempPathFactory,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> Config:
    """A config for this test alone: its own key prefix, a short lease TTL, the admin's
    credentials (also in GRIDTOOL_CONFIG for in-process CLI runs, with --endpoints and
    --prefix; ``testbed.credential_env()`` passes it to a subprocess). Agents started by
    ``lab_hosts`` get their own per-host users (their --config wins over GRIDTOOL_CONFIG)."""
    from gridtool.auth.credfiles import password_path, read_password
    from gridtool.auth.rules import admin_user

    user = admin_user("/")
    password_file = password_path(_credentials(tmp_path_factory), user)
    monkeypatch.setenv("GRIDTOOL_CONFIG", str(_credentials(tmp_path_factory) / "admin.conf"))
    return Config(endpoints=tuple(etcd_cluster.endpoints),
                  prefix=f"/gt-test-{uuid.uuid4().hex[:10]}/", ttl=3, resync_interval=2.0,
                  timeout=3.0, user=user, password=read_password(password_file),
                  password_file=str(password_file))


@pytest.fixture
def store(cfg: Config) -> Iterator:
    from gridtool.registry.etcdstore import EtcdStore

    s = EtcdStore(cfg)
    yield s
    s.delete_prefix(cfg.prefix)
    s.close()


@pytest.fixture
def registry(store, cfg: Config):  # type: ignore[no-untyped-def]
    from gridtool.registry.fleet import Registry

    return Registry(store, cfg.keys)


@pytest.fixture
def lab_hosts(tmp_path: Path, cfg: Config) -> Iterator[LabHosts]:
    from tests.harness.testbed import LabHosts

    _need("libvirtd")
    hosts = LabHosts(tmp_path / "hosts", cfg)
    yield hosts
    hosts.close()
