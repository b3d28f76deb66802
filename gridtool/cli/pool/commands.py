"""``gridtool pool ...``: worker pools kept at size by the manager, their load reports, and
the simulator of the flex policies."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gridtool.cli.common.complete import POOLS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import (
    NOTHING,
    age,
    console,
    emit_json,
    json_option,
    outcome,
    seconds,
    section,
    styled_state,
    table,
    text,
    when,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from gridtool.pools.rules import HostInfo, MemberView, PoolSpec

F = TypeVar("F", bound="Callable[..., Any]")


def warm_options(default_mode: str | None) -> Callable[[F], F]:
    """``--warm N`` and ``--warm-mode`` (for ``create`` and ``set``)."""
    def decorate(func: F) -> F:
        func = click.option(
            "--warm-mode", type=click.Choice(["hibernate", "pause"]),
            help="How warm workers sleep: hibernate (managed save: memory to disk, no RAM "
                 "held) or pause (RAM held, fastest)"
                 + (f" [default: {default_mode}]" if default_mode else ""))(func)
        return click.option(
            "--warm", type=int, metavar="N",
            help="Workers kept booted and asleep beside the serving ones; a scale-up wakes "
                 "them first (at most --max).")(func)
    return decorate


@click.command("simulate")
@click.option("--trace", "trace_files", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Arrival trace: CSV 'start,end,rate' segments or 'time' arrivals, or JSON "
                   "(repeat for several traces).")
@click.option("--policy", type=click.Choice(["erlang", "classic", "hpa", "all"]),
              default="all", show_default=True, help="Flex policy to replay.")
@click.option("--service-time", default=1.0, show_default=True,
              help="Mean service time of one request, seconds (exponential).")
@click.option("--startup-delay", default=5.0, show_default=True,
              help="Seconds from cloning a worker to it taking work.")
@click.option("--period", default=10.0, show_default=True,
              help="Sampling period (and the SLA's accounting interval), seconds.")
@click.option("--probe", default=1.0, show_default=True,
              help="Seconds between the feeder's readings: a surge or a drop is reported "
                   "at once, as 'pool feed --probe' does (0: reports at the period only).")
@click.option("--sla-wait", default=0.5, show_default=True,
              help="Target mean wait per interval, seconds (the SLA).")
@click.option("--min", "min_workers", default=1, show_default=True, help="Pool minimum.")
@click.option("--max", "max_workers", default=200, show_default=True, help="Pool maximum.")
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same run).")
@click.option("--frontier", is_flag=True,
              help="Also sweep each policy's parameters: the cost/SLA frontiers and the "
                   "clairvoyant schedule, per trace.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the frontiers, one panel per trace, to this SVG or PNG (implies "
                   "--frontier; needs matplotlib).")
@click.option("--plot-series", "series_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw arrivals, workers and wait over time to this PNG (needs matplotlib).")
@json_option
def simulate(trace_files: tuple[Path, ...], policy: str, service_time: float,
             startup_delay: float, period: float, probe: float, sla_wait: float,
             min_workers: int,
             max_workers: int, seed: int, frontier: bool, plot_file: Path | None,
             series_file: Path | None, as_json: bool) -> None:
    """Replay arrival traces through a queue model under each flex policy.

    Prints, per trace and policy: seconds with the mean wait over the SLA, worker-seconds
    (cost) and scale direction reversals. With --frontier (or --plot), each policy's
    cost/SLA frontier over a sweep of its main parameters and the clairvoyant schedule
    (the fewest worker-seconds that keep every interval within the SLA in the queueing
    model); a sweep takes seconds per simulated hour.

    \b
    Example:
      gridtool pool simulate --trace bench/traces/bursty.csv --policy all --json
      gridtool pool simulate --trace bench/traces/spike.csv --trace bench/traces/steady.csv \\
          --plot frontiers.svg
    """
    from gridtool.errors import UsageError
    from gridtool.pools.erlang import servers_needed
    from gridtool.pools.flex import POLICY_NAMES, PolicyParams
    from gridtool.pools.frontier import frontier_rows, plot_frontiers, trace_frontier
    from gridtool.pools.queuesim import SimConfig, load_trace, plot, simulate_policies

    traces = [load_trace(path) for path in trace_files]
    try:
        params = PolicyParams(min_workers=min_workers, max_workers=max_workers,
                              target_kind="mean_wait", target=sla_wait,
                              startup_delay=startup_delay)
        configs = []
        for trace in traces:
            load = trace.rate_at(0.0) * service_time
            start = servers_needed(load, service_time, sla_wait, kind="mean_wait") if load else 1
            configs.append(SimConfig(service_time=service_time, startup_delay=startup_delay,
                                     period=period, probe=probe, interval=period,
                                     sla_wait=sla_wait,
                                     initial_workers=params.clamp(start), seed=seed))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    names = POLICY_NAMES if policy == "all" else (policy,)
    results = [r for trace, cfg in zip(traces, configs, strict=True)
               for r in simulate_policies(trace, params, names, cfg)]
    fronts = [trace_frontier(trace, params, cfg) for trace, cfg in
              zip(traces, configs, strict=True)] if frontier or plot_file else []
    if series_file is not None:
        plot(results, series_file)
    if plot_file is not None:
        plot_frontiers(fronts, plot_file)
    if as_json:
        emit_json(traces=[str(path) for path in trace_files],
                  results=[r.summary() for r in results],
                  frontiers=[f.to_dict() for f in fronts])
        return
    for trace in traces:
        mine = [r for r in results if r.trace == trace.name]
        table(f"{trace.name}: {len(mine[0].series)} samples", [
            "POLICY", "SLA-VIOLATION S", "WORKER-S", "REVERSALS", "SCALE UPS", "MEAN WAIT S"],
            [(r.policy, f"{r.sla_violation_seconds:.0f}", f"{r.worker_seconds:.0f}",
              r.reversals, r.scale_ups, f"{r.mean_wait:.2f}") for r in mine])
    for front in fronts:
        rows, header = frontier_rows(front)
        table(f"{front.trace}: frontiers", [h.upper() for h in header], rows)
    for path in (series_file, plot_file):
        if path is not None:
            click.echo(f"plot written to {path}", err=True)


@click.command("create")
@click.argument("name")
@click.option("--template", required=True, metavar="T", help="Template the workers clone.")
@click.option("--min", "min_size", required=True, type=int, metavar="A", help="Fewest workers.")
@click.option("--max", "max_size", required=True, type=int, metavar="B", help="Most workers.")
@click.option("--size", type=int, metavar="N",
              help="Workers to start with (default: --min); a flex pool then follows load.")
@click.option("--policy", type=click.Choice(["fixed", "flex"]), default="fixed",
              show_default=True, help="fixed: the size you set; flex: the Erlang C policy.")
@click.option("--target-wait", type=float, metavar="S",
              help="Flex: keep the mean wait under S seconds (default: P(wait) <= 0.2).")
@warm_options("hibernate")
@json_option
@pass_app
def create(app: AppContext, name: str, template: str, min_size: int, max_size: int,
           size: int | None, policy: str, target_wait: float | None, warm: int | None,
           warm_mode: str | None, as_json: bool) -> None:
    """Create a pool; the leading manager clones it to size at once (and boots its warm
    workers, then puts them to sleep).

    \b
    Example:
      gridtool pool create workers --template worker --min 8 --max 8
      gridtool pool create api --template api --min 2 --max 40 --policy flex --target-wait 0.5
      gridtool pool create jobs --template worker --min 1 --max 20 --warm 3 --warm-mode pause
    """
    from gridtool.errors import NotFound
    from gridtool.pools import shell as pools

    spec = pools.new_spec(name, template, min_size, max_size, desired=size, policy=policy,
                          target_wait=target_wait, warm=warm or 0,
                          warm_mode=warm_mode or "hibernate")
    if app.store.get(app.config.keys.template(template)) is None:
        raise NotFound(f"unknown template {template!r}")
    pools.create(app.store, app.config.keys, spec)
    if as_json:
        emit_json(pool=_spec_dict(spec))
        return
    warm_note = f", {spec.warm} warm ({spec.warm_mode})" if spec.warm else ""
    click.echo(f"pool {name} created: {spec.desired} worker(s) of {template} "
               f"({policy}, {min_size}..{max_size}){warm_note}", err=True)


@click.command("scale")
@click.argument("name", shell_complete=POOLS)
@click.argument("size", type=int)
@json_option
@pass_app
def scale(app: AppContext, name: str, size: int, as_json: bool) -> None:
    """Set a fixed pool's size (within its min and max); the manager follows.

    \b
    Example:
      gridtool pool scale workers 12
    """
    from gridtool.pools import shell as pools

    spec = pools.set_desired(app.store, app.config.keys, name, size)
    outcome(as_json, f"pool {name}: size {spec.desired}", pool=_spec_dict(spec))


@click.command("set")
@click.argument("name", shell_complete=POOLS)
@warm_options(None)
@json_option
@pass_app
def set_pool(app: AppContext, name: str, warm: int | None, warm_mode: str | None,
             as_json: bool) -> None:
    """Change a pool's warm set: how many asleep workers it keeps and how they sleep
    (the manager refills or trims it; a mode change applies to workers put to sleep
    from then on).

    \b
    Example:
      gridtool pool set jobs --warm 4 --warm-mode hibernate
    """
    from gridtool.errors import UsageError
    from gridtool.pools import shell as pools

    if warm is None and warm_mode is None:
        raise UsageError("nothing to set: give --warm and/or --warm-mode")
    spec = pools.set_warm(app.store, app.config.keys, name, warm, warm_mode)
    outcome(as_json, f"pool {name}: {spec.warm} warm ({spec.warm_mode})",
            pool=_spec_dict(spec))


@click.command("list")
@json_option
@pass_app
def list_pools(app: AppContext, as_json: bool) -> None:
    """List pools with their size and what the manager last saw.

    \b
    Example:
      gridtool pool list --json | jq '.pools[] | {name, desired, ready}'
    """
    from gridtool.pools import shell as pools

    rows = pools.overview(app.store, app.config.keys)
    if as_json:
        emit_json(pools=rows)
        return
    table(None, ["NAME", "TEMPLATE", "POLICY", "MIN", "MAX", "TARGET", "MEMBERS", "READY",
                 "WARM", "UPDATED"],
          [(r["name"], r["template"], r["policy"], r["min"], r["max"], r["target"],
            r["members"], "-" if r["ready"] is None else r["ready"], _warm_cell(r),
            age(r["updated"]) if r["updated"] else "never") for r in rows])


@click.command("show")
@click.argument("name", shell_complete=POOLS)
@json_option
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Show a pool: spec, members with host and state, and the flex policy's numbers.

    \b
    Example:
      gridtool pool show workers --json | jq .flex.offered_load
    """
    from dataclasses import asdict

    from gridtool.pools import shell as pools
    from gridtool.pools.rules import WARM_SLEEPING, engine_numbers, target_size

    keys = app.config.keys
    spec = pools.get(app.store, keys, name)
    st = pools.status(app.store, keys, name)
    hosts, views = pools.observe(app.store, keys, name)
    live, now = {h.name: h for h in hosts}, time.time()
    members = [{**asdict(v), "class": _member_class(v, live, now),
                "overflow": v.host in live and live[v.host].overflow,
                "sleep": v.step if v.warm == WARM_SLEEPING else ""}  # (its old key)
               for v in sorted(views, key=lambda v: v.name)]
    flex = pools.flex_numbers(app.store, keys, name)
    warm = _warm_doc(spec, members)
    status = {k: v for k, v in asdict(st).items() if k != "flex_state"} if st else None
    numbers = engine_numbers(spec, flex)
    doc = {"pool": _spec_dict(spec), "target": target_size(spec, st),
           "status": status, "members": members,
           "flex": flex, "numbers": numbers, "warm": warm}
    if as_json:
        emit_json(**doc)
        return
    rows = [("template", spec.template), ("policy", spec.policy),
            ("size", f"{doc['target']} (min {spec.min}, max {spec.max})"),
            ("members", f"{len(views)} ({sum(m['class'] == 'ready' for m in members)} ready)"),
            ("warm", f"{warm['asleep']} asleep, {warm['booting']} booting "
                     f"(keeps {spec.warm}, {spec.warm_mode}; not serving)"),
            ("created", when(spec.created_at, now)),
            ("last round", when(st.updated, now) if st else NOTHING),
            ("manager says", text(st.message if st else None)),
            ("last failure", f"{st.failure} ({when(st.failed_at, now)})"
             if st and st.failure else NOTHING)]
    if spec.policy == "flex":
        rows.append(("flex target", _flex_target(spec)))
    table(f"pool {name}", ["FIELD", "VALUE"], rows)
    section("members", ["NAME", "HOST", "STATE", "AS", "AGE"],
            [(m["name"], m["host"] + (" (overflow)" if m["overflow"] else ""),
              styled_state(m["state"]), m["class"], age(m["created_at"], now))
             for m in members])
    if numbers:
        _numbers_table("flex numbers", numbers, now,
                       ("P(wait)", f"{flex['predicted_wait_probability']:.3f}"))


