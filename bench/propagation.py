"""Lifecycle-change propagation: libvirt call returns -> change visible through an etcd watch.

Starts a real etcd and one lab host (libvirtd test driver + agent), then makes N
lifecycle changes (start/destroy of one guest, alternating) and times how long each
takes to show up in a watch on the registry. Target: p99 <= 50 ms.

    python bench/propagation.py [--changes 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from benchlib import print_table, summary_ms, verdict, write_json

from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.model import GuestRecord, decode
from gridtool.registry.store import Event
from tests.harness.testbed import LabHosts, domain_xml, wait_until

TARGET_P99_MS = 50.0


class StateWatch:
    """Collects (state, arrival time) of one guest's records from a registry watch."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: list[tuple[str, float]] = []

    def __call__(self, ev: Event) -> None:
        now = time.perf_counter()
        if ev.kind != "put":
            return
        state = decode(GuestRecord, ev.key, ev.value).state
        with self.cond:
            self.seen.append((state, now))
            self.cond.notify_all()

    def wait_for(self, state: str, after: int, timeout: float = 5.0) -> float:
        """Arrival time of the first record with ``state`` past index ``after``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for seen_state, at in self.seen[after:]:
                    if seen_state == state:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {state} record within {timeout} s")
                self.cond.wait(left)


def measure(changes: int, base: Path) -> list[float]:
    cluster = EtcdCluster.create(base, 1)
    cluster.start()
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix="/bench-propagation/", ttl=10)
    hosts = LabHosts(base / "hosts", cfg)
    store = EtcdStore(cfg)
    try:
        hosts.add("hv1")
        dom = hosts.conn("hv1").defineXML(domain_xml("bench-guest"))
        hosts.start_agent("hv1", resync_interval=3600.0)
        wait_until(lambda: store.list(cfg.keys.host_guests("hv1"))[0], what="agent sync")
        watch = StateWatch()
        handle = store.watch_prefix(cfg.keys.host_guests("hv1"), watch)
        latencies = []
        for i in range(changes):
            mark = len(watch.seen)
            if i % 2 == 0:
                dom.create()
                expect = "running"
            else:
                dom.destroy()
                expect = "shutoff"
            returned = time.perf_counter()
            latencies.append(max(0.0, watch.wait_for(expect, mark) - returned))
        handle.cancel()
        return latencies
    finally:
        store.close()
        hosts.close()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridtool-bench-") as tmp:
        latencies = measure(args.changes, Path(tmp))
    stats = summary_ms(latencies)
    ok = stats["p99_ms"] <= TARGET_P99_MS
    print_table("libvirt lifecycle change -> visible in an etcd watch",
                [(stats["count"], stats["p50_ms"], stats["p99_ms"], stats["max_ms"],
                  TARGET_P99_MS, verdict(ok))],
                ["changes", "p50 ms", "p99 ms", "max ms", "target p99 ms", "verdict"])
    write_json("propagation", {"stats": stats, "target_p99_ms": TARGET_P99_MS, "pass": ok},
               args.json_path)


if __name__ == "__main__":
    main()
