"""Clones of a real QEMU guest (TCG, 128 MiB) made in parallel on two lab hosts.

Starts a real etcd and two namespaced libvirtd QEMU hosts with their agents, defines the
lab guest on hv1, freezes it as a template (``gridtool.clone.shell.create_template``: golden
qcow2 images in the lab's images dir), then clones it CLONES times at once
(``gridtool.clone.shell.clone_guests``, as ``gridtool clone`` does): per clone a qcow2 overlay
on the golden image, define, start, each host's agent working through its own clones.
The template carries the ready marker ``GRIDTOOL-READY``: each clone gets its own serial
log file, its agent watches it and reports the clone ready (``GuestRecord.ready_at``), and
``clone_guests`` waits for that. Per clone: overlay creation, define, start (the agent's
``create()``), submitted -> reported running in the registry, submitted -> reported
ready, and start -> ready marker as seen by the agent (its clock on both ends: the clone
intent's end to ``ready_at``). ROUNDS rounds; clones are removed between them.

Targets (README): every clone ready; every overlay <= 0.1 s; define + start (the agent's
``create()``) <= 1 s at the median clone (the worst is not a target: TCG guests starting
at once on 2 shared cores took up to 1.2-1.7 s). Exits 1 when a target fails, 2 when QEMU
cannot run here.

    python bench/real_clone.py [--clones 4] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import on_qemu_lab, percentile, print_table, summary_ms, write_json
from verdict import Verdict

from gridtool.clone.shell import clone_guests, create_template, remove_clone
from gridtool.config import Config
from gridtool.lab import qemu
from gridtool.lab.etcd import EtcdCluster
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from tests.harness import qemu_testbed
from tests.harness.testbed import wait_until

PHASES = ("overlay", "define", "start", "running", "ready", "boot")
TARGET_OVERLAY_S = 0.1
TARGET_DEFINE_START_P50_S = 1.0


def judge(timings: list[dict[str, float]], wanted: int) -> Verdict:
    """The README's targets over every ready clone of every round (``timings``: each
    clone's seconds per phase). A clone without a phase's timing fails that target."""
    verdict = Verdict("real clones")
    verdict.check("clones ready", len(timings), "==", wanted)
    complete = bool(timings) and all({"overlay", "define", "start"} <= set(t) for t in timings)
    verdict.check("overlay, worst clone",
                  max(t["overlay"] for t in timings) if complete else None, "<=",
                  TARGET_OVERLAY_S, "s")
    verdict.check("define + start, median clone",
                  percentile([t["define"] + t["start"] for t in timings], 50) if complete
                  else None, "<=", TARGET_DEFINE_START_P50_S, "s")
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clones", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    return on_qemu_lab("real_clone", run, args)


def run(base: Path, cluster: EtcdCluster, args: argparse.Namespace) -> int:
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix=f"/bench-{uuid.uuid4().hex[:8]}/",
                 ttl=5, resync_interval=5.0, images_dir=str(base / "lab" / "images"))
    store = EtcdStore(cfg)
    registry = Registry(store, cfg.keys)
    hosts = qemu_testbed.QemuHosts(base / "lab", cfg)
    try:
        for name in ("hv1", "hv2"):
            hosts.add(name)
            hosts.start_agent(name)
        wait_until(lambda: len(registry.list_hosts()[0]) == 2, 30, what="two hosts")
        hosts.define("hv1", "tiny")
        wait_until(lambda: any(g.name == "tiny" for g in registry.list_guests()[0]), 20,
                   what="the template guest")
        began = time.monotonic()
        create_template(store, cfg, "tiny", "tiny", ready_marker=qemu.READY)
        template_s = time.monotonic() - began
        samples: dict[str, list[float]] = {p: [] for p in PHASES}
        rows, failed, all_ready, timings = [], 0, [], []
        for n in range(1, args.rounds + 1):
            began = time.monotonic()
            results = clone_guests(store, cfg, "tiny", args.clones, timeout=120.0)
            ok = [r for r in results if r.ok]
            failed += len(results) - len(ok)
            for r in results:
                if not r.ok:
                    print(f"round {n}: {r.name}: {r.error}", file=sys.stderr)
            if not ok:
                break
            all_ready.append(time.monotonic() - began)  # clone_guests waited for ready
            for r in ok:
                timings.append(r.timings)
                for phase in PHASES:
                    samples[phase].append(r.timings.get(phase, 0.0))
                rows.append((n, r.name, r.host, *(r.timings.get(p, 0.0) for p in PHASES)))
            for r in ok:
                remove_clone(store, cfg, r.host, r.uuid, r.name)
        print_table(f"{args.clones} clones of a 128 MiB TCG guest at once, {args.rounds} rounds "
                    f"(template made in {template_s:.2f} s; seconds)", rows,
                    ["ROUND", "CLONE", "HOST", "OVERLAY", "DEFINE", "START", "RUNNING",
                     "READY", "START->READY"])
        print(f"\nall {args.clones} clones reported ready after "
              + ", ".join(f"{s:.2f} s" for s in all_ready) + f"; failed clones: {failed}")
        verdict = judge(timings, args.clones * args.rounds)
        verdict.print()
        write_json("real_clone", {
            "params": {"clones": args.clones, "rounds": args.rounds, "memory_mib": 128,
                       "accel": hosts.image.accel},
            "template_s": round(template_s, 3),
            "all_ready_s": [round(s, 3) for s in all_ready], "failed": failed,
            **{phase: summary_ms(values) for phase, values in samples.items() if values},
            **verdict.to_dict(),
        }, args.json_path)
        return verdict.exit_code()
    finally:
        hosts.close()
        store.delete_prefix(cfg.prefix)
        store.close()


if __name__ == "__main__":
    sys.exit(main())
