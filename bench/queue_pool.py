"""A pool fed by a real queue, end to end: time in queue, workers over time, the SLA.

A real redis-server on loopback (its own port and temp dir), a real etcd, lab hosts with
agents on the libvirt test driver, the leader-elected manager flexing a pool of clones
(the Erlang policy, mean-wait target ``--sla-wait``), and ``gridtool pool feed``'s loop
reading the Redis stream's consumer group every ``--period`` (the flex sampling period).
A producer replays the trace into the stream (each job stamped with its enqueue time).
Each worker of the pool is paired with a consumer process (the lab's stand-in for the
software inside the guest): it reads its clone's record in the registry and takes jobs,
one at a time, only while the clone is running and ``--boot-delay`` seconds have passed
since it came up (a test-driver guest is running at once: the delay stands in for a
boot; the QEMU lab's ready marker is not used here), each job an exponential
``--service-time``. Reported: each job's wait (enqueue -> taken) p50/p90/p99/max, the
SLA-violation time (``--period`` windows, by enqueue time, whose mean wait is over
``--sla-wait``), worker-seconds, and the workers over time. Table + JSON
(bench/results/queue_pool.json).

    python bench/queue_pool.py [--trace CSV] [--period 10] [--sla-wait 1] [--json PATH]

The default trace: 2 jobs/s for 40 s, 8/s for 60 s, 2/s for 60 s; 0.5 s jobs (1, 4, 1
Erlang). About 3 minutes, mostly idle CPU (jobs are sleeps).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
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
from gridtool.pools.feed import parse_url
from gridtool.pools.feeder import Feeder
from gridtool.pools.queuesim import Segment, Trace, load_trace
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.model import GuestRecord, decode
from tests.harness.testbed import LabHosts, domain_xml, wait_until

POOL, STREAM, GROUP, DONE = "work", "jobs", "workers", "done"
DEFAULT_TRACE = Trace("burst", 160.0, (Segment(0, 40, 2.0), Segment(40, 100, 8.0),
                                       Segment(100, 160, 2.0)))


# --- the consumer: one process per worker -------------------------------------------------


def consumer(args: argparse.Namespace) -> int:
    """Take jobs while this worker's clone is ready; exit when its record is gone."""
    import redis

    cfg = Config(endpoints=tuple(args.endpoints.split(",")), prefix=args.prefix, timeout=3.0)
    store = EtcdStore(cfg)
    client = redis.Redis(port=args.redis_port, decode_responses=True)
    key = cfg.keys.guest(args.host, args.uuid)
    rng = random.Random(args.seed)
    stop, serving = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def mark() -> None:  # "serving:<name>" lives while the consumer takes jobs
        while not stop.wait(0.3):
            if serving.is_set():
                client.set(f"serving:{args.name}", 1, px=1000)

    threading.Thread(target=mark, daemon=True).start()
    seen, ready_since = False, None
    while not stop.is_set():
        serving.clear()
        item = store.get(key)
        if item is None:
            if seen:
                return 0  # the clone was removed
            stop.wait(0.2)
            continue
        seen = True
        guest = decode(GuestRecord, item.key, item.value)
        if guest.state != "running" or (args.need_marker and not guest.ready_at):
            ready_since = None
            stop.wait(0.2)
            continue
        ready_since = ready_since or time.time()
        if time.time() - ready_since < args.boot_delay:
            stop.wait(0.1)
            continue
        if not serving.is_set():
            client.set(f"serving:{args.name}", 1, px=1000)
        serving.set()
        got: Any = client.xreadgroup(GROUP, args.name, {STREAM: ">"}, count=1, block=500)
        for _, messages in got or []:
            for msg_id, fields in messages:
                taken = time.time()
                time.sleep(rng.expovariate(1 / args.service_time))  # the job's work
                client.xack(STREAM, GROUP, msg_id)
                client.rpush(DONE, json.dumps([int(fields["n"]), float(fields["t"]), taken,
                                               time.time(), args.name]))
    return 0


