"""Registry scale: 200 hosts x 50 guests through the real registry code, then the CLI.

Writes 10,000 guest records (synthetic hosts, each under its own lease) with the
registry code the agents use, then times ``gridtool guest list --json`` and
``gridtool host list --json`` end to end as subprocesses. Also measures the CPU an
idle real agent uses. Targets: the 10,000-guest listing <= 1.5 s (median of 5 runs), and
every run of each listing returns every record written. Exits 1 when a target fails.

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

from benchlib import lab_etcd, percentile, print_table, write_json
from verdict import Verdict

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


def time_cli(cfg: Config, *args: str, runs: int = 5) -> tuple[list[float], list[int]]:
    """Seconds of each run of ``gridtool ARGS`` (a ``--json`` listing) and how many
    records each run listed."""
    argv = [str(Path(sys.executable).with_name("gridtool")), "--endpoints", ",".join(cfg.endpoints),
            "--prefix", cfg.prefix, *args]
    env = {**os.environ, "GRIDTOOL_LAB_DIR": "/nonexistent"}
    times, counts = [], []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, check=True, env=env).stdout
        times.append(time.perf_counter() - start)
        body = json.loads(out)
        counts.append(len(body.get("guests", body.get("hosts", []))))
    return times, counts


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


def judge(guest_times: list[float], guest_counts: list[int], host_counts: list[int],
          hosts: int, per_host: int) -> Verdict:
    """The listing's median against the target; every run's record counts against what
    was written (a fast listing that drops records must not pass)."""
    verdict = Verdict("registry at scale")
    verdict.check("guest list --json, median", percentile(guest_times, 50), "<=",
                  TARGET_LIST_S, "s")
    for what, counts, expected in (("guests", guest_counts, hosts * per_host),
                                   ("hosts", host_counts, hosts)):
        verdict.check(f"{what} listed, fewest of {len(counts)} runs", min(counts, default=None),
                      "==", expected)
        verdict.check(f"{what} listed, most of {len(counts)} runs", max(counts, default=None),
                      "==", expected)
    return verdict


def main() -> int:
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
    print_table(f"registry at scale: {args.hosts} hosts x {args.guests_per_host} guests "
                f"written in {write_s:.1f} s", [
        ("gridtool guest list --json", min(guests), guest_p50, max(guest_times)),
        ("gridtool host list --json", min(hosts), percentile(host_times, 50), max(host_times)),
    ], ["command", "records (fewest)", "median s", "max s"])
    print_table("idle agent", [(args.idle_agents, args.idle_seconds, cpu)],
                ["agents", "seconds sampled", "CPU % of one core per agent"])
    verdict = judge(guest_times, guests, hosts, args.hosts, args.guests_per_host)
    verdict.print()
    write_json("registry_scale", {
        "hosts": args.hosts, "guests": args.hosts * args.guests_per_host,
        "listed_guests": guests, "listed_hosts": hosts, "write_seconds": write_s,
        "guest_list_seconds": guest_times, "host_list_seconds": host_times,
        "guest_list_median_s": guest_p50, "target_s": TARGET_LIST_S,
        "idle_agent_cpu_percent": cpu, **verdict.to_dict()}, args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
