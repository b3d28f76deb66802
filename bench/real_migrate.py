"""Live migration of a real QEMU guest (TCG, 128 MiB) between two lab hosts.

Starts a real etcd, two namespaced libvirtd QEMU hosts with their agents and fence hooks,
boots one fenced guest (its disk in the lab's shared dir; with ``--storage iscsi`` its data
disk on a LUN of a real tgtd, through each host's initiator, as ``lab up --hypervisor
qemu`` does) and live-migrates it back and forth ROUNDS times through the same
``Migrator`` the CLI uses. Per migration:

* total: the CLI's view, intent submitted -> guest running on the destination;
* transfer: libvirt's peer-to-peer migration (``migrateToURI3``) on the source agent;
* fence handover: the one etcd transaction passing the fences to the destination, run
  the moment libvirt pauses the guest on the source for the final copy;
* downtime seen by the guest: the largest gap between two consecutive heartbeat lines
  on its serial console (printed every 100 ms by the guest), minus those 100 ms.

Judged: every migration done, and the guest's heartbeat counter never restarted (it kept
running, it was not rebooted). The README states no time target. Exits 1 when a check
fails, 2 when QEMU cannot run here.

    python bench/real_migrate.py [--rounds 4] [--memory 128] [--storage files|iscsi]
                                 [--json PATH]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import on_qemu_lab, print_table, summary_ms, write_json
from verdict import Verdict

from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster
from gridtool.placement.shell import Migrator
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient
from tests.harness import qemu_testbed
from tests.harness.testbed import wait_until

HEARTBEAT_S = 0.1
_TRANSFER = re.compile(r"in ([0-9.]+) s")
_HANDOVER = re.compile(r"handed to \S+ in ([0-9.]+) ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--memory", type=int, default=128, help="guest memory (MiB)")
    parser.add_argument("--storage", choices=("files", "iscsi"), default="files",
                        help="the guest's disk: a file in the shared dir, or a LUN")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    return on_qemu_lab("real_migrate", run, args)


def run(base: Path, cluster: EtcdCluster, args: argparse.Namespace) -> int:
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix=f"/bench-{uuid.uuid4().hex[:8]}/",
                 ttl=5, resync_interval=5.0)
    store = EtcdStore(cfg)
    registry = Registry(store, cfg.keys)
    hosts = qemu_testbed.QemuHosts(base / "lab", cfg,
                                   luns=1 if args.storage == "iscsi" else 0)
    try:
        for name in ("hv1", "hv2"):
            hosts.add(name)
            hosts.start_agent(name)
        wait_until(lambda: len(registry.list_hosts()[0]) == 2, 30, what="two hosts")
        dom = hosts.define("hv1", "bench1", args.memory, lun=1 if hosts.target else 0)
        client = IntentClient(store, cfg.keys)
        began = time.monotonic()
        client.wait(client.submit("hv1", "start", dom.UUIDString(), dom.name()), 60)
        hosts.wait_ready("bench1", 180)  # a TCG boot took 60 s on a loaded 2-core machine
        boot_s = time.monotonic() - began
        rows, totals, transfers, handovers, downtimes = [], [], [], [], []
        where = "hv1"
        with qemu_testbed.HeartbeatWatcher(hosts.serial_log("bench1")) as beats:
            wait_until(lambda: beats.last > 5, 20, what="heartbeats")
            for n in range(1, args.rounds + 1):
                target = "hv2" if where == "hv1" else "hv1"
                rec = wait_until(lambda w=where: (registry.guests_of(w)[0]
                                                  .get(dom.UUIDString())), 20, what="record")
                since = time.monotonic()
                result = Migrator(store, cfg.keys).migrate(rec, target, "live")
                if not result.ok:
                    print(f"round {n}: {result.state.value}: {result.message}", file=sys.stderr)
                    break
                mark = beats.last
                wait_until(lambda m=mark: beats.last > m + 3, 10, what="heartbeats after")
                message = next(p.message for p in result.phases if p.phase == "migrate")
                transfer = float(_TRANSFER.search(message).group(1))  # type: ignore[union-attr]
                handover = float(_HANDOVER.search(message).group(1)) / 1000  # type: ignore[union-attr]
                down = max(0.0, beats.max_gap(since) - HEARTBEAT_S)
                totals.append(result.seconds)
                transfers.append(transfer)
                handovers.append(handover)
                downtimes.append(down)
                rows.append((n, f"{where}->{target}", result.seconds, transfer,
                             handover * 1000, down * 1000))
                where = target
            consecutive = beats.consecutive()
        print_table(f"live migration of a {args.memory} MiB TCG guest, disk on "
                    f"{args.storage} ({args.rounds} rounds; "
                    f"boot to ready marker {boot_s:.2f} s)", rows,
                    ["ROUND", "MOVE", "TOTAL s", "TRANSFER s", "HANDOVER ms", "DOWNTIME ms"])
        verdict = Verdict("live migration")
        verdict.check("migrations done", len(totals), "==", args.rounds)
        verdict.check("heartbeat counter never restarted", consecutive, "==", True)
        verdict.print()
        write_json("real_migrate", {
            "params": {"rounds": args.rounds, "memory_mib": args.memory,
                       "storage": args.storage,
                       "accel": hosts.image.accel},
            "boot_to_ready_s": round(boot_s, 3),
            **{name: summary_ms(values) for name, values in (
                ("total", totals), ("transfer", transfers), ("fence_handover", handovers),
                ("guest_downtime", downtimes)) if values},
            "heartbeat_consecutive": consecutive,
            **verdict.to_dict(),
        }, args.json_path)
        return verdict.exit_code()
    finally:
        hosts.close()
        store.delete_prefix(cfg.prefix)
        store.close()


if __name__ == "__main__":
    sys.exit(main())
