"""Randomized faults, the long tier: "never two running", whatever fails.

A 3-member etcd cluster, N simulated hosts (each agent in its own network namespace,
with an emulated watchdog), two HA manager candidates and K HA fenced guests (2 per host
by default); then rounds of random faults from the seed (network cut, SIGSTOP, SIGKILL
or SIGTERM of an agent, etcd leader killed or stalled, etcd member restarted, leading
manager killed, a second agent with a host's name, a paused intruder whose fence is
freed, a host cut off while its self-fence's destroys are slow or fail first, a start
delayed past the lease check) for N minutes. An independent checker samples every host's
libvirt. Printed: the faults per kind with their overlap samples, lost guests, wrong
resets and failed checks, then the outcome and ``ChaosReport``'s criteria (the CI tier's
rule: 0 overlaps, 0 agent or manager crashes, 0 failed fault checks, every round ends
with every guest running within the settle bound (2 TTL + 8 s), every round sampled at
15 samples/s or more, at most 1 % unknown samples). The verdict (bench/verdict.py,
:func:`judge`) fails on any overlap, any lost guest, any failed fault check, or that
rule failing; exit 1.
Needs root (ip netns). See tests/harness/chaos.py.

    python bench/chaos.py --minutes N [--seed S] [--hosts N] [--guests-per-host G |
                          --guests K] [--ttl T] [--kinds cut,stop,...]
                          [--long-etcd-stalls] [--json PATH]
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn

from benchlib import print_table, write_json
from verdict import Verdict

from tests.harness.chaos import KINDS, ChaosReport, ChaosSettings, KindStats, run_chaos
from tests.harness.netns import unavailable_reason


def judge(report: ChaosReport) -> Verdict:
    """The run's targets (pure): no overlap, no lost guest, no failed fault check, and
    the harness's pass rule (``ChaosReport.ok``, its criteria printed above it)."""
    verdict = Verdict("chaos")
    verdict.check("overlap samples (a guest on two hosts)", report.overlaps, "==", 0)
    verdict.check("lost guests (not running at their round's settle bound)",
                  report.lost_guests if report.rounds else None, "==", 0)
    verdict.check("failed fault checks", len(report.failures), "==", 0)
    verdict.check("ChaosReport.ok (every criterion)", report.ok, "==", True)
    return verdict


def _interrupted(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt  # so that the harness tears everything down


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True,
                        help="how long to inject faults (setup and teardown come on top)")
    parser.add_argument("--seed", type=int, help="replay a run (default: random, printed)")
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--guests-per-host", type=int, default=2,
                        help="HA guests per host (default 2; 0: use --guests)")
    parser.add_argument("--guests", type=int, default=3,
                        help="HA guests in all, with --guests-per-host 0")
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL, seconds (default 3)")
    parser.add_argument("--concurrent", type=float, default=0.25,
                        help="probability that a round adds a second, concurrent fault")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"fault kinds, comma separated (default all of {','.join(KINDS)})")
    parser.add_argument("--long-etcd-stalls", action="store_true",
                        help="stall the etcd leader past lease expiry even on an etcd that "
                             "revokes leases early (a known double run)")
    parser.add_argument("--keep", action="store_true", help="keep the logs even on success")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(f"bench/chaos.py: cannot run: {reason}")
    signal.signal(signal.SIGTERM, _interrupted)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    settings = ChaosSettings(seed=args.seed, hosts=args.hosts, guests=args.guests,
                             guests_per_host=args.guests_per_host or None,
                             ttl=args.ttl, seconds=args.minutes * 60,
                             concurrent=args.concurrent, kinds=kinds, keep_dir=args.keep,
                             long_etcd_stalls=args.long_etcd_stalls)
    report = run_chaos(settings)

    stats = {k.kind: k for k in report.per_kind()}
    rows = [stats.get(kind, KindStats(kind, 0, 0, 0, 0, 0, 0)).row() for kind in kinds]
    print_table(f"faults per kind (seed {report.seed}, {report.hosts} hosts, "
                f"{report.guests} HA guests, TTL {report.ttl} s; a round with two faults "
                "counts for both)", rows, KindStats.HEADER)
    print_table("cut modes", [("link", report.cut_modes.get("link", 0)),
                              ("carrier", report.cut_modes.get("carrier", 0))],
                ["mode", "count"])
    settles = sorted(r.settle_s for r in report.rounds)
    results = [
        ("rounds", len(report.rounds)),
        ("overlap samples (must be 0)", report.overlaps),
        ("overlap seconds (must be 0)", report.overlap_seconds),
        ("checker samples", report.samples),
        ("checker samples/s, whole run", report.sample_rate),
        ("checker samples/s, slowest round",
         round(report.slowest_round.sample_rate, 1) if report.slowest_round else 0.0),
        ("checker longest gap between samples, s", report.max_gap_s),
        ("unknown samples (host unreadable)", f"{report.unknown_samples} "
                                              f"({report.unknown_fraction:.2%})"),
        ("rounds ending with every guest running", f"{report.rounds_all_running}/"
                                                   f"{len(report.rounds)}"),
        ("guest-rounds running at round end", f"{report.running_fraction:.1%}"),
        ("settle after heal, median s", settles[len(settles) // 2] if settles else 0.0),
        ("settle after heal, max s", settles[-1] if settles else 0.0),
        ("settle bound, s", report.settle_bound_s),
        ("lost guests (not running at their round's settle bound)", report.lost_guests),
        ("wrong resets (a healthy agent's host reset)", report.wrong_resets),
        ("failed fault checks", len(report.failures)),
        ("faults skipped (not set up as planned)",
         ", ".join(f"{k} {n}" for k, n in sorted(report.skipped.items())) or 0),
        ("agent crashes (restarted)", report.agent_crashes),
        ("manager crashes (replaced)", report.manager_crashes),
        *report.counters.items(),
        ("setup s", report.setup_s),
        ("runtime s", report.runtime_s),
    ]
    print_table("outcome", results, ["what", "value"])
    if report.error:
        print(f"\nerror: {report.error}")
    for line in [*report.overlap_detail, *report.failures]:
        print(line)
    print()
    print(report.verdict())  # ChaosReport.criteria, shared with the CI tier
    verdict = judge(report)
    verdict.print()
    print(f"replay: --seed {report.seed}")
    write_json("chaos", {"settings": {"minutes": args.minutes, "kinds": list(kinds),
                                      "concurrent": args.concurrent,
                                      "long_etcd_stalls": args.long_etcd_stalls},
                         **report.to_dict(), **verdict.to_dict()}, args.json_path)
    sys.exit(verdict.exit_code())


if __name__ == "__main__":
    main()