def _numbers_table(title: str, numbers: dict[str, Any], now: float,
                   *extra: tuple[str, object]) -> None:
    """The numbers an outside policy engine reads, as a table (``extra`` rows last)."""
    last, utilization = numbers["last_decision"], numbers["utilization"]
    table(f"{title} ({last['from']}, {age(last['at'], now)})", ["NUMBER", "VALUE"], [
        ("arrival rate", f"{numbers['arrival_rate']:.3f} /s measured, "
                         f"{numbers['smoothed_rate']:.3f} /s smoothed"),
        ("mean service time", f"{numbers['service_time']:.3f} s"),
        ("offered load", f"{numbers['intensity']:.2f} Erlang"
                         + ("" if utilization is None else f" ({utilization:.2f} per worker)")),
        ("recommended", numbers["recommended"]),
        ("last decision", f"{last['direction']} {last['current']} -> {last['desired']} "
                          f"({last['policy']})"),
        *extra,
        ("reason", last["reason"])])


@click.command("numbers")
@click.argument("name", shell_complete=POOLS)
@json_option
@pass_app
def numbers_cmd(app: AppContext, name: str, as_json: bool) -> None:
    """The numbers an outside policy engine reads: measured and smoothed arrival rate,
    service time, intensity (Erlangs), recommended size and the last decision.

    Needs read access to the pool's spec, status and reports only, which the pool's
    reporter user has; an engine then sets the size of a fixed pool with `pool scale`
    (or gridtool.set_desired). Empty before any report or decision.

    \b
    Example:
      gridtool pool numbers api --json | jq .numbers.recommended
    """
    from gridtool.pools import shell as pools

    numbers = pools.engine_numbers(app.store, app.config.keys, name)
    if as_json:
        emit_json(pool=name, numbers=numbers)
        return
    if not numbers:
        click.echo(f"pool {name}: no reports or decisions yet", err=True)
        return
    _numbers_table(f"pool {name}: numbers", numbers, time.time())