# --- the run --------------------------------------------------------------------------------


class Consumers:
    """A consumer process per pool member (started when it appears, stopped when gone)."""

    def __init__(self, cfg: Config, store: EtcdStore, redis_port: int, args: argparse.Namespace,
                 logs: Path) -> None:
        self.cfg, self.store, self.port, self.args, self.logs = cfg, store, redis_port, args, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def sync(self) -> int:
        """Start and stop consumers to match the pool's members; how many there are."""
        members = pools.members(self.store, self.cfg.keys, POOL)
        for uid, m in members.items():
            if uid not in self.procs:
                self.procs[uid] = subprocess.Popen(
                    [sys.executable, __file__, "consumer", "--endpoints",
                     ",".join(self.cfg.endpoints), "--prefix", self.cfg.prefix, "--host", m.host,
                     "--uuid", uid, "--name", m.name, "--redis-port", str(self.port),
                     "--service-time", str(self.args.service_time), "--boot-delay",
                     str(self.args.boot_delay), "--seed",
                     str(zlib.crc32(f"{self.args.seed}{uid}".encode())),
                     *(["--need-marker"] if self.args.hypervisor == "qemu" else [])],
                    stdout=subprocess.DEVNULL, stderr=(self.logs / f"{m.name}.log").open("w"))
        for uid in [u for u in self.procs if u not in members]:
            self.procs.pop(uid).terminate()
        return len(self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
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
        consumers = Consumers(cfg, store, broker.port, args, tmp)
        try:
            for n in range(args.hosts):
                hosts.add(f"hv{n + 1}")
                hosts.start_agent(f"hv{n + 1}")
            wait_until(lambda: len(store.list(cfg.keys.hosts)[0]) == args.hosts, timeout=60,
                       what="hosts")
            make_template(hosts, store, cfg, args.hypervisor)
            client = redis.Redis(port=broker.port, decode_responses=True)
            client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            pools.create(store, cfg.keys, pools.new_spec(
                POOL, "w", args.min, args.max, policy="flex", target_wait=args.sla_wait))
            manager = Manager(cfg, store, "bench", period=1.0, pool_period=args.period)
            feeder = Feeder(store, cfg.keys, POOL, RedisQueue(parse_url(broker.url), STREAM, GROUP),
                            broker=broker.url, queue=STREAM, period=args.period)
            for target in (manager.run, feeder.run):
                threading.Thread(target=target, args=(stop,), daemon=True).start()
            wait_until(lambda: consumers.sync() and client.keys("serving:*"), timeout=120,
                       what="a first worker")
            start = time.time()
            producer = threading.Thread(target=produce, args=(client, times, start, stop))
            producer.start()
            timeline = []
            deadline = start + trace.duration + args.drain
            while producer.is_alive() or (_backlog(client) and time.time() < deadline):
                consumers.sync()
                st = pools.status(store, cfg.keys, POOL)
                decision = st.decision if st else {}
                timeline.append({"t": round(time.time() - start, 1),
                                 "desired": st.desired if st else None,
                                 "rate": round(decision.get("smoothed_rate", 0.0), 2),
                                 "load": round(decision.get("offered_load", 0.0), 2),
                                 "members": len(consumers.procs),
                                 "serving": len(client.keys("serving:*")),
                                 "backlog": _backlog(client)})
                stop.wait(1.0)
            done = [json.loads(x) for x in client.lrange(DONE, 0, -1)]
            end = time.time()
        finally:
            stop.set()
            consumers.stop()
            broker.stop()
            hosts.close()
            store.close()
    return summarize(times, start, end, done, timeline, args)


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
    c = sub.add_parser("consumer", help="internal: one worker's consumer")
    for name in ("--endpoints", "--prefix", "--host", "--uuid", "--name"):
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
    args = parser.parse_args()
    if args.command == "consumer":
        return consumer(args)
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
