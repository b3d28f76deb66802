"""Copy-on-write clones in the lab: how fast 32 workers appear.

Starts a real etcd and HOSTS libvirtd test-driver hosts with their agents (one lab-wide
images directory, as shared storage would be), makes a template from a guest, then
clones it COUNT times with ``gridtool.clone.shell.clone_guests`` (what ``gridtool clone``
runs), ROUNDS times (the clones are removed between rounds). Reports the total time
until every clone was reported running by its agent, per-clone latency p50/p99, each
phase (overlay creation, define, start, waiting behind the host's earlier clones and
for messages), and
checks every overlay's backing file. Targets: every clone running with its overlay
backed by the golden image; <= 5 s for 32 clones in the worst round; every overlay
<= 0.1 s while the agents clone at once. Exits 1 when a target fails.

    python bench/clone.py [--count 32] [--hosts 4] [--rounds 1] [--json PATH]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import lab_etcd, print_table, summary_ms, write_json
from verdict import Verdict

from agents.images import create_overlay, delete_overlay
from gridtool.clone.shell import clone_guests, create_template, remove_clone
from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from tests.harness.testbed import LabHosts, wait_until

PHASES = ("overlay", "define", "start", "wait", "running")
TARGET_TOTAL_S = 5.0
TARGET_OVERLAY_S = 0.1
BASE = """<domain type='test'><name>base</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type>hvm</type></os><devices>
<disk type='file' device='disk'><source file='/srv/worker.img'/><target dev='vda'/></disk>
<interface type='network'><source network='default'/></interface></devices></domain>"""


def backing_ok(path: str, golden: str) -> bool:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out).get("backing-filename") == golden


def isolated_overlays(hosts: LabHosts, golden: str, count: int) -> list[float]:
    """The same overlay creation as the agents', one at a time from here with nothing
    else running: what one overlay costs without the lab's CPU contention."""
    conn = hosts.conn("hv1")
    times = []
    for i in range(count):
        path = str(hosts.images_dir / "clones" / "bench" / f"{i}-vda.qcow2")
        began = time.monotonic()
        create_overlay(conn, str(hosts.images_dir), path, golden)
        times.append(time.monotonic() - began)
        delete_overlay(conn, str(hosts.images_dir), path)
    return times


def run(base: Path, cluster: EtcdCluster, count: int, nhosts: int, rounds: int) -> dict:
    prefix = f"/bench-clone-{uuid.uuid4().hex[:6]}/"
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix=prefix, ttl=10, timeout=5.0)
    store = EtcdStore(cfg)
    registry = Registry(store, cfg.keys)
    hosts = LabHosts(base / "hosts", cfg)
    names = [f"hv{i}" for i in range(1, nhosts + 1)]
    try:
        for name in names:
            hosts.add(name)
        for name in names:
            hosts.start_agent(name)
        wait_until(lambda: len(registry.list_hosts()[0]) == nhosts, what="hosts")
        hosts.conn("hv1").defineXML(BASE)
        wait_until(lambda: registry.find_guest("base") if any(
            g.name == "base" for g in registry.list_guests()[0]) else None, what="base")
        began = time.monotonic()
        tpl = create_template(store, cfg, "worker", "base")
        template_s = time.monotonic() - began
        out_rounds = []
        for _ in range(rounds):
            began = time.monotonic()
            results = clone_guests(store, cfg, "worker", count, timeout=60.0)
            total = time.monotonic() - began
            golden = tpl.images["vda"]
            backed = all(backing_ok(str(hosts.images_dir / "clones" / r.host /
                                        f"{r.uuid}-vda.qcow2"), golden) for r in results if r.ok)
            out_rounds.append({"total_s": total, "ok": sum(r.ok for r in results),
                               "backing_ok": backed,
                               "per_host": {h: sum(r.host == h for r in results)
                                            for h in names},
                               "clones": [r.to_dict() for r in results]})
            for r in results:
                if r.ok:
                    remove_clone(store, cfg, r.host, r.uuid, r.name)
        return {"template_s": template_s, "rounds": out_rounds,
                "isolated_overlay_s": isolated_overlays(hosts, tpl.images["vda"], count)}
    finally:
        hosts.close()
        store.delete_prefix(prefix)
        store.close()


def judge(out: dict, count: int, rounds: int) -> Verdict:
    """The targets over every round and every clone (``out`` as :func:`run` returns it)."""
    verdict = Verdict("lab clones")
    clones = [c for r in out["rounds"] for c in r["clones"]]
    good = [c for c in clones if c["ok"]]
    verdict.check("clones running", len(good), "==", count * rounds)
    verdict.check("rounds with every overlay on the golden image",
                  sum(bool(r["backing_ok"]) for r in out["rounds"]), "==", rounds)
    verdict.check("all running, worst round", max((r["total_s"] for r in out["rounds"]),
                                                  default=None), "<=", TARGET_TOTAL_S, "s")
    overlays = [c["timings"]["overlay"] for c in good if "overlay" in c["timings"]]
    verdict.check("overlay, worst clone", max(overlays) if overlays and len(overlays) ==
                  len(good) else None, "<=", TARGET_OVERLAY_S, "s")
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    with lab_etcd() as (tmp, cluster):
        load = os.getloadavg()[0]
        out = run(Path(tmp), cluster, args.count, args.hosts, args.rounds)
        out["load"] = (load, os.getloadavg()[0])
    clones = [c for r in out["rounds"] for c in r["clones"]]
    good = [c for c in clones if c["ok"]]
    rows, summary = [], {}
    for phase in PHASES:
        values = [c["timings"][phase] for c in good if phase in c["timings"]]
        if values:
            s = summary_ms(values)
            summary[phase] = s
            rows.append((phase, s["count"], s["p50_ms"], s["p99_ms"], s["max_ms"],
                         s["mean_ms"]))
    isolated = summary_ms(out["isolated_overlay_s"])
    summary["overlay_isolated"] = isolated
    rows.append(("overlay alone", isolated["count"], isolated["p50_ms"], isolated["p99_ms"],
                 isolated["max_ms"], isolated["mean_ms"]))
    totals = [r["total_s"] for r in out["rounds"]]
    print_table(f"{args.count} clones over {args.hosts} test-driver hosts, {args.rounds} "
                "round(s) (ms per clone; 'running' = submitted -> reported running)", rows,
                ["phase", "n", "p50 ms", "p99 ms", "max ms", "mean ms"])
    for i, r in enumerate(out["rounds"], 1):
        print(f"round {i}: {r['ok']}/{args.count} running in {r['total_s']:.2f} s "
              f"(per host {r['per_host']}); overlays backed by the golden image: "
              f"{r['backing_ok']}")
    print(f"template from a guest: {out['template_s']:.2f} s; load average before/after: "
          f"{out['load'][0]:.1f}/{out['load'][1]:.1f} on {os.cpu_count()} CPUs; one overlay "
          f"at a time (not a target): worst {isolated['max_ms']:.1f} ms")
    verdict = judge(out, args.count, args.rounds)
    verdict.print()
    write_json("clone", {"count": args.count, "hosts": args.hosts, "rounds": args.rounds,
                         "template_s": out["template_s"], "totals_s": totals,
                         "summary": summary, "load_average": out["load"],
                         "per_round": [{k: v for k, v in r.items() if k != "clones"}
                                       for r in out["rounds"]],
                         "clones": clones, **verdict.to_dict()}, args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
