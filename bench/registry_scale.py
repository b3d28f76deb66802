"""Registry scale: 200 hosts x 50 guests through the real registry code, then the CLI.

Writes 10,000 guest records (synthetic hosts, each under its own lease) with the
registry code the agents use, then times ``gridtool guest list --json`` and
``gridtool host list --json`` end to end as subprocesses. Also measures the CPU an
idle real agent uses. Target: <= 1.5 s for the 10,000-guest listing.

    python bench/registry_scale.py [--hosts 200] [--guests-per-host 50] [--idle-agents 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchlib import lab_etcd, percentile, print_table, verdict, write_json

from gridtool.config import Config
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from tests.harness.testbed import LabHosts, domain_xml, wait_until

TARGET_LIST_S = 1.5


def populate(registry: Registry, store: EtcdStore, hosts: int, per_host: int) -> float:
    start = time.perf_counter()
    now = time.time()
    for h in range(hosts):
        name = f"sim{h:03d}"
        lease = store.grant_lease(600)
        registry.put_host(HostRecord(name, f"qemu+tcp://{name}/system", "kvm", 32, 262144,
                                     131072, "bench", now, ("dedicated",)), lease)
        guests = tuple(GuestRecord(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{g}")), f"{name}-g{g:02d}", name,
            "running" if g % 4 else "shutoff", 2, 2048, now,
            (Disk("vda", f"/dev/etherd/e{h}.{g}", "block", shared=True,
                  volume=f"aoe-e{h}.{g}"),)) for g in range(per_host))
        registry.write_guests(guests, (), name)
    return time.perf_counter() - start


def time_cli(cfg: Config, *args: str, runs: int = 5) -> tuple[list[float], int]:
    argv = [str(Path(sys.executable).with_name("gridtool")), "--endpoints", ",".join(cfg.endpoints),
            "--prefix", cfg.prefix, *args]
    env = {**os.environ, "GRIDTOOL_LAB_DIR": "/nonexistent"}
    times, count = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, check=True, env=env).stdout
        times.append(time.perf_counter() - start)
        body = json.loads(out)
        count = len(body.get("guests", body.get("hosts", [])))
    return times, count


def idle_agent_cpu(cfg: Config, base: Path, agents: int, seconds: float) -> float:
    """Mean CPU share (% of one core) of idle agents with 10 guests each."""
    hosts = LabHosts(base / "hosts", cfg)
    try:
        for i in range(agents):
            name = f"idle{i}"
            hosts.add(name)
            for g in range(10):
                hosts.conn(name).defineXML(domain_xml(f"{name}-g{g}")).create()
            hosts.start_agent(name)
        registry = Registry(EtcdStore(cfg), cfg.keys)
        wait_until(lambda: len(registry.list_guests()[0]) >= agents * 10,
                   timeout=30, what="idle agents synced")
        time.sleep(2)  # let start-up work finish before sampling
        before = {n: _cpu_seconds(p.pid) for n, p in hosts.agents.items()}
        time.sleep(seconds)
        after = {n: _cpu_seconds(p.pid) for n, p in hosts.agents.items()}
        return sum(after[n] - before[n] for n in before) / len(before) / seconds * 100
    finally:
        hosts.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--guests-per-host", type=int, default=50)
    parser.add_argument("--idle-agents", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    with lab_etcd() as (tmp, cluster):
        cfg = Config(endpoints=tuple(cluster.endpoints), prefix="/bench-scale/")
        store = EtcdStore(cfg)
        write_s = populate(Registry(store, cfg.keys), store, args.hosts,
                           args.guests_per_host)
        store.close()
        guest_times, guests = time_cli(cfg, "guest", "list", "--json")
        host_times, hosts = time_cli(cfg, "host", "list", "--json")
        idle_cfg = Config(endpoints=cfg.endpoints, prefix="/bench-idle/")
        cpu = idle_agent_cpu(idle_cfg, Path(tmp), args.idle_agents, args.idle_seconds)
    guest_p50 = percentile(guest_times, 50)
    ok = guest_p50 <= TARGET_LIST_S
    print_table(f"registry at scale: {hosts} hosts, {guests} guests (write {write_s:.1f} s)", [
        ("gridtool guest list --json", guests, guest_p50, max(guest_times), TARGET_LIST_S,
         verdict(ok)),
        ("gridtool host list --json", hosts, percentile(host_times, 50), max(host_times), "-",
         "-"),
    ], ["command", "records", "median s", "max s", "target s", "verdict"])
    print_table("idle agent", [(args.idle_agents, args.idle_seconds, cpu)],
                ["agents", "seconds sampled", "CPU % of one core per agent"])
    write_json("registry_scale", {
        "hosts": hosts, "guests": guests, "write_seconds": write_s,
        "guest_list_seconds": guest_times, "host_list_seconds": host_times,
        "guest_list_median_s": guest_p50, "target_s": TARGET_LIST_S, "pass": ok,
        "idle_agent_cpu_percent": cpu}, args.json_path)


if __name__ == "__main__":
    main()
