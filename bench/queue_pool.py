"""A pool fed by a real queue, end to end: time in queue, workers over time, the SLA.

A real redis-server on loopback (its own port and temp dir), a real etcd, lab hosts with
agents on the libvirt test driver, the leader-elected manager flexing a pool of clones
(the Erlang policy, mean-wait target ``--sla-wait``), and ``gridtool pool feed``'s loop
reading the Redis stream's consumer group every ``--period`` (the flex sampling period).
A producer replays the trace into the stream (each job stamped with its enqueue time).
The pool starts at the size the trace's first rate needs (as ``pool simulate``'s model
does) and the feed with the trace. ``--max`` consumer processes (the lab's stand-in for
the software inside the guests) are started before the pool is made, as that software
would be there when its guest boots: each claims a member nobody serves, takes jobs one
at a time only while the clone is running and ``--boot-delay`` seconds have passed since
it came up (a test-driver guest is running at once: the delay stands in for a boot; on
QEMU, once the agent saw the ready marker), each job an exponential ``--service-time``,
and claims another once its clone is gone. Reported: each job's wait (enqueue -> taken)
p50/p90/p99/max, the SLA-violation time (``--period`` windows, by enqueue time, whose
mean wait is over ``--sla-wait``), worker-seconds, the workers over time, and in the
JSON (bench/results/queue_pool.json) each consumer's claimed/running/serving times and
the feed's load reports (seconds from the trace's start); ``--logs DIR`` keeps the
manager's, feeder's, agents' and consumers' logs.

    python bench/queue_pool.py [--trace CSV] [--period 10] [--sla-wait 1] [--json PATH]
                               [--logs DIR] [--hypervisor qemu --max 4]

The default trace: 2 jobs/s for 40 s, 8/s for 60 s, 2/s for 60 s; 0.5 s jobs (1, 4, 1
Erlang). About 3 minutes, mostly idle CPU (jobs are sleeps).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from benchlib import lab_etcd, percentile, print_table, write_json
from verdict import Verdict

from gridtool.clone.shell import create_template
from gridtool.config import Config
from gridtool.ha.manager import Manager
from gridtool.lab.brokers import start_redis
from gridtool.pools import shell as pools
from gridtool.pools.brokers import RedisQueue
from gridtool.pools.erlang import servers_needed
from gridtool.pools.feed import parse_url
from gridtool.pools.feeder import Feeder
from gridtool.pools.queuesim import Segment, Trace, load_trace
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.model import GuestRecord, decode
from tests.harness.testbed import LabHosts, domain_xml, wait_until

POOL, STREAM, GROUP, DONE, EVENTS = "work", "jobs", "workers", "done", "events"
DEFAULT_TRACE = Trace("burst", 160.0, (Segment(0, 40, 2.0), Segment(40, 100, 8.0),
                                       Segment(100, 160, 2.0)))


# --- the consumer: a process per worker, started ahead --------------------------------------


def consumer(args: argparse.Namespace) -> int:
    """One of ``--max`` processes started before the run: claims a pool member nobody
    serves (``claim:<uuid>`` in Redis), takes jobs while its clone is ready, and claims
    another once that clone is gone; until SIGTERM. (Started ahead, as the software in a
    guest would be there when it boots: a process started per worker paid Python's
    start-up, 4-15 s on the loaded machine, on top of the product's time.)"""
    import redis

    cfg = Config(endpoints=tuple(args.endpoints.split(",")), prefix=args.prefix, timeout=3.0)
    store = EtcdStore(cfg)
    client = redis.Redis(port=args.redis_port, decode_responses=True)
    rng = random.Random(args.seed)
    stop, changed = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    watch = store.watch_prefix(cfg.keys.pool_members(POOL), lambda _ev: changed.set())
    serving: list[str] = []  # the name of the clone served now (the marker thread reads it)

    def mark() -> None:  # "serving:<name>" lives while the consumer takes jobs
        while not stop.wait(0.3):
            for name in list(serving):
                client.set(f"serving:{name}", 1, px=1000)

    threading.Thread(target=mark, daemon=True).start()
    client.rpush(EVENTS, json.dumps([args.slot, "", "started", time.time()]))
    try:
        while not stop.is_set():
            claimed = _claim(store, cfg, client, args.slot)
            if claimed is None:
                changed.wait(1.0)
                changed.clear()
                continue
            uid, member = claimed
            try:
                _serve(store, cfg, client, args, rng, stop, uid, member, serving)
            finally:
                serving.clear()
                client.delete(f"claim:{uid}")
    finally:
        watch.cancel()
        store.close()
    return 0


def _claim(store: EtcdStore, cfg: Config, client: Any, slot: str) -> tuple[str, Any] | None:
    """A member of the pool that no consumer serves yet, now claimed by this one."""
    for uid, member in sorted(pools.members(store, cfg.keys, POOL).items()):
        if member.warm != "removing" and client.set(f"claim:{uid}", slot, nx=True):
            client.rpush(EVENTS, json.dumps([slot, member.name, "claimed", time.time()]))
            return uid, member
    return None


def _serve(store: EtcdStore, cfg: Config, client: Any, args: argparse.Namespace,
           rng: random.Random, stop: threading.Event, uid: str, member: Any,
           serving: list[str]) -> None:
    """Take jobs as ``member``'s software would: once its clone runs (and shows its ready
    marker, on QEMU) and ``--boot-delay`` has passed; return when the clone is gone."""
    key, name = cfg.keys.guest(member.host, uid), member.name
    seen, ready_since = False, None
    while not stop.is_set():
        item = store.get(key)
        if item is None:
            if seen or store.get(cfg.keys.pool_member(POOL, uid)) is None:
                return  # the clone was removed (or never made)
            stop.wait(0.1)
            continue
        seen = True
        guest = decode(GuestRecord, item.key, item.value)
        if guest.state != "running" or (args.need_marker and not guest.ready_at):
            serving.clear()
            ready_since = None
            stop.wait(0.1)
            continue
        if ready_since is None:
            ready_since = time.time()
            client.rpush(EVENTS, json.dumps([args.slot, name, "running", ready_since]))
        if time.time() - ready_since < args.boot_delay:
            stop.wait(min(0.1, ready_since + args.boot_delay - time.time()))
            continue
        if not serving:
            client.set(f"serving:{name}", 1, px=1000)
            client.rpush(EVENTS, json.dumps([args.slot, name, "serving", time.time()]))
            serving.append(name)
        got: Any = client.xreadgroup(GROUP, name, {STREAM: ">"}, count=1, block=500)
        for _, messages in got or []:
            for msg_id, fields in messages:
                taken = time.time()
                time.sleep(rng.expovariate(1 / args.service_time))  # the job's work
                client.xack(STREAM, GROUP, msg_id)
                client.rpush(DONE, json.dumps([int(fields["n"]), float(fields["t"]), taken,
                                               time.time(), name]))


# --- the run --------------------------------------------------------------------------------


class Consumers:
    """``--max`` consumer processes, started before the pool is made (each claims a member
    once one appears)."""

    def __init__(self, cfg: Config, redis_port: int, args: argparse.Namespace,
                 logs: Path) -> None:
        self.procs = [subprocess.Popen(
            [sys.executable, __file__, "consumer", "--endpoints", ",".join(cfg.endpoints),
             "--prefix", cfg.prefix, "--slot", f"c{n}", "--redis-port", str(redis_port),
             "--service-time", str(args.service_time), "--boot-delay", str(args.boot_delay),
             "--seed", str(zlib.crc32(f"{args.seed}c{n}".encode())),
             *(["--need-marker"] if args.hypervisor == "qemu" else [])],
            stdout=subprocess.DEVNULL, stderr=(logs / f"consumer-c{n}.log").open("w"))
            for n in range(args.max)]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def produce(client: Any, times: list[float], start: float, stop: threading.Event) -> None:
    """Push each job at its trace time (seconds after ``start``), stamped with the time."""
    for i, t in enumerate(times):
        if stop.wait(max(0.0, start + t - time.time())):
            return
        client.xadd(STREAM, {"t": repr(time.time()), "n": i})


def run(args: argparse.Namespace, trace: Trace) -> dict[str, Any]:
    import redis

    times = trace.arrival_times(random.Random(args.seed))
    with lab_etcd(prefix="gridtool-bench-queue-") as (tmp, cluster):
        cfg = Config(endpoints=tuple(cluster.endpoints), prefix="/bench-queue/", ttl=10,
                     timeout=3.0, images_dir=str(tmp / "lab" / "images"))
        store = EtcdStore(cfg)
        hosts: Any = LabHosts(tmp / "lab", cfg)
        if args.hypervisor == "qemu":
            from tests.harness import qemu_testbed

            hosts = qemu_testbed.QemuHosts(tmp / "lab", cfg)
        broker = start_redis(tmp / "redis")
        stop = threading.Event()
        consumers = Consumers(cfg, broker.port, args, tmp)
        try:
            for n in range(args.hosts):
                hosts.add(f"hv{n + 1}")
                hosts.start_agent(f"hv{n + 1}")
            wait_until(lambda: len(store.list(cfg.keys.hosts)[0]) == args.hosts, timeout=60,
                       what="hosts")
            make_template(hosts, store, cfg, args.hypervisor)
            client = redis.Redis(port=broker.port, decode_responses=True)
            client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            wait_until(lambda: client.llen(EVENTS) >= args.max, timeout=120,
                       what="the consumers started")
            size = initial_size(trace, args)
            pools.create(store, cfg.keys, pools.new_spec(
                POOL, "w", args.min, args.max, desired=size, policy="flex",
                target_wait=args.sla_wait))
            manager = Manager(cfg, store, "bench", period=1.0, pool_period=args.period)
            threading.Thread(target=manager.run, args=(stop,), daemon=True).start()
            wait_until(lambda: len(client.keys("serving:*")) >= size, timeout=180,
                       what=f"{size} workers serving")
            # the feed starts with the trace: its first report covers the trace only
            feeder = Feeder(store, cfg.keys, POOL, RedisQueue(parse_url(broker.url), STREAM, GROUP),
                            broker=broker.url, queue=STREAM, period=args.period)
            start = time.time()
            threading.Thread(target=feeder.run, args=(stop,), daemon=True).start()
            producer = threading.Thread(target=produce, args=(client, times, start, stop))
            producer.start()
            timeline = []
            deadline = start + trace.duration + args.drain
            while producer.is_alive() or (_backlog(client) and time.time() < deadline):
                st = pools.status(store, cfg.keys, POOL)
                decision = st.decision if st else {}
                timeline.append({"t": round(time.time() - start, 1),
                                 "desired": st.desired if st else None,
                                 "rate": round(decision.get("smoothed_rate", 0.0), 2),
                                 "load": round(decision.get("offered_load", 0.0), 2),
                                 "members": len(pools.members(store, cfg.keys, POOL)),
                                 "serving": len(client.keys("serving:*")),
                                 "backlog": _backlog(client)})
                stop.wait(1.0)
            done = [json.loads(x) for x in client.lrange(DONE, 0, -1)]
            events = [json.loads(x) for x in client.lrange(EVENTS, 0, -1)]
            reports = [[round(r.timestamp - start, 2), round(r.interval, 2), r.arrivals,
                        r.completions, r.busy_seconds and round(r.busy_seconds, 2),
                        r.queue_depth, r.surge] for r in pools.samples(store, cfg.keys, POOL)]
            end = time.time()
        finally:
            stop.set()
            consumers.stop()
            broker.stop()
            hosts.close()
            store.close()
            if args.logs:
                keep_logs(tmp, Path(args.logs))
    return {**summarize(times, start, end, done, timeline, args), "start": start,
            "consumer_events": [[slot, name, what, round(at - start, 2)]
                                for slot, name, what, at in events if name],
            "reports": reports}


def initial_size(trace: Trace, args: argparse.Namespace) -> int:
    """The pool's size at the trace's start: what its first rate needs (as ``pool
    simulate`` starts its model), within the pool's bounds."""
    load = trace.rate_at(0.0) * args.service_time
    need = servers_needed(load, args.service_time, args.sla_wait, kind="mean_wait") \
        if load else 1
    return max(args.min, min(args.max, need))


def keep_logs(tmp: Path, dest: Path) -> None:
    """Copy the agents' and consumers' logs out of the lab before it is removed."""
    dest.mkdir(parents=True, exist_ok=True)
    for log_file in [*tmp.glob("*.log"), *tmp.glob("lab/*/agent.log")]:
        name = log_file.name if log_file.parent == tmp else f"{log_file.parent.name}-agent.log"
        shutil.copyfile(log_file, dest / name)


def make_template(hosts: Any, store: EtcdStore, cfg: Config, hypervisor: str) -> None:
    """Template ``w``: a test-driver domain, or a 128 MiB TCG guest with the lab's ready
    marker (its clones count as ready when the agent sees the marker)."""
    if hypervisor == "qemu":
        from gridtool.lab import qemu

        hosts.define("hv1", "w")
        ready = qemu.READY
    else:
        hosts.conn("hv1").defineXML(domain_xml("w", 64, disk="/var/lib/nowhere/w.qcow2"))
        ready = ""
    wait_until(lambda: store.list(cfg.keys.host_guests("hv1"))[0], timeout=30,
               what="the template's source guest")
    create_template(store, cfg, "w", "w", timeout=60, ready_marker=ready)


def _backlog(client: Any) -> int:
    (group,) = client.xinfo_groups(STREAM)
    return int(group["lag"] or 0) + int(group["pending"])


def summarize(times: list[float], start: float, end: float, done: list[list[Any]],
              timeline: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Waits (jobs never taken count until the end), SLA windows, worker-seconds."""
    waits = [(enq - start, taken - enq) for _, enq, taken, _, _ in done]
    served = {n for n, *_ in done}
    unserved = [t for n, t in enumerate(times) if n not in served]
    waits += [(t, end - (start + t)) for t in unserved]  # still waiting at the end
    values = [w for _, w in waits]
    windows: dict[int, list[float]] = {}
    for at, wait in waits:
        windows.setdefault(int(at // args.period), []).append(wait)
    violating = sorted(k for k, ws in windows.items() if sum(ws) / len(ws) > args.sla_wait)
    return {
        "jobs": len(times), "served": len(done), "unserved": len(unserved),
        "wait_s": {"p50": percentile(values, 50), "p90": percentile(values, 90),
                   "p99": percentile(values, 99), "max": max(values),
                   "mean": sum(values) / len(values)},
        "sla_violation_s": len(violating) * args.period,
        "violating_windows_s": [k * args.period for k in violating],
        "worker_seconds": round(sum(a["serving"] * (b["t"] - a["t"])
                                    for a, b in itertools.pairwise(timeline)), 1),
        "peak_serving": max(row["serving"] for row in timeline),
        "timeline": timeline,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("consumer", help="internal: a worker's consumer")
    for name in ("--endpoints", "--prefix", "--slot"):
        c.add_argument(name, required=True)
    c.add_argument("--redis-port", type=int, required=True)
    c.add_argument("--service-time", type=float, required=True)
    c.add_argument("--boot-delay", type=float, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--need-marker", action="store_true",
                   help="ready only once the agent saw the guest's ready marker")
    parser.add_argument("--trace", help="start,end,rate CSV (default: the built-in burst)")
    parser.add_argument("--service-time", type=float, default=0.5, help="mean job seconds")
    parser.add_argument("--period", type=float, default=10.0,
                        help="flex sampling period = pool feed's period (s)")
    parser.add_argument("--sla-wait", type=float, default=1.0, help="mean-wait target (s)")
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=8)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--hypervisor", choices=("test", "qemu"), default="test",
                        help="test: the libvirt test driver (a clone is running at once); "
                        "qemu: 128 MiB TCG guests, ready at their ready marker")
    parser.add_argument("--boot-delay", type=float,
                        help="seconds from a clone being ready to its consumer taking jobs "
                        "(default 5 on the test driver, standing in for a boot; 0 on qemu)")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds after the trace to let the backlog drain")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--logs", help="keep the manager's, feeder's, agents' and "
                        "consumers' logs (with times) in this directory")
    args = parser.parse_args()
    if args.command == "consumer":
        return consumer(args)
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=Path(args.logs, "bench.log"), level=logging.INFO,
                            format="%(asctime)s %(threadName)s %(message)s")
    if args.boot_delay is None:
        args.boot_delay = 0.0 if args.hypervisor == "qemu" else 5.0
    if args.hypervisor == "qemu":
        from gridtool.lab import qemu

        why = qemu.unavailable()
        if why:
            print(f"queue_pool: QEMU cannot run here: {why}", file=sys.stderr)
            return 2
    trace = load_trace(args.trace) if args.trace else DEFAULT_TRACE
    result = run(args, trace)
    w = result["wait_s"]
    print_table(f"queue-fed pool on {args.hypervisor}: trace {trace.name} "
                f"({result['jobs']} jobs, "
                f"{trace.duration:g} s), jobs {args.service_time:g} s, period {args.period:g} s, "
                f"SLA mean wait <= {args.sla_wait:g} s, boot delay {args.boot_delay:g} s",
                [(f"{w['p50']:.2f}", f"{w['p90']:.2f}", f"{w['p99']:.2f}", f"{w['max']:.2f}",
                  f"{w['mean']:.2f}", result["sla_violation_s"], result["worker_seconds"],
                  result["peak_serving"], result["unserved"])],
                ["wait p50 s", "p90 s", "p99 s", "max s", "mean s", "SLA-violation s",
                 "worker-s", "peak workers", "unserved"])
    step = max(1, math.ceil(len(result["timeline"]) / 20))
    print_table(f"workers over time (every ~{step} s)",
                [(r["t"], r["rate"], r["load"], r["desired"], r["members"], r["serving"],
                  r["backlog"]) for r in result["timeline"][::step]],
                ["t s", "rate /s", "load E", "desired", "members", "serving", "backlog"])
    verdict = Verdict("queue-fed pool")
    verdict.check("jobs served", result["served"], "==", result["jobs"])
    verdict.check("peak workers above the minimum", result["peak_serving"], ">", args.min)
    verdict.print()
    write_json("queue_pool", {"trace": trace.name, "args": {
        k: v for k, v in vars(args).items() if k != "command"}, **result,
        **verdict.to_dict(), "run": str(uuid.uuid4())}, args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
