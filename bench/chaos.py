"""Randomized faults, the long tier: "never two running", whatever fails.

A 3-member etcd cluster, N simulated hosts (each agent in its own network namespace,
with an emulated watchdog), two HA manager candidates and K HA fenced guests; then
rounds of random faults from the seed (network cut, SIGSTOP, SIGKILL of an agent, etcd
leader killed, etcd member restarted, leading manager killed) for N minutes. An
independent checker samples every host's libvirt. PASS is ``ChaosReport.ok``, the rule
of the CI tier: 0 overlaps, 0 agent or manager crashes, every round ends with every
guest running within the settle bound (2 TTL + 8 s), every round sampled at 15 samples/s
or more, at most 1 % unknown samples; each is printed with its number. Exits 1 on FAIL.
Needs root (ip netns). See tests/harness/chaos.py.

    python bench/chaos.py --minutes N [--seed S] [--hosts N] [--guests K] [--ttl T]
                          [--kinds cut,stop,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn

from benchlib import print_table, write_json
from verdict import word

from tests.harness.chaos import KINDS, ChaosSettings, run_chaos
from tests.harness.netns import unavailable_reason


def _interrupted(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt  # so that the harness tears everything down


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True,
                        help="how long to inject faults (setup and teardown come on top)")
    parser.add_argument("--seed", type=int, help="replay a run (default: random, printed)")
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--guests", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL, seconds (default 3)")
    parser.add_argument("--concurrent", type=float, default=0.25,
                        help="probability that a round adds a second, concurrent fault")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"fault kinds, comma separated (default all of {','.join(KINDS)})")
    parser.add_argument("--keep", action="store_true", help="keep the logs even on success")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(f"bench/chaos.py: cannot run: {reason}")
    signal.signal(signal.SIGTERM, _interrupted)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    settings = ChaosSettings(seed=args.seed, hosts=args.hosts, guests=args.guests,
                             ttl=args.ttl, seconds=args.minutes * 60,
                             concurrent=args.concurrent, kinds=kinds, keep_dir=args.keep)
    report = run_chaos(settings)

    rows = [(kind, report.faults.get(kind, 0)) for kind in kinds]
    rows += [("cut (link mode)", report.cut_modes.get("link", 0)),
             ("cut (carrier mode)", report.cut_modes.get("carrier", 0))]
    print_table(f"faults injected (seed {report.seed}, {report.hosts} hosts, "
                f"{report.guests} HA guests, TTL {report.ttl} s)", rows, ["fault", "count"])
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
        ("agent crashes (restarted)", report.agent_crashes),
        ("manager crashes (replaced)", report.manager_crashes),
        *report.counters.items(),
        ("setup s", report.setup_s),
        ("runtime s", report.runtime_s),
    ]
    print_table("outcome", results, ["what", "value"])
    if report.error:
        print(f"\nerror: {report.error}")
    for line in report.overlap_detail:
        print(line)
    print()
    print(report.verdict())
    # the pass rule is ChaosReport.criteria (shared with the CI tier), printed just above
    print(f"\nchaos: {word(report.ok)} (replay: --seed {report.seed})")
    write_json("chaos", {"settings": {"minutes": args.minutes, "kinds": list(kinds),
                                      "concurrent": args.concurrent},
                         **report.to_dict(), "pass": report.ok}, args.json_path)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
