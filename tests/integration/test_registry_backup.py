"""``registry backup`` / ``registry restore --lab`` as an admin runs them on a lab (real
etcd, libvirtd test-driver hosts, agents): back up, wipe etcd (stop it, delete its data),
restore; every host, guest and fence is back, the agents resync, and intents reach them
at once (their watches notice that the registry went back in time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gridtool.config import load
from gridtool.errors import RegistryUnavailable
from gridtool.fencing.rules import Observed
from gridtool.fencing.shell import read_all_fences
from gridtool.lab.etcd import EtcdCluster
from gridtool.lab.state import read_state
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from tests.harness.testbed import wait_until


def _gridtool(lab: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()", *args],
        capture_output=True, text=True, timeout=timeout,
        env={"PATH": os.environ["PATH"], "GRIDTOOL_LAB_DIR": str(lab),
             "GRIDTOOL_CONFIG": str(lab / "gridtool.conf")})


def _view(registry: Registry, store: EtcdStore) -> dict[str, object]:
    hosts, _ = registry.list_hosts()
    guests, _ = registry.list_guests()
    fences, _ = read_all_fences(store, registry.keys)
    return {"hosts": sorted(h.name for h in hosts),
            "guests": sorted((g.name, g.host, g.state) for g in guests),
            "fences": sorted((v, o.fence.holder, o.fence.guest) for v, o in fences.items()
                             if isinstance(o, Observed))}


def _answered(check: Callable[[], bool]) -> bool:
    """``check()``, or False while the registry does not answer."""
    try:
        return check()
    except RegistryUnavailable:
        return False


def test_backup_wipe_restore_in_the_lab(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    up = _gridtool(lab, "lab", "up", "--hosts", "1", "--guests", "2", "--json")
    try:
        assert up.returncode == 0, up.stderr
        cfg = load(str(lab / "gridtool.conf"))
        store = EtcdStore(cfg)
        try:
            _backup_wipe_restore(lab, tmp_path, cfg, store)
        finally:
            store.close()
    finally:
        down = _gridtool(lab, "lab", "down")
        assert down.returncode == 0, down.stderr


def _backup_wipe_restore(lab: Path, tmp_path: Path, cfg, store: EtcdStore) -> None:  # type: ignore[no-untyped-def]
    registry = Registry(store, cfg.keys)
    before = _view(registry, store)
    assert len(before["guests"]) == 2 and before["fences"], before  # type: ignore[arg-type]

    file = tmp_path / "backups" / "registry.db"
    file.parent.mkdir()
    done = _gridtool(lab, "registry", "backup", str(file), "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    saved = json.loads(done.stdout)
    assert saved["file"] == str(file) and saved["revision"] > 0 and saved["total_keys"] > 0
    assert os.listdir(file.parent) == ["registry.db"]  # no temporary file left

    # After the backup: the registry moves on (many writes), then hv1's agent stops a
    # guest (its intent watch is then far past the backup's revision); the restore takes
    # the registry back before both.
    for i in range(60):
        store.put(f"{cfg.keys.prefix}scratch/{i}", b"{}")
    done = _gridtool(lab, "guest", "stop", "hv1-vm1", "--timeout", "5", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["intent"]["state"] == "done"

    # Wipe: etcd stopped, its data deleted.
    cluster = EtcdCluster.from_dict(read_state(lab)["etcd"])
    cluster.stop()
    for member in cluster.members:
        shutil.rmtree(member.data_dir)

    done = _gridtool(lab, "registry", "restore", str(file), "--lab", "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout)["revision"] == saved["revision"]
    # The keys written after the backup are gone (the first reads may wait while every
    # agent authenticates again with the restarted member).
    wait_until(lambda: _answered(lambda: store.list(f"{cfg.keys.prefix}scratch/")[0] == []),
               30, "the restored registry answering")

    # Every host and fence is back; the agent's resync shows hv1-vm1 as it really is.
    stopped = {"hv1-vm1"}  # running in the snapshot
    expected = {**before, "guests": sorted(
        (g[0], g[1], "shutoff") if g[0] in stopped else g
        for g in before["guests"])}  # type: ignore[attr-defined]
    wait_until(lambda: _answered(lambda: _view(registry, store) == expected), 30,
               "the registry resynced")

    # An intent written now reaches its agent at once, though its revision is one the
    # agent's watch saw before the restore (not at the agent's next resync, 30 s).
    began = time.monotonic()
    done = _gridtool(lab, "guest", "stop", "hv1-vm2", "--timeout", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["intent"]["state"] == "done"
    assert time.monotonic() - began < 15

