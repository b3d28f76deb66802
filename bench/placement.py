"""Benchmark the pure placement allocator and rebalance planner.

Places M guests one by one on N hosts through the allocator (:class:`Fleet`; each
placement sees the hosts left by the previous one) and reports per-placement latency
(target p99 <= 1 ms); then plans a rebalance of a skewed N-host cluster (target <= 1 s)
and compares its move count with a greedy lower bound. Seeded, so runs are repeatable.
Also judged: no host over capacity, and the indexed allocator agrees with the linear
``place()`` on every sampled guest. Exits 1 when a target fails.

    python bench/placement.py [--hosts N --guests M --seed S --json PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import print_table, summary_ms, write_json
from verdict import Verdict

from gridtool.placement.rebalance import balanced_hosts, mean_use_pct, plan_rebalance
from gridtool.placement.rules import (
    Fleet,
    GuestNeeds,
    HostView,
    PlacementPolicy,
    Weigher,
    add_guest,
    is_overflow,
    place,
)

GIB = 1024
HOST_CLASSES = ((128 * GIB, 32, 3), (256 * GIB, 64, 5), (512 * GIB, 96, 2))  # mem, cpus, weight
GUEST_SIZES = ((2 * GIB, 10), (4 * GIB, 20), (8 * GIB, 25), (16 * GIB, 25), (32 * GIB, 12))
STORAGE = ("san-a", "san-b", "nfs-1")
DOM0_MIB = 4 * GIB
PLACE_P99_TARGET_MS = 1.0
PLAN_TARGET_S = 1.0


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    return rng.choices(weighted, weights=[w[-1] for w in weighted])[0]


# --------------------------------------------------------------------------- workloads


def make_host(rng: random.Random, i: int) -> HostView:
    """A random empty host; ~10% overflow, ~1% down, ~2% draining."""
    memory, cpus, _ = _pick(rng, HOST_CLASSES)
    labels = {"overflow" if rng.random() < 0.10 else "dedicated"}
    if rng.random() < 0.30:
        labels.add("ssd")
    storage = {s for s, p in zip(STORAGE, (0.9, 0.5, 0.7), strict=True) if rng.random() < p}
    return HostView(
        name=f"hv{i:04d}",
        total_memory_mib=memory,
        free_memory_mib=memory - DOM0_MIB,
        cpus=cpus,
        up=rng.random() >= 0.01,
        draining=rng.random() < 0.02,
        labels=frozenset(labels),
        storage=frozenset(storage),
    )


def make_guest(rng: random.Random, i: int, movable: bool = True) -> GuestNeeds:
    """A random guest; a quarter in anti-affinity triples, some needing storage/labels."""
    memory, _ = _pick(rng, GUEST_SIZES)
    roll = rng.random()
    return GuestNeeds(
        name=f"vm{i:05d}",
        memory_mib=memory,
        vcpus=max(1, memory // (4 * GIB) + rng.randint(0, 2)),
        storage=frozenset({rng.choice(STORAGE)}) if rng.random() < 0.4 else frozenset(),
        anti_affinity=f"aa{i // 3}" if i % 12 < 3 else None,
        required_labels=frozenset({"ssd"}) if roll < 0.10 else frozenset(),
        preferred_labels=frozenset({"ssd"}) if 0.10 <= roll < 0.30 else frozenset(),
        movable=movable,
    )


def skewed_cluster(rng: random.Random, n_hosts: int) -> list[HostView]:
    """Hosts with guests: a fifth filled to 80-95 %, the rest to 25-55 %, overflow ~empty.

    All hosts see all storage and carry no ``ssd`` label; 5 % of guests are not movable.
    """
    hosts, serial = [], 0
    for i in range(n_hosts):
        host = make_host(rng, i)
        host = replace(host, up=True, labels=host.labels - {"ssd"}, storage=frozenset(STORAGE))
        fill = rng.uniform(0.80, 0.95) if rng.random() < 0.2 else rng.uniform(0.25, 0.55)
        if is_overflow(host):
            fill = rng.uniform(0.0, 0.1)
        while host.used_memory_mib < fill * host.total_memory_mib:
            guest = make_guest(rng, serial, movable=rng.random() >= 0.05)
            serial += 1
            group = f"aa{rng.randrange(n_hosts * 4)}" if guest.anti_affinity else None
            if group in host.groups:
                group = None
            guest = replace(guest, anti_affinity=group, required_labels=frozenset())
            if guest.memory_mib > host.free_memory_mib:
                break
            host = add_guest(host, guest)
        hosts.append(host)
    return hosts


def lower_bound(hosts: Sequence[HostView], threshold_pct: float) -> int:
    """Sum over over-band hosts of the fewest of their largest movable guests that must
    leave to get under mean + threshold (all movable ones when even that is not enough)."""
    pool = balanced_hosts(hosts)
    mean = mean_use_pct(pool)
    total = 0
    for host in pool:
        excess = host.used_memory_mib - (mean + threshold_pct) / 100.0 * host.total_memory_mib
        sizes = sorted((g.memory_mib for g in host.guests if g.movable), reverse=True)
        for size in sizes:
            if excess <= 0:
                break
            excess -= size
            total += 1
    return total


# --------------------------------------------------------------------------- runs


def bench_placement(
    hosts: Sequence[HostView], guests: Sequence[GuestNeeds], policy: PlacementPolicy
) -> dict[str, Any]:
    """Place ``guests`` one by one through a :class:`Fleet` (the indexed allocator), timing
    each ``place`` (wall and thread CPU time) and ``place`` + ``apply``. On every 10th
    guest also time the linear :func:`place` over the same hosts (and check it agrees),
    and on every 100th the full per-host verdicts that a dry run prints."""
    fleet = Fleet(tuple(hosts), policy)
    wall, cpu, applied, linear, explained = [], [], [], [], []
    placed = on_overflow = disagreements = 0
    overflow = {h.name for h in hosts if is_overflow(h, policy)}
    for i, guest in enumerate(guests):
        c0, t0 = time.thread_time(), time.perf_counter()
        placement = fleet.place(guest)
        t1, c1 = time.perf_counter(), time.thread_time()
        after = fleet.apply(placement)
        applied.append(time.perf_counter() - t0)
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
        if i % 10 == 0:
            t2 = time.perf_counter()
            disagreements += place(guest, fleet.hosts, policy).host != placement.host
            linear.append(time.perf_counter() - t2)
        if i % 100 == 0:
            t3 = time.perf_counter()
            _ = placement.verdicts
            explained.append(time.perf_counter() - t3)
        fleet = after
        if placement.host is not None:
            placed += 1
            on_overflow += placement.host in overflow
    over_capacity = sum(
        h.free_memory_mib < 0 or h.vcpus_allocated > h.cpus * policy.cpu_ratio for h in fleet.hosts
    )
    return {
        "place": summary_ms(wall),
        "place_cpu_time": summary_ms(cpu),
        "place_plus_apply": summary_ms(applied),
        "linear_place": summary_ms(linear),
        "all_verdicts": summary_ms(explained),
        "linear_disagreements": disagreements,
        "placed": placed,
        "unplaced": len(guests) - placed,
        "on_overflow": on_overflow,
        "hosts_over_capacity": over_capacity,
    }


def bench_rebalance(hosts: Sequence[HostView], threshold_pct: float) -> dict[str, Any]:
    """Plan a rebalance without a move limit and compare with the greedy lower bound."""
    t0 = time.perf_counter()
    plan = plan_rebalance(hosts, threshold_pct=threshold_pct, max_moves=len(hosts) * 100)
    elapsed = time.perf_counter() - t0
    bound = lower_bound(hosts, threshold_pct)
    return {
        "plan_s": elapsed,
        "hosts": len(hosts),
        "guests": sum(len(h.guests) for h in hosts),
        "moves": len(plan.moves),
        "lower_bound_moves": bound,
        "moves_over_bound": len(plan.moves) / bound if bound else None,
        "mean_pct": plan.mean_pct,
        "threshold_pct": threshold_pct,
        "imbalance_before": plan.imbalance_before,
        "imbalance_after": plan.imbalance_after,
        "outside_before": plan.outside_before,
        "outside_after": plan.outside_after,
    }


def _lat(summary: dict[str, float]) -> str:
    return f"{summary['p50_ms']:.3f} / {summary['p99_ms']:.3f} / {summary['max_ms']:.3f}"


def report(body: dict[str, Any]) -> None:
    """Print the summary table."""
    p, r = body["placement"], body["rebalance"]
    plan_s = r["plan_s"]
    rows = [
        (
            f"place, {p['placed'] + p['unplaced']} guests (ms)",
            _lat(p["place"]),
            f"p99 <= {PLACE_P99_TARGET_MS:g} ms",
        ),
        ("  same, thread CPU time (ms)", _lat(p["place_cpu_time"]), "time preempted excluded"),
        ("place + apply (ms)", _lat(p["place_plus_apply"]), ""),
        (
            "linear place(), every 10th guest (ms)",
            _lat(p["linear_place"]),
            f"{p['linear_disagreements']} disagreements",
        ),
        ("all verdicts, dry-run explain (ms)", _lat(p["all_verdicts"]), ""),
        (
            "placed / unplaced / on overflow",
            f"{p['placed']} / {p['unplaced']} / {p['on_overflow']}",
            "",
        ),
        ("hosts over capacity", p["hosts_over_capacity"], "0"),
        (
            f"rebalance plan, {r['hosts']} hosts / {r['guests']} guests",
            f"{plan_s:.3f} s",
            f"<= {PLAN_TARGET_S:g} s",
        ),
        (
            "rebalance moves / lower bound",
            f"{r['moves']} / {r['lower_bound_moves']}",
            f"x{r['moves_over_bound']:.2f}" if r["moves_over_bound"] else "",
        ),
        (
            "imbalance before -> after (points)",
            f"{r['imbalance_before']:.1f} -> {r['imbalance_after']:.1f}",
            f"band mean {r['mean_pct']:.1f} % +- {r['threshold_pct']:g}",
        ),
        (
            "hosts outside band before -> after",
            f"{r['outside_before']} -> {r['outside_after']}",
            "",
        ),
        ("load average before / after", " / ".join(f"{x:.2f}" for x in body["loadavg"]), ""),
    ]
    print_table("placement allocator and rebalance planner", rows, ("metric", "value", "target"))


def judge(body: dict[str, Any]) -> Verdict:
    """The targets of a run (``body`` as :func:`main` builds it)."""
    p, r = body["placement"], body["rebalance"]
    verdict = Verdict("placement")
    verdict.check("place, p99", p["place"]["p99_ms"], "<=", PLACE_P99_TARGET_MS, "ms")
    verdict.check("rebalance plan", r["plan_s"], "<=", PLAN_TARGET_S, "s")
    verdict.check("guests placed or refused", p["placed"] + p["unplaced"], "==",
                  body["config"]["guests"])
    verdict.check("hosts over capacity", p["hosts_over_capacity"], "==", 0)
    verdict.check("indexed vs linear place(), disagreements", p["linear_disagreements"],
                  "==", 0)
    return verdict


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--guests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weigher", choices=[w.value for w in Weigher], default="spread")
    parser.add_argument("--threshold", type=float, default=10.0, help="rebalance band, points")
    parser.add_argument("--json", default=None, help="default bench/results/placement.json")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    policy = PlacementPolicy(weigher=Weigher(args.weigher))
    hosts = [make_host(rng, i) for i in range(args.hosts)]
    guests = [make_guest(rng, i) for i in range(args.guests)]
    skewed = skewed_cluster(random.Random(args.seed + 1), args.hosts)
    load_before = os.getloadavg()[0]
    body: dict[str, Any] = {
        "config": vars(args),
        "placement": bench_placement(hosts, guests, policy),
        "rebalance": bench_rebalance(skewed, args.threshold),
        "loadavg": [load_before, os.getloadavg()[0]],
    }
    report(body)
    verdict = judge(body)
    verdict.print()
    write_json("placement", {**body, **verdict.to_dict()}, args.json)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
