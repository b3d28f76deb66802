"""Registry scale: the CLI's read costs from 1,000 to 100,000 guests (issue 20).

Grows one fleet in a real etcd through the registry code the agents use (each host under
its own lease, its record carrying its guest counts as an agent writes them) through the
points 200 hosts x 5 guests (1k), 200 x 50 (10k), 1,000 x 50 (50k) and 2,000 x 50 (100k),
and at each point times whole ``gridtool`` commands as a user runs them (median of
--runs, with each run's peak RSS): ``host list --json``, ``guest list --json``,
``guest list --host H --json`` and ``guest show NAME --json``, and ``host list`` as a
table (the rows rich laid out before). Each run's output is
checked (every host, every guest, one host's guests, the one guest): a fast listing that
drops records does not pass. Also times, in process, the alternative to counts in the
host record: one count-only range read per host, batched 128 to a transaction.
``--before TREE`` times the same commands with another source tree's gridtool (e.g.
``git archive main | tar -x -C /tmp/before``) on the same etcd, for a before/after table.
Both trees are byte-compiled first, as an installed package is (with
PYTHONDONTWRITEBYTECODE, as set here, each run would compile gridtool again). Targets
at the largest point: host list <= 0.3 s, guest list --json <= 2 s, guest list
--host and guest show <= 0.2 s. Exits 1 when a target or a count fails.

    python bench/registry_scale.py [--points 200x5,200x50,1000x50,2000x50] [--runs 3]
        [--before /tmp/before] [--idle-agents 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import lab_etcd, percentile, print_table, write_json
from verdict import Verdict

from gridtool.config import Config
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from tests.harness.testbed import LabHosts, domain_xml, wait_until

ROOT = Path(__file__).resolve().parent.parent
POINTS = "200x5,200x50,1000x50,2000x50"
#: Target seconds (median) of each command at the largest point.
TARGETS = {"host list": 0.3, "host list (table)": 0.3, "guest list": 2.0,
           "guest list --host": 0.2, "guest show": 0.2}


def host_name(h: int) -> str:
    return f"sim{h:03d}"  # bench/web.py names sim000, sim001...


def guest_record(h: int, g: int, now: float) -> GuestRecord:
    name = host_name(h)
    return GuestRecord(
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{g}")), f"{name}-g{g:02d}", name,
        "running" if g % 4 else "shutoff", 2, 2048, now,
        (Disk("vda", f"/dev/etherd/e{h}.{g}", "block", shared=True, volume=f"aoe-e{h}.{g}"),))


def populate(registry: Registry, store: EtcdStore, hosts: int, per_host: int,
             have: tuple[int, int] = (0, 0), leases: dict[str, int] | None = None) -> float:
    """Grow the fleet from ``have`` (hosts, guests per host) to ``hosts`` x ``per_host``;
    seconds taken. Each host record carries its counts, as an agent writes it."""
    start, now = time.perf_counter(), time.time()
    leases = {} if leases is None else leases
    for h in range(hosts):
        name = host_name(h)
        first = have[1] if h < have[0] else 0
        registry.write_guests(tuple(guest_record(h, g, now) for g in range(first, per_host)),
                              (), name, before={})
        if name not in leases:
            leases[name] = store.grant_lease(3600)
        registry.put_host(HostRecord(
            name, f"qemu+tcp://{name}/system", "kvm", 32, 262144, 131072, "bench", now,
            ("dedicated",), guests=per_host,
            running_guests=sum(1 for g in range(per_host) if g % 4)), leases[name])
    return time.perf_counter() - start


@dataclass
class Timing:
    """The runs of one command: wall seconds, CPU seconds (user + sys: what a busy shared
    machine inflates least), peak RSS (KiB), what each listed and the load average after
    each (a shared machine's load changes from one command to the next)."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "median_s": percentile(self.seconds, 50),
                "cpu_seconds": self.cpu_seconds,
                "median_cpu_s": percentile(self.cpu_seconds, 50),
                "max_rss_kib": max(self.rss_kib), "counts": self.counts,
                "load_averages": self.loads, "median_load": percentile(self.loads, 50)}


