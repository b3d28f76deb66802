"""The HA manager's full round at fleet scale, alone: wall and CPU seconds.

The real :class:`gridtool.ha.manager.Manager` reading by watch over the in-memory store
(no etcd, no agents: what the round itself costs), ``--hosts`` hosts with
``--guests`` guests spread over them, all running; one host's guests are HA. It times
the snapshot and ``decide`` of a full round after one guest record changed (``--rounds``
of them, median) and of the round that decides a failover (that host's record gone),
wall and this process's CPU time, with the load average beside them; target: each of
those two rounds ≤ ``ROUND_CPU_MS`` of CPU. It runs on the code before the fleet index
too (it uses only the manager's API): the comparison.

    python bench/manager_round.py [--hosts 2000] [--guests 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from benchlib import print_table
from verdict import Verdict

from gridtool.clock import Clock
from gridtool.config import Config
from gridtool.fencing.power import Outcome
from gridtool.ha.manager import Manager
from gridtool.ha.rules import decide
from gridtool.registry.fleet import Registry
from gridtool.registry.memstore import MemStore
from gridtool.registry.model import Disk, GuestRecord, HostRecord
from gridtool.registry.records import GuestSettings, encode

KEYS = Config().keys
HA_HOST = 7
ROUND_CPU_MS = 100.0  # a full round after a change, and a failover's deciding round


def fleet(store: MemStore, hosts: int, guests: int) -> None:
    """``hosts`` hosts with ``guests // hosts`` running guests each; host ``HA_HOST``'s
    guests on shared storage and HA."""
    registry = Registry(store, KEYS)
    for h in range(hosts):
        name = f"hv{h:04d}"
        registry.put_host(HostRecord(name, "test:///", "test", 64, 262144, 200000, "0", 0.0,
                                     watchdog=True), None)
        records = []
        for n in range(guests // hosts):
            uuid, ha = f"{h:08d}-0000-0000-0000-{n:012d}", h == HA_HOST
            disk = Disk("vda", f"/dev/e/{h}.{n}", "block", shared=ha,
                        volume=f"aoe-{h}.{n}" if ha else "")
            records.append(GuestRecord(uuid, f"{name}-g{n:03d}", name, "running", 1, 512, 0.0,
                                       (disk,)))
            if ha:
                store.put(KEYS.guest_settings(uuid),
                          encode(GuestSettings(uuid, f"{name}-g{n:03d}", ha=True)))
        registry.write_guests(tuple(records), (), name)


def timed(manager: Manager) -> tuple[float, float, int]:
    """Wall and CPU milliseconds of one snapshot and decide, and how many actions."""
    wall, cpu = time.perf_counter(), time.process_time()
    snap, _ = manager.snapshot()
    actions = decide(snap, manager.limits, fencing=manager.fencing)
    return ((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000,
            len(actions))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--guests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    store = MemStore(lambda: 0.0)
    fleet(store, args.hosts, args.guests)
    registry = Registry(store, KEYS)
    manager = Manager(Config(), store, "bench", threaded=False,
                      clock=Clock(lambda: 1000.0, lambda: 1000.0),
                      power_fence=lambda _host: Outcome(True, "off"))
    manager._watches = manager._watch()
    view: Any = manager.view
    view.sync()
    rows = [("first round (loads everything)", *timed(manager), os.getloadavg()[0])]
    changed = []
    for i in range(args.rounds):
        registry.put_guest(GuestRecord(f"{3:08d}-0000-0000-0000-{i:012d}", f"hv0003-g{i:03d}",
                                       "hv0003", "paused", 1, 512, float(i),
                                       (Disk("vda", f"/dev/e/3.{i}", "block"),)))
        view.sync()
        changed.append(timed(manager))
    rows.append((f"one guest changed (median of {args.rounds})",
                 statistics.median(c[0] for c in changed),
                 statistics.median(c[1] for c in changed), changed[-1][2],
                 os.getloadavg()[0]))
    store.delete(KEYS.host(f"hv{HA_HOST:04d}"))
    view.sync()
    rows.append(("a host with HA guests gone (the deciding round)", *timed(manager),
                 os.getloadavg()[0]))
    manager._watches[0].cancel()
    print_table(f"manager full round: {args.hosts} hosts, {args.guests} guests (in memory)",
                rows, ["round", "wall ms", "cpu ms", "actions", "load"])
    verdict = Verdict("manager round")
    for name, _wall, cpu, *_ in rows[1:]:
        verdict.check(f"{name}: CPU", cpu, "<=", ROUND_CPU_MS, "ms")
    verdict.print()
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
