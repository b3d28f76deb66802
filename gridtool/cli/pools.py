"""``gridtool pool ...``: worker pools (the simulator of the flex policies for now)."""

from __future__ import annotations

from pathlib import Path

import click

from gridtool.cli.output import emit_json, table


@click.group()
def pool() -> None:
    """Worker pools that flex with measured load.

    \b
    Example:
      gridtool pool simulate --trace bench/traces/spike.csv --plot spike.png
    """


@pool.command("simulate")
@click.option("--trace", "trace_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Arrival trace: CSV 'start,end,rate' segments or 'time' arrivals, or JSON.")
@click.option("--policy", type=click.Choice(["erlang", "classic", "hpa", "all"]),
              default="all", show_default=True, help="Flex policy to replay.")
@click.option("--service-time", default=1.0, show_default=True,
              help="Mean service time of one request, seconds (exponential).")
@click.option("--startup-delay", default=5.0, show_default=True,
              help="Seconds from cloning a worker to it taking work.")
@click.option("--period", default=10.0, show_default=True, help="Sampling period, seconds.")
@click.option("--sla-wait", default=0.5, show_default=True,
              help="Target mean wait per interval, seconds (the SLA).")
@click.option("--min", "min_workers", default=1, show_default=True, help="Pool minimum.")
@click.option("--max", "max_workers", default=200, show_default=True, help="Pool maximum.")
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same run).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw arrivals, workers and wait over time to this PNG (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def simulate(trace_file: Path, policy: str, service_time: float, startup_delay: float,
             period: float, sla_wait: float, min_workers: int, max_workers: int, seed: int,
             plot_file: Path | None, as_json: bool) -> None:
    """Replay an arrival trace through a queue model under each flex policy.

    Prints, per policy: seconds with the mean wait over the SLA, worker-seconds (cost)
    and scale direction reversals.

    \b
    Example:
      gridtool pool simulate --trace bench/traces/bursty.csv --policy all --json
    """
    from gridtool.erlang import servers_needed
    from gridtool.errors import UsageError
    from gridtool.flex import POLICY_NAMES, PolicyParams
    from gridtool.queuesim import SimConfig, load_trace, plot, simulate_policies

    trace = load_trace(trace_file)
    try:
        params = PolicyParams(min_workers=min_workers, max_workers=max_workers,
                              target_kind="mean_wait", target=sla_wait)
        load = trace.rate_at(0.0) * service_time
        start = servers_needed(load, service_time, sla_wait, kind="mean_wait") if load else 1
        cfg = SimConfig(service_time=service_time, startup_delay=startup_delay, period=period,
                        sla_wait=sla_wait, initial_workers=params.clamp(start), seed=seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    names = POLICY_NAMES if policy == "all" else (policy,)
    results = simulate_policies(trace, params, names, cfg)
    if plot_file is not None:
        plot(results, plot_file)
    if as_json:
        emit_json(trace=str(trace_file), results=[r.summary() for r in results])
        return
    table(f"{trace_file.name}: {len(results[0].series)} samples", [
        "POLICY", "SLA-VIOLATION S", "WORKER-S", "REVERSALS", "SCALE UPS", "MEAN WAIT S"],
        [(r.policy, f"{r.sla_violation_seconds:.0f}", f"{r.worker_seconds:.0f}", r.reversals,
          r.scale_ups, f"{r.mean_wait:.2f}") for r in results])
    if plot_file is not None:
        click.echo(f"plot written to {plot_file}", err=True)