def run_cli(cfg: Config, tree: Path, args: list[str], key: str, runs: int) -> Timing:
    """``gridtool ARGS`` from source tree ``tree``, ``runs`` times, as a whole process."""
    argv = [sys.executable, "-c", "from gridtool.cli.main import main; main()",
            "--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, *args]
    env = {**os.environ, "GRIDTOOL_LAB_DIR": "/nonexistent", "PYTHONPATH": str(tree)}
    timing = Timing()
    for _ in range(runs):
        # GNU time measures the CLI alone: a child's own peak RSS also counts the memory
        # of the (large) process that forked it, until its exec
        start = time.perf_counter()
        # from the tree itself: ``python -c`` puts the working directory first on
        # sys.path, before PYTHONPATH (from this worktree, --before timed this tree)
        proc = subprocess.run(["/usr/bin/time", "-f", "TIME %U %S %M", *argv],
                              capture_output=True, env=env, check=False, cwd=tree)
        timing.seconds.append(time.perf_counter() - start)
        user, system, rss = proc.stderr.decode().rsplit("TIME ", 1)[1].split()
        timing.cpu_seconds.append(float(user) + float(system))
        timing.rss_kib.append(int(rss))
        timing.counts.append(-1 if proc.returncode else _listed(proc.stdout, key))
        timing.loads.append(os.getloadavg()[0])
    return timing


def _listed(stdout: bytes, key: str) -> int:
    """How many the output lists: the JSON list ``key``, or a table's rows ('')."""
    return len(json.loads(stdout)[key]) if key else len(stdout.splitlines()) - 1


def commands(hosts: int) -> dict[str, tuple[list[str], str]]:
    """The commands timed at each point: (argv, the JSON list that counts; '': the rows
    of a table)."""
    middle = hosts // 2
    return {"host list": (["host", "list", "--json"], "hosts"),
            "host list (table)": (["host", "list"], ""),
            "guest list": (["guest", "list", "--json"], "guests"),
            "guest list --host": (["guest", "list", "--host", host_name(middle), "--json"],
                                  "guests"),
            "guest show": (["guest", "show", f"{host_name(middle)}-g01", "--json"], "guests")}


def expected(hosts: int, per_host: int) -> dict[str, int]:
    return {"host list": hosts, "host list (table)": hosts, "guest list": hosts * per_host,
            "guest list --host": per_host, "guest show": 1}


def count_only_seconds(cfg: Config, hosts: int) -> float:
    """The alternative to counts in host records: one count-only range per host's guests,
    128 to a transaction (total guests only: a count cannot filter on state)."""
    import pyetcd
    from pyetcd import etcdrpc

    host, _, port = cfg.endpoints[0].rpartition(":")
    client = pyetcd.client(host=host, port=int(port))
    keys = cfg.keys
    start = time.perf_counter()
    counts = []
    for first in range(0, hosts, 128):
        ops = []
        for h in range(first, min(hosts, first + 128)):
            prefix = keys.host_guests(host_name(h)).encode()
            ops.append(etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(
                key=prefix, range_end=prefix[:-1] + b"0", count_only=True)))
        reply = client.kvstub.Txn(etcdrpc.TxnRequest(success=ops), 30)
        counts += [r.response_range.count for r in reply.responses]
    seconds = time.perf_counter() - start
    client.close()
    assert len(counts) == hosts
    return seconds


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


def judge(points: list[dict[str, Any]]) -> Verdict:
    """At the largest point, each command's median against its target; at every point,
    every run's count against what was written (a listing that drops records fails)."""
    verdict = Verdict("registry reads at scale")
    last = points[-1]
    for what, target in TARGETS.items():
        verdict.check(f"{what}, median at {last['guests']} guests",
                      percentile(last["after"][what]["seconds"], 50), "<=", target, "s")
    for point in points:
        for what, want in point["expected"].items():
            counts = point["after"][what]["counts"]
            verdict.check(f"{what} at {point['guests']} guests: fewest listed",
                          min(counts, default=None), "==", want)
            verdict.check(f"{what} at {point['guests']} guests: most listed",
                          max(counts, default=None), "==", want)
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=POINTS,
                        help="HOSTSxGUESTS_PER_HOST,... growing (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", type=Path, help="an older source tree to time too")
    parser.add_argument("--idle-agents", type=int, default=0)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    points = [tuple(int(n) for n in p.split("x")) for p in args.points.split(",")]
    for tree in (ROOT, args.before):
        if tree is not None:  # as installed (a package's .pyc), not compiled at each run
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "gridtool")],
                           check=True)
    results: list[dict[str, Any]] = []
    with lab_etcd() as (tmp, cluster):
        cfg = Config(endpoints=tuple(cluster.endpoints), prefix="/bench-scale/")
        store = EtcdStore(cfg)
        registry, leases, have = Registry(store, cfg.keys), {}, (0, 0)
        for hosts, per_host in points:
            write_s = populate(registry, store, hosts, per_host, have, leases)
            have = (hosts, per_host)
            point: dict[str, Any] = {
                "hosts": hosts, "guests": hosts * per_host, "write_seconds": write_s,
                "load_average": os.getloadavg()[0], "expected": expected(hosts, per_host),
                "count_only_seconds": count_only_seconds(cfg, hosts)}
            for label, tree in (("after", ROOT), ("before", args.before)):
                if tree is not None:
                    point[label] = {what: run_cli(cfg, tree, argv, key, args.runs).to_dict()
                                    for what, (argv, key) in commands(hosts).items()}
            results.append(point)
            print(f"{hosts} hosts x {per_host}: written in {write_s:.1f} s, "
                  f"load {point['load_average']:.1f}", flush=True)
        store.close()
        cpu = None
        if args.idle_agents:
            idle_cfg = Config(endpoints=cfg.endpoints, prefix="/bench-idle/")
            cpu = idle_agent_cpu(idle_cfg, Path(tmp), args.idle_agents, args.idle_seconds)
    rows = []
    for point in results:
        for what in TARGETS:
            before = point.get("before", {}).get(what)
            after = point["after"][what]
            rows.append((point["hosts"], point["guests"], what,
                         before["median_s"] if before else "-",
                         before["median_cpu_s"] if before else "-",
                         before["max_rss_kib"] // 1024 if before else "-",
                         after["median_s"], after["median_cpu_s"],
                         after["max_rss_kib"] // 1024, min(after["counts"]),
                         after["median_load"]))
    print_table("registry reads (whole CLI commands, median of runs)", rows,
                ["hosts", "guests", "command", "before s", "before CPU s", "before RSS MiB",
                 "after s", "after CPU s", "after RSS MiB", "listed", "load"])
    print_table("host list counts: the alternative", [
        (p["hosts"], p["count_only_seconds"]) for p in results],
        ["hosts", "count-only range per host, 128 per txn: s"])
    if cpu is not None:
        print_table("idle agent", [(args.idle_agents, args.idle_seconds, cpu)],
                    ["agents", "seconds sampled", "CPU % of one core per agent"])
    verdict = judge(results)
    verdict.print()
    write_json("registry_scale", {"points": results, "targets_s": TARGETS,
                                  "idle_agent_cpu_percent": cpu, **verdict.to_dict()},
               args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
