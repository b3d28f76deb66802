"""``gridtool check`` against a real registry: Nagios exit codes and output."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from gridtool.lab.procs import free_port
from tests.harness.testbed import credential_env, domain_xml, wait_until

PERFDATA = re.compile(r"^'[^']+'=(-?[\d.]+|U)[a-zA-Z%]*(;[^;]*){0,4}$")


def check(cfg, *args: str, endpoints: str | None = None) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-c", "from gridtool.cli.main import main; main()",
         "--endpoints", endpoints or ",".join(cfg.endpoints), "--prefix", cfg.prefix,
         "check", *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent", **credential_env()})


def test_ok_then_critical_when_a_host_is_lost(lab_hosts, registry, cfg):  # type: ignore[no-untyped-def]
    for name in ("hv1", "hv2"):
        lab_hosts.add(name)
        lab_hosts.conn(name).defineXML(domain_xml(f"{name}-g")).create()
        lab_hosts.start_agent(name, manager=True)  # each agent runs a manager candidate
    wait_until(lambda: len(registry.list_guests()[0]) == 2, what="sync")
    wait_until(lambda: registry.store.get(cfg.keys.manager_leader), what="a manager leader")
    ok = check(cfg)
    status, _, perf = ok.stdout.splitlines()[0].partition(" | ")
    assert ok.returncode == 0 and status.startswith("GRIDTOOL OK"), ok.stdout
    assert all(PERFDATA.match(p) for p in perf.split()), perf
    lab_hosts.stop_agent("hv2", kill=True)
    wait_until(lambda: "hv2" not in {h.name for h in registry.list_hosts()[0]},
               timeout=cfg.ttl + 5, what="hv2 lease expiry")
    crit = check(cfg)
    assert crit.returncode == 2 and crit.stdout.startswith("GRIDTOOL CRITICAL")
    assert "HOST_LEASE_LOST" in crit.stdout
    ignored = json.loads(check(cfg, "--ignore", "HOST_LEASE_LOST", "--json").stdout)
    assert ignored["exit_code"] in (0, 1) and "HOST_LEASE_LOST" not in json.dumps(
        ignored["findings"])


def test_guest_running_on_two_hosts_is_critical(registry, cfg, store):  # type: ignore[no-untyped-def]
    import time

    from gridtool.registry.model import GuestRecord, HostRecord

    now = time.time()
    for host in ("a", "b"):
        registry.put_host(HostRecord(host, "test:///", "test", 1, 1024, 512, "0.1.0", now),
                          store.grant_lease(30))
        registry.put_guest(GuestRecord("u-1", "twice", host, "running", 1, 128, now))
    done = check(cfg)
    assert done.returncode == 2 and "GUEST_DOUBLE_RUN" in done.stdout


def test_pool_below_size(registry, cfg, store):  # type: ignore[no-untyped-def]
    import time

    from gridtool.pools import shell as pools
    from gridtool.pools.rules import PoolSpec
    from gridtool.registry.model import GuestRecord, HostRecord

    now = time.time()
    registry.put_host(HostRecord("a", "test:///", "test", 1, 1024, 512, "0.1.0", now),
                      store.grant_lease(30))
    registry.put_guest(GuestRecord("u-1", "w-1", "a", "running", 1, 128, now))
    pools.create(store, cfg.keys, PoolSpec("w", "tpl", 1, 4, 3))
    store.put(cfg.keys.pool_member("w", "u-1"), b'{"v": 1}')
    done = check(cfg, "--json", "--ignore", "MANAGER_NO_LEADER")
    findings = json.loads(done.stdout)["findings"]
    assert done.returncode == 1, done.stdout
    assert [f["message"] for f in findings if f["code"] == "POOL_UNDERSIZE"] == [
        "pool w runs 1/3 members"]


def test_unreachable_registry_is_critical_and_bad_usage_unknown(cfg):  # type: ignore[no-untyped-def]
    dead = check(cfg, endpoints=f"127.0.0.1:{free_port()}")
    assert dead.returncode == 2 and "ETCD_UNREACHABLE" in dead.stdout
    bad = check(cfg, "--warn", "nonsense")
    assert bad.returncode == 3 and bad.stdout.startswith("GRIDTOOL UNKNOWN")
    flag = check(cfg, "--no-such-flag")
    assert flag.returncode == 3
