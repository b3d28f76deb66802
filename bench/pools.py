"""Pool regrowth ("starfish"): how long until a pool is back at size after a host dies.

A fixed pool of ``--size`` workers spread over 4 lab hosts by the leader-elected manager
(its HA period 1 s, its pool period ``--pool-period``). Per round: fill time (pool
created -> all workers running), then power-off of the host with most workers (SIGKILL
its agent, destroy its guests) and, measured from the fault: host record gone
(detection, bounded by the lease TTL), pool back at size on the other hosts (regrown).
The host's record vanishing starts a pool round at once (no wait for the pool period),
so the target is: regrown <= TTL + 2 s in every round. Exits 1 when it fails.

    python bench/pools.py [--rounds 3] [--size 16] [--ttl 10] [--pool-period 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from benchlib import lab_etcd, print_table, write_json
from verdict import Verdict

from gridtool.clone.shell import create_template
from gridtool.config import Config
from gridtool.ha.manager import Manager
from gridtool.lab.etcd import EtcdCluster
from gridtool.pools import shell as pools
from gridtool.registry.etcdstore import EtcdStore
from tests.harness.testbed import LabHosts, domain_xml, wait_until

HOSTS = ("hv1", "hv2", "hv3", "hv4")


def running(store: EtcdStore, cfg: Config) -> dict[str, str]:
    """uuid -> host of the pool's members running on a live host."""
    hosts, views = pools.observe(store, cfg.keys, "bench")
    live = {h.name for h in hosts}
    return {v.uuid: v.host for v in views if v.state == "running" and v.host in live}


def one_round(base: Path, cluster: EtcdCluster, size: int, ttl: int,
              pool_period: float) -> dict[str, float]:
    prefix = f"/bench-pools-{uuid.uuid4().hex[:6]}/"
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix=prefix, ttl=ttl, timeout=3.0)
    store = EtcdStore(cfg)
    hosts = LabHosts(base / prefix.strip("/"), cfg)
    stop = threading.Event()
    try:
        for name in HOSTS:
            hosts.add(name)
            hosts.start_agent(name)
        wait_until(lambda: len(store.list(cfg.keys.hosts)[0]) == len(HOSTS), what="hosts")
        hosts.conn("hv1").defineXML(domain_xml("w-src", 64, disk="/var/lib/nowhere/w.qcow2"))
        wait_until(lambda: store.list(cfg.keys.host_guests("hv1"))[0], what="source synced")
        create_template(store, cfg, "w", "w-src", timeout=60)
        manager = Manager(cfg, store, "bench", period=1.0, pool_period=pool_period)
        threading.Thread(target=manager.run, args=(stop,), daemon=True).start()
        wait_until(lambda: store.get(cfg.keys.manager_leader), what="manager")
        start = time.monotonic()
        pools.create(store, cfg.keys, pools.new_spec("bench", "w", 1, size, desired=size))
        members = wait_until(lambda: len(m := running(store, cfg)) == size and m,
                             timeout=pool_period + 60, what="pool filled")
        filled = time.monotonic() - start
        victim = Counter(members.values()).most_common(1)[0][0]
        fault = time.monotonic()
        hosts.stop_agent(victim, kill=True)
        for dom in hosts.conn(victim).listAllDomains(1):
            dom.destroy()
        marks: dict[str, float] = {}

        def regrown() -> bool:
            if "detected" not in marks and store.get(cfg.keys.host(victim)) is None:
                marks["detected"] = time.monotonic() - fault
            now = running(store, cfg)
            return len(now) == size and victim not in now.values()

        wait_until(regrown, timeout=ttl + pool_period + 60, what="pool regrown")
        return {"filled": filled, "lost_workers": Counter(members.values())[victim],
                **marks, "regrown": time.monotonic() - fault}
    finally:
        stop.set()
        hosts.close()
        store.delete_prefix(prefix)
        store.close()


def judge(runs: list[dict], rounds: int, ttl: int) -> Verdict:
    """Every round back at size within TTL + 2 s."""
    verdict = Verdict("pool regrowth")
    verdict.check("rounds measured", len(runs), "==", rounds)
    verdict.check("regrown after the power-off, worst round",
                  max((r["regrown"] for r in runs), default=None), "<=", ttl + 2.0, "s")
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--pool-period", type=float, default=10.0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    runs = []
    with lab_etcd() as (tmp, cluster):
        for _ in range(args.rounds):
            runs.append(one_round(Path(tmp), cluster, args.size, args.ttl,
                                  args.pool_period))
    rows = [(phase, sum(r[phase] for r in runs) / len(runs), max(r[phase] for r in runs))
            for phase in ("filled", "detected", "regrown")]
    print_table(f"pool of {args.size} on {len(HOSTS)} hosts, TTL {args.ttl} s, pool period "
                f"{args.pool_period:g} s, {args.rounds} rounds (seconds; detected and regrown "
                "after the power-off)", rows, ["phase", "mean s", "max s"])
    verdict = judge(runs, args.rounds, args.ttl)
    verdict.print()
    write_json("pools", {"size": args.size, "ttl": args.ttl, "pool_period": args.pool_period,
                         "runs": runs, "bound_s": args.ttl + 2.0,
                         "worst_regrown_s": max(r["regrown"] for r in runs),
                         **verdict.to_dict()},
               args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
