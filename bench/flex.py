"""Benchmark the flex policies: replay the sample traces under every policy, check targets.

Replays bench/traces/{steady,spike,diurnal,bursty}.csv through the seeded pool simulator
under the erlang, classic and hpa policies; prints SLA-violation seconds, worker-seconds
and scale reversals (with ratios to the classic baseline), then the targets with PASS/FAIL,
and writes everything, time series included, to bench/results/flex.json. Exit status 1 if
a target fails. Targets, for the erlang policy: on the 5x spike trace the first scale-up
within 3 samples of the step, and SLA-violation seconds <= 50 % of classic's at <= 110 %
of its worker-seconds; no scale reversal on the steady trace.

Setup: exponential service with 1 s mean, 5 s clone start-up, a sample every 10 s; the SLA
is an interval mean wait <= 0.5 s and the erlang policy targets that same mean wait. Each
run starts with the pool Erlang C sizes for the trace's initial rate (no cold start), and
every policy sees the same jobs (same seed).

    python bench/flex.py [--seed S --json PATH --plot out.png]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import print_table, write_json
from verdict import Verdict

from gridtool.pools.erlang import servers_needed
from gridtool.pools.flex import POLICY_NAMES, PolicyParams
from gridtool.pools.queuesim import SimConfig, SimResult, Trace, load_trace, plot, simulate_policies

TRACES = Path(__file__).resolve().parent / "traces"
TRACE_NAMES = ("steady", "spike", "diurnal", "bursty")
OURS, BASELINE = "erlang", "classic"

SERVICE_TIME = 1.0
SLA_WAIT = 0.5
PARAMS = PolicyParams(min_workers=1, max_workers=200, target_kind="mean_wait", target=SLA_WAIT)

#: The feeder reads the queue every second and reports a surge at once (``pool feed``'s
#: default ``--probe``); its period report stays every 10 s.
PROBE = 1.0

SPIKE_FACTOR = 4.0  # a rate step of at least this factor is "the spike"
SPIKE_SAMPLES = 3
SLA_RATIO = 0.5
COST_RATIO = 1.1

def sim_config(trace: Trace, seed: int) -> SimConfig:
    """The shared simulation setup, starting sized for the trace's initial load."""
    load = trace.rate_at(0.0) * SERVICE_TIME
    start = servers_needed(load, SERVICE_TIME, SLA_WAIT, kind="mean_wait") if load else 1
    return SimConfig(
        service_time=SERVICE_TIME,
        startup_delay=5.0,
        period=10.0,
        probe=PROBE,
        sla_wait=SLA_WAIT,
        initial_workers=start,
        seed=seed,
    )


def run(trace_dir: Path, seed: int) -> list[SimResult]:
    results: list[SimResult] = []
    for name in TRACE_NAMES:
        trace = load_trace(trace_dir / f"{name}.csv")
        results += simulate_policies(trace, PARAMS, POLICY_NAMES, sim_config(trace, seed))
    return results


def _pick(results: Sequence[SimResult], trace: str, policy: str) -> SimResult:
    return next(r for r in results if r.trace == trace and r.policy == policy)


def ratio(value: float, base: float) -> float:
    """``value / base``; 0 when both are 0, infinite when only the base is."""
    if base:
        return value / base
    return 0.0 if value == 0 else math.inf


def _ratio(value: float, base: float) -> str:
    share = ratio(value, base)
    return "-" if not base and not value else ("inf" if math.isinf(share) else f"{share:.0%}")


def targets(results: Sequence[SimResult], trace_dir: Path) -> Verdict:
    """The benchmark targets, evaluated for the erlang policy."""
    spike_at = load_trace(trace_dir / "spike.csv").step_ups(SPIKE_FACTOR)[0]
    spike, base = _pick(results, "spike", OURS), _pick(results, "spike", BASELINE)
    verdict = Verdict("flex policies (erlang)")
    verdict.check(f"spike: samples to first scale-up (step at t={spike_at:g}s)",
                  spike.samples_to_scale_up(spike_at), "<=", SPIKE_SAMPLES)
    verdict.check("spike: SLA-violation s, share of classic's",
                  ratio(spike.sla_violation_seconds, base.sla_violation_seconds), "<=",
                  SLA_RATIO)
    verdict.check("spike: worker-s, share of classic's",
                  ratio(spike.worker_seconds, base.worker_seconds), "<=", COST_RATIO)
    verdict.check("steady: reversals", _pick(results, "steady", OURS).reversals, "==", 0)
    return verdict


def result_rows(results: Sequence[SimResult]) -> list[tuple[object, ...]]:
    """One row per trace and policy; the "x classic" columns compare with the baseline."""
    rows: list[tuple[object, ...]] = []
    for r in results:
        base = _pick(results, r.trace, BASELINE)
        rows.append(
            (
                r.trace,
                r.policy,
                round(r.sla_violation_seconds),
                _ratio(r.sla_violation_seconds, base.sla_violation_seconds),
                round(r.worker_seconds),
                _ratio(r.worker_seconds, base.worker_seconds),
                r.reversals,
                r.scale_ups,
                r.scale_downs,
                f"{r.mean_wait:.3f}",
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=TRACES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="default bench/results/flex.json")
    parser.add_argument("--plot", type=Path, help="also draw workers and waits to this PNG")
    args = parser.parse_args(argv)

    results = run(args.traces, args.seed)
    checks = targets(results, args.traces)
    header = (
        "trace",
        "policy",
        "SLA-viol s",
        "x classic",
        "worker-s",
        "x classic",
        "reversals",
        "ups",
        "downs",
        "mean wait s",
    )
    print_table("flex policies on the sample traces", result_rows(results), header)
    checks.print()
    body = {
        "setup": {"params": PARAMS.to_dict(), "seed": args.seed, "sla_wait": SLA_WAIT},
        "results": [r.to_dict() for r in results],
        **checks.to_dict(),
    }
    write_json("flex", body, args.json)
    if args.plot:
        print(f"wrote {plot(results, args.plot)}")
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