@click.command("delete")
@click.argument("name", shell_complete=POOLS)
@click.option("--keep-guests", is_flag=True, help="Keep the clones as plain guests.")
@click.option("--timeout", "wait", default=60.0, show_default=True,
              help="Seconds to wait for each clone's removal.")
@json_option
@pass_app
def delete(app: AppContext, name: str, keep_guests: bool, wait: float, as_json: bool) -> None:
    """Delete a pool and (unless --keep-guests) stop and remove its clones.

    \b
    Example:
      gridtool pool delete workers
      gridtool pool delete workers --keep-guests
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gridtool.errors import OperationFailed
    from gridtool.pools import shell as pools

    keys = app.config.keys
    pools.get(app.store, keys, name)
    total = len(pools.members(app.store, keys, name))
    out = console(stderr=True)
    done: list[dict[str, str]] = []
    with Progress(TextColumn("removing clones"), BarColumn(), MofNCompleteColumn(),
                  console=out, transient=True,
                  disable=as_json or not out.is_terminal) as progress:
        task = progress.add_task("", total=total)

        def removed(guest: str, host: str, error: str) -> None:
            done.append({"guest": guest, "host": host, "error": error})
            if not as_json:
                mark = "[red]FAIL[/red]" if error else "[green]ok[/green]  "
                out.print(f"  {mark} {escape(guest)} on {escape(host)} {escape(error)}",
                          highlight=False)
            progress.advance(task)

        errors = pools.delete(app.store, app.config, name, keep_guests=keep_guests,
                              timeout=wait, on_removed=removed)
    if errors:
        raise OperationFailed(f"pool {name}: {len(errors)} clone(s) not removed "
                              f"(first: {errors[0]}); run 'gridtool pool delete' again")
    kept = f", {total} clone(s) kept" if keep_guests else f", {total} clone(s) removed"
    outcome(as_json, f"pool {name} deleted{kept}", deleted=name, clones=total,
            kept_guests=keep_guests, removed=done)


@click.command("report")
@click.argument("name", shell_complete=POOLS)
@click.option("--arrivals", required=True, type=int, help="Requests that arrived.")
@click.option("--completions", default=0, show_default=True, type=int,
              help="Requests finished.")
@click.option("--busy-seconds", type=float, help="Seconds workers spent serving.")
@click.option("--service-time", type=float, help="Mean service time, seconds (instead of "
              "--busy-seconds).")
@click.option("--queue-depth", default=0, show_default=True, type=int,
              help="Requests waiting at the end of the interval.")
@click.option("--interval", default=10.0, show_default=True, type=float,
              help="Seconds the report covers (ending now).")
@click.option("--source", help="Reporter name (default host:pid); reporters add up. A "
              "worker reporting as its own guest name is removed last while busy.")
@json_option
@pass_app
def report(app: AppContext, name: str, arrivals: int, completions: int,
           busy_seconds: float | None, service_time: float | None, queue_depth: int,
           interval: float, source: str | None, as_json: bool) -> None:
    """Report a pool's load over the last interval (read by the flex policy).

    \b
    Example:
      gridtool pool report api --arrivals 420 --completions 415 --busy-seconds 380 \\
          --queue-depth 3 --interval 10
    """
    from gridtool.pools import shell as pools

    sample = pools.report(app.store, app.config.keys, name, arrivals=arrivals,
                          completions=completions, busy_seconds=busy_seconds,
                          mean_service_time=service_time, queue_depth=queue_depth,
                          interval=interval, source=source)
    outcome(as_json, "", pool=name, sample=asdict(sample))  # silent for people (cron)


def _member_class(view: MemberView, live: dict[str, HostInfo], now: float) -> str:
    """ready/starting/broken/lost for a serving member (one being woken: starting until
    its wake is done); warm (asleep) or warming (booting before its sleep) for a warm
    one that is fine, else its broken or lost class; removing for one being removed."""
    from gridtool.pools.rules import (
        WARM_REMOVING,
        MemberClass,
        classify,
        classify_warm,
        is_serving,
    )

    if is_serving(view):
        return classify(view, live, now).value
    if view.warm == WARM_REMOVING:
        return "removing"
    found = classify_warm(view, live, now)
    if found in (MemberClass.BROKEN, MemberClass.LOST):
        return found.value
    return "warm" if view.warm == "asleep" else "warming"


def _warm_doc(spec: PoolSpec, members: list[dict[str, Any]]) -> dict[str, Any]:
    """``pool show --json``'s ``warm``: the asked size and mode, and the members' counts."""
    return {"size": spec.warm, "mode": spec.warm_mode,
            "asleep": sum(m["class"] == "warm" for m in members),
            "booting": sum(m["class"] == "warming" for m in members)}


def _warm_cell(row: dict[str, Any]) -> str:
    """``pool list``'s WARM: asleep/asked, or the asked size before the first round."""
    if not row["warm"]:
        return "-"
    asleep = "?" if row["warm_asleep"] is None else row["warm_asleep"]
    return f"{asleep}/{row['warm']} {row['warm_mode']}"
