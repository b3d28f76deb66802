"""HA failover and faults of real QEMU guests (TCG) on an iSCSI LUN, judged by the storage
checker: ``bench/failover.py``'s question on real guests and real shared storage.

Each round is a fresh lab (``tests/harness/qemu_failover.py``): ``--hosts`` (2) QEMU
hosts, a real tgtd, one initiator per host, the HA guest ``ha-db`` on hv1 writing a record
every 100 ms to its data disk, LUN 1; a manager with the chosen fence: ``storage``
(PREEMPT of hv1's PR key, no fence agent), ``power`` (the lab fence agent) or ``timed``
(neither). Phases are seconds after the fault: suspected (with ``--suspect-after``),
detected (hv1's host record gone), fenced (the manager recorded the fence), the old copy
stopped, running elsewhere, the new boot writing. The checker then reads the LUN through
the target: **writes after the fence** (records of the old boot above its sequence number
in a read taken right after the fence was recorded: must be 0), the checker's stale
records (the old boot writing after the new one began: must be 0), and double-run samples
(libvirt on every host; 0 required where no storage fence stops the old copy's writes).

Failover (default): faults ``power_off`` (hv1's agent, initiator and QEMU SIGKILLed) and
``partition`` (hv1's agent cut from etcd, agent and guest alive, the storage path up).

``--faults``: issue 13 item 8, one round each, every verdict printed: power_off,
partition, agent_stop (hv1's agent SIGSTOPped for ``--stop-s`` 30 s, its watchdog off),
leader_stop (the etcd leader of a 3-member cluster SIGSTOPped for ``--leader-stop-s``,
past the election timeout, then continued), migrate_kill (the destination libvirtd
SIGKILLed mid live migration, then started again).

    python bench/failover_qemu.py [--rounds 3] [--ttl 10] [--fence storage|power|timed]
                                  [--suspect-after S] [--faults] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
from benchlib import on_qemu_lab, phase_split, print_table, write_json
from verdict import Verdict

from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster
from gridtool.placement.shell import Migrator
from gridtool.registry.fleet import Registry
from tests.harness.qemu_failover import FENCES, FailoverLab, Watch, ha_guest_lab
from tests.harness.testbed import wait_until

FAILOVER_CASES = ("power_off", "partition")
FAULT_CASES = ("power_off", "partition", "agent_stop", "leader_stop", "migrate_kill")
PHASES = ("suspected", "detected", "fenced", "old_stopped", "running_elsewhere",
          "new_boot_writing", "phase_detect_s", "phase_fence_s", "phase_restart_s")


def power_off(lab: FailoverLab) -> None:
    lab.hosts.power_off("hv1")


def partition(lab: FailoverLab) -> None:
    lab.proxy.cut()


def follow(lab: FailoverLab, case: str, args: argparse.Namespace,
           cluster: EtcdCluster) -> Watch:
    """Inject fault ``case`` into the lab and follow it (:meth:`FailoverLab.watch`)."""
    settle = 2.0  # a fenced copy that still ran keeps trying to write meanwhile
    if case == "power_off":
        return lab.watch(lambda: power_off(lab), settle=settle)
    if case == "partition":
        return lab.watch(lambda: partition(lab), settle=settle)
    if case == "agent_stop":
        return agent_stop(lab, args.stop_s, settle)
    if case == "leader_stop":
        return leader_stop(lab, cluster, args.leader_stop_s)
    if case == "migrate_kill":
        return migrate_kill(lab)
    raise ValueError(case)


def agent_stop(lab: FailoverLab, hold: float, settle: float) -> Watch:
    """hv1's agent SIGSTOPped for ``hold`` seconds (no watchdog), then continued: it finds
    its lease gone and destroys its copy; until then only a fence stops that copy."""
    pid = lab.hosts.agents["hv1"].pid
    timer = threading.Timer(hold, os.kill, (pid, signal.SIGCONT))
    try:
        return lab.watch(lambda: (os.kill(pid, signal.SIGSTOP), timer.start()), settle=settle,
                         timeout=hold + 4 * lab.cfg.ttl)
    finally:
        timer.cancel()
        os.kill(pid, signal.SIGCONT)


def leader_stop(lab: FailoverLab, cluster: EtcdCluster, hold: float) -> Watch:
    """The etcd leader SIGSTOPped for ``hold`` seconds, then continued; watched for
    2 TTL + ``hold``: nothing need move, but whatever does must be safe."""
    leader = wait_until(lambda: next((m for m in cluster.members for st in lab.store.status()
                                      if st.leader and st.endpoint == m.endpoint), None),
                        10, what="the etcd leader")
    timer = threading.Timer(hold, os.kill, (leader.pid, signal.SIGCONT))
    try:
        return without_old_stop(lab.watch(
            lambda: (os.kill(leader.pid, signal.SIGSTOP), timer.start()),
            old_gone=lambda: True, timeout=hold + 2 * lab.cfg.ttl, recovery=False))
    finally:
        timer.cancel()
        os.kill(leader.pid, signal.SIGCONT)


def migrate_kill(lab: FailoverLab) -> Watch:
    """A live migration hv1 -> hv2 whose destination libvirtd is SIGKILLed once the
    incoming guest exists there, then started again; watched for 2 TTL."""
    registry = Registry(lab.store, lab.cfg.keys)
    rec = wait_until(lambda: registry.guests_of("hv1")[0].get(lab.guest), 20, what="record")
    result: list[Any] = []
    host = lab.hosts.hosts["hv2"]

    def fault() -> None:
        thread = threading.Thread(target=lambda: result.append(
            Migrator(lab.store, lab.cfg.keys).migrate(rec, "hv2", "live")), daemon=True)
        thread.start()
        wait_until(lambda: incoming(lab), 60, what="the incoming guest on hv2")
        os.kill(host.libvirtd_pid, signal.SIGKILL)
        thread.join(120)
        lab.hosts.restart_libvirtd("hv2")

    seen = without_old_stop(lab.watch(fault, old_gone=lambda: True, settle=5.0,
                                      timeout=2 * lab.cfg.ttl, recovery=False))
    seen.notes["migration"] = result[0].state.value if result else "hung"
    seen.notes["running_on"] = ",".join(h for h in lab.hosts.hosts if lab.running(h))
    return seen


def without_old_stop(seen: Watch) -> Watch:
    """A fault that need not stop the old copy: its ``old_stopped`` mark means nothing."""
    seen.marks.pop("old_stopped", None)
    return seen


def incoming(lab: FailoverLab) -> bool:
    """The migration's incoming QEMU runs on hv2 (the guest is defined there already)."""
    try:
        return bool(lab.hosts.conn("hv2").lookupByUUIDString(lab.guest).isActive())
    except libvirt.libvirtError:
        return False


