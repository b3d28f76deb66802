"""``gridtool check`` against a real etcd with a small ``--quota-backend-bytes``: the DB
size is judged against the quota, and a NOSPACE alarm (raised by filling the quota) is
CRITICAL. One etcd for the module; it is stopped at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict

import pytest

from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster, EtcdMember

QUOTA = 2 * 2**20  # etcd raises NOSPACE once its DB file would pass 2 MiB


class _QuotaMember(EtcdMember):
    def argv(self, *args: object, **kwargs: object) -> list[str]:
        return [*super().argv(*args, **kwargs),  # type: ignore[arg-type]
                "--quota-backend-bytes", str(QUOTA)]


@pytest.fixture(scope="module")
def small_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    cluster = EtcdCluster.create(tmp_path_factory.mktemp("quota-etcd"), 1)
    cluster.members = [_QuotaMember(**asdict(m)) for m in cluster.members]
    cluster.start()
    try:
        yield Config(endpoints=tuple(cluster.endpoints), prefix="/q/", timeout=3.0)
    finally:
        cluster.stop()


def check(cfg: Config, *args: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()",
         "--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, "check", "--json",
         *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent"})
    return done.returncode, json.loads(done.stdout)


def codes(doc: dict) -> dict[str, str]:
    return {f["code"]: f["severity"] for f in doc["findings"]}


def test_db_size_against_the_quota_then_nospace_is_critical(small_etcd: Config) -> None:
    from gridtool.errors import GridtoolError
    from gridtool.registry.etcdstore import EtcdStore

    _, fresh = check(small_etcd, "--etcd-quota", str(QUOTA))
    assert "ETCD_DB_SIZE" not in codes(fresh) and "ETCD_ALARM" not in codes(fresh)
    perf = {p["label"]: p for p in fresh["perfdata"]}
    assert "etcd_db_size" in perf, fresh
    assert 0 < perf["etcd_db_size"]["value"] < 80  # a real size, in percent of the quota
    _, tight = check(small_etcd, "--etcd-quota", str(QUOTA), "-w", "db_size=0.01")
    assert codes(tight)["ETCD_DB_SIZE"] == "WARNING"

    store = EtcdStore(small_etcd)
    try:
        refused = None
        for i in range(200):  # 200 x 64 KiB: several times the quota
            try:
                store.put(f"/q/fill/{i}", b"x" * 65536)
            except GridtoolError as exc:
                refused = str(exc)
                break
        assert refused is not None, "etcd never refused a write past its quota"
        assert [name for _, name in store.alarms()] == ["NOSPACE"]
    finally:
        store.close()
    code, full = check(small_etcd, "--etcd-quota", str(QUOTA))
    assert code == 2 and codes(full)["ETCD_ALARM"] == "CRITICAL"
    assert codes(full)["ETCD_DB_SIZE"] in ("WARNING", "CRITICAL")
    assert any("raised alarm NOSPACE" in f["message"] for f in full["findings"])