@click.command("feed")
@click.argument("name", shell_complete=POOLS)
@click.option("--from", "broker", required=True, metavar="URL",
              help="The broker: redis://[:PASSWORD@]HOST[:PORT][/DB] or "
              "amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST].")
@click.option("--queue", required=True, metavar="Q",
              help="The queue: a Redis list or stream key, or a RabbitMQ queue.")
@click.option("--group", metavar="G",
              help="A Redis stream's consumer group (default: its only one).")
@click.option("--period", default=10.0, show_default=True, type=float,
              help="Seconds between reports: the manager's pool period (flex sampling).")
@click.option("--probe", default=1.0, show_default=True, type=float,
              help="Seconds between readings; a surge or a drop (arrivals beyond or short "
              "of what the last report predicts) is reported at once (0: read once a "
              "period).")
@click.option("--once", is_flag=True,
              help="Read twice, one period apart, write that one report and exit (errors "
              "exit at once, with their code).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@json_option
@pass_app
def feed(app: AppContext, name: str, broker: str, queue: str, group: str | None,
         period: float, probe: float, once: bool, log_level: str, as_json: bool) -> None:
    """Feed a pool's load reports from a job queue, every period, until SIGTERM.

    Reads the queue's depth (and, for a Redis stream's consumer group, its arrivals and
    jobs in service) every --probe seconds and writes what changed as the pool's load
    report every period, and at once when the arrivals jump beyond what the last report
    predicts (the manager then runs the pool's round at once). A broker that
    does not answer or a queue that is gone writes no report (the pool keeps its size),
    is retried with backoff, logged, and shown by 'gridtool check' (POOL_FEED_STALE).
    Runs as the systemd service gridtool-pool-feed@POOL with the reporter credentials.

    \b
    Example:
      gridtool pool feed web --from redis://127.0.0.1:6379/0 --queue jobs --probe 1
      gridtool pool feed web --from amqp://feeder:secret@mq1/prod --queue jobs --once --json
    """
    import logging
    import signal
    import threading

    from gridtool import logsetup
    from gridtool.errors import UsageError
    from gridtool.pools import shell as pools
    from gridtool.pools.brokers import open_source
    from gridtool.pools.feed import parse_url
    from gridtool.pools.feeder import Feeder

    try:
        url = parse_url(broker)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not period > 0 or probe < 0 or not queue:
        raise UsageError("--period must be > 0, --probe >= 0 and --queue not empty")
    keys = app.config.keys
    pools.get(app.store, keys, name)
    source = open_source(url, queue, group)
    feeder = Feeder(app.store, keys, name, source, broker=url.redacted(), queue=queue,
                    period=period, probe=0.0 if once else probe)
    if once:  # its failure is the one line it prints, not a log event besides
        logging.getLogger("gridtool.pools.feeder").setLevel(logging.ERROR)
        try:
            for _ in range(2):
                first = feeder.prev is None
                wait = feeder.step()
                if feeder.error is not None:
                    raise feeder.error
                if first:
                    time.sleep(wait)
        finally:
            source.close()
        st = feeder.status
        outcome(as_json, f"pool {name}: depth {st.depth}, {st.reports} report(s)",
                feed=asdict(st), samples=[asdict(s) for s in pools.samples(
                    app.store, keys, name) if s.source == feeder.name][-1:])
        return
    logsetup.configure(log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    feeder.run(stop)


def _flex_target(spec: PoolSpec) -> str:
    """What a flex pool keeps under its target: 'mean wait <= 0.5 s', 'P(wait > 0 s) <= 0.2'."""
    params = spec.params()
    if params.target_kind == "mean_wait":
        return f"mean wait <= {seconds(params.target)}"
    return f"P(wait > {seconds(params.wait_threshold)}) <= {params.target:g}"


def _spec_dict(spec: PoolSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)