def run_round(base: Path, cluster: EtcdCluster, args: argparse.Namespace, case: str,
              n: int) -> dict:
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix=f"/bench-{case}-{n}/")
    with ha_guest_lab(base / f"{case}-{n}", cfg, args.fence, args.ttl,
                      args.suspect_after, hosts=args.hosts,
                      watchdog_hv1=case != "agent_stop") as lab:
        seen = follow(lab, case, args, cluster)
    out = {**seen.to_dict(), **phase_split(seen.marks)}
    print(f"{case} round {n}: " + " ".join(f"{k}={v}" for k, v in out.items()
                                            if k not in ("old_boot", "new_boot")),
          file=sys.stderr, flush=True)
    return out


def judge(results: dict[str, list[dict]], faults: bool) -> Verdict:
    """Every round: the checker passes, no write after the fence, no stale record of the
    old boot; no double-run sample unless the round's host was storage-fenced (the old
    copy may run on, its writes refused); every failover round recovered the guest."""
    verdict = Verdict("QEMU failover on iSCSI" + (": faults" if faults else ""))
    for case, runs in results.items():
        verdict.check(f"{case}: storage checker passes, all rounds",
                      all(r["check_ok"] for r in runs), "==", True)
        verdict.check(f"{case}: writes after the fence by the old boot",
                      sum(r["writes_after_fence"] or 0 for r in runs), "==", 0)
        verdict.check(f"{case}: double-run samples, rounds without a storage fence",
                      sum(r["overlaps"] for r in runs if r.get("fence") != "storage"), "==", 0)
        if case in FAILOVER_CASES:
            verdict.check(f"{case}: rounds running elsewhere",
                          sum("running_elsewhere" in r for r in runs), "==", len(runs))
    return verdict


def table(results: dict[str, list[dict]]) -> list[tuple]:
    rows: list[tuple] = []
    for case, runs in results.items():
        for phase in PHASES:
            values = [r[phase] for r in runs if isinstance(r.get(phase), float | int)]
            if values:
                rows.append((case, phase, sum(values) / len(values), max(values)))
        rows.append((case, "writes after fence", sum(r["writes_after_fence"] or 0 for r in runs),
                     max((r["writes_after_fence"] or 0 for r in runs), default=0)))
        rows.append((case, "overlap (s)", max(r["overlap_s"] for r in runs),
                     max(r["overlap_s"] for r in runs)))
    return rows


def run(base: Path, cluster: EtcdCluster, args: argparse.Namespace) -> int:
    cases = [c for c in (FAULT_CASES if args.faults else FAILOVER_CASES)
             if not args.only or c in args.only]
    results: dict[str, list[dict]] = {case: [] for case in cases}
    rounds = 1 if args.faults else args.rounds
    for case in cases:
        for n in range(1, rounds + 1):
            results[case].append(run_round(base, cluster, args, case, n))
    detection = (f"suspect after {args.suspect_after:g} s" if args.suspect_after is not None
                 else "lease expiry")
    print_table(f"QEMU HA failover on an iSCSI LUN, TTL {args.ttl} s, fence {args.fence}, "
                f"{detection}, {rounds} round(s) per case (seconds after the fault)",
                table(results), ["case", "phase", "mean", "max"])
    verdict = judge(results, args.faults)
    verdict.print()
    name = ("faults_qemu" if args.faults else "failover_qemu") + f"-{args.fence}" + (
        "-suspect" if args.suspect_after is not None else "")
    write_json(name, {"ttl": args.ttl, "fence": args.fence,
                      "suspect_after": args.suspect_after, "results": results,
                      **verdict.to_dict()}, args.json_path)
    return verdict.exit_code()


def main(argv: list[str] | None = None, runner: Callable[..., int] = on_qemu_lab) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=2, help="QEMU hosts per round (>= 2)")
    parser.add_argument("--fence", choices=FENCES, default="storage",
                        help="storage: PR preempt; power: the lab fence agent; timed: none")
    parser.add_argument("--suspect-after", type=float, default=None)
    parser.add_argument("--faults", action="store_true", help="issue 13 item 8's faults")
    parser.add_argument("--only", action="append", choices=FAULT_CASES,
                        help="run only this case (repeatable)")
    parser.add_argument("--stop-s", type=float, default=30.0, help="agent_stop's hold")
    parser.add_argument("--leader-stop-s", type=float, default=5.0,
                        help="leader_stop's hold (election timeout: 0.5 s)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    return runner("failover_qemu", run, args, members=3 if args.faults else 1)


if __name__ == "__main__":
    raise SystemExit(main())
