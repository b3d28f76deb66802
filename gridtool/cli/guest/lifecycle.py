"""``gridtool guest start|stop|destroy|restart|set``: a guest's lifecycle, as intents to
its host's agent."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import click

from gridtool.cli.common.complete import GUESTS, HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.intents import intent_doc, run_intent
from gridtool.cli.common.output import emit_json, json_option, outcome
from gridtool.cli.common.verdicts import no_host_reason
from gridtool.errors import Conflict, NotFound, UsageError
from gridtool.registry.model import ACTIVE_STATES, GuestRecord

if TYPE_CHECKING:
    from gridtool.registry.records import GuestSettings

WAIT = click.option("--wait/--no-wait", default=True, show_default=True,
                    help="Follow the operation to its outcome.")


ON = click.option("--on", "on_host", shell_complete=HOSTS, metavar="HOST",
                  help="The host to act on.")


def _live_records(app: AppContext, name: str) -> tuple[list[GuestRecord], set[str]]:
    records = app.registry.find_guest(name)
    hosts, _ = app.registry.list_hosts()
    live = {h.name for h in hosts}
    return records, live


def _target(app: AppContext, name: str, on_host: str | None, running: bool) -> GuestRecord:
    """The record (host) an intent goes to: where it runs, or where it should start."""
    records, live = _live_records(app, name)
    if on_host:
        if on_host not in live:
            raise NotFound(f"unknown host {on_host!r} (not in the registry: no live agent)")
        chosen = [r for r in records if r.host == on_host]
        if chosen:
            return chosen[0]
        if running:
            raise Conflict(f"guest {name} is not on {on_host}")
        # Starting elsewhere: the agent defines it from the registry's copy of its XML.
        return replace(records[0], host=on_host, state="shutoff")
    alive = [r for r in records if r.host in live]
    if not alive:
        hosts = ", ".join(sorted({r.host for r in records}))
        raise Conflict(f"guest {name} is only on hosts that are gone ({hosts}); "
                       "use --on HOST to start it elsewhere")
    active = [r for r in alive if r.state in ACTIVE_STATES]
    if len(active) > 1:
        raise Conflict(f"guest {name} is active on {', '.join(r.host for r in active)}: "
                       "say which with --on HOST")
    if active:
        return active[0]
    if running:
        return alive[0]
    return _placed(app, alive)


def _placed(app: AppContext, defined: list[GuestRecord]) -> GuestRecord:
    """Where a stopped guest starts without --on: the allocator's choice among the live
    hosts that define it (``defined``: its records there)."""
    from gridtool.placement.rules import place
    from gridtool.placement.shell import read_fleet

    fleet = read_fleet(app.store, app.config.keys)
    on = {r.host: r for r in defined}
    needs = fleet.needs(defined[0])
    placement = place(needs, [h for h in fleet.hosts if h.name in on])
    if placement.host is None:
        raise Conflict(no_host_reason(defined[0].name, needs, placement)
                       + " (--on HOST starts it on another host)")
    return on[placement.host]


def _act(app: AppContext, rec: GuestRecord, action: str, wait: bool, timeout: float,
         as_json: bool, params: dict | None = None) -> None:
    """Record the desired state, send ``action`` to ``rec.host`` and report the intent
    (with --json: the guest, its host and the intent, as submitted or finished)."""
    from gridtool.registry import settings

    settings.set_desired_after(app.store, app.config.keys, rec.uuid, rec.name, action)
    done = run_intent(app, rec, action, wait, timeout, params, quiet=as_json)
    if as_json:
        emit_json(guest=rec.name, uuid=rec.uuid, host=rec.host, action=action,
                  intent=intent_doc(done))


@click.command("start")
@click.argument("name", shell_complete=GUESTS)
@ON
@WAIT
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait.")
@json_option
@pass_app
def start(app: AppContext, name: str, on_host: str | None, wait: bool, timeout: float,
          as_json: bool) -> None:
    """Start a guest; a fenced guest takes its fences first (one holder, ever).

    Without --on, placement chooses among the live hosts that define it (exit 7 with
    each host's reason when none passes). Fails (exit 8) when another host holds one of
    its fences, naming that host.

    \b
    Example:
      gridtool guest start web1 --on hv2
    """
    rec = _target(app, name, on_host, running=False)
    _act(app, rec, "start", wait, timeout, as_json)


@click.command("stop")
@click.argument("name", shell_complete=GUESTS)
@ON
@WAIT
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for a clean shutdown before destroying it.")
@json_option
@pass_app
def stop(app: AppContext, name: str, on_host: str | None, wait: bool, timeout: float,
         as_json: bool) -> None:
    """Shut a guest down gracefully (destroy it after --timeout); release its fences.

    \b
    Example:
      gridtool guest stop web1 --timeout 120
    """
    rec = _target(app, name, on_host, running=True)
    _act(app, rec, "stop", wait, timeout + 30, as_json, {"timeout": timeout})


@click.command("destroy")
@click.argument("name", shell_complete=GUESTS)
@ON
@WAIT
@json_option
@pass_app
def destroy(app: AppContext, name: str, on_host: str | None, wait: bool,
            as_json: bool) -> None:
    """Power a guest off at once (like pulling the plug); release its fences.

    \b
    Example:
      gridtool guest destroy web1
    """
    rec = _target(app, name, on_host, running=True)
    _act(app, rec, "destroy", wait, 60.0, as_json)


@click.command("restart")
@click.argument("name", shell_complete=GUESTS)
@ON
@WAIT
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for a clean shutdown before destroying it.")
@json_option
@pass_app
def restart(app: AppContext, name: str, on_host: str | None, wait: bool,
            timeout: float, as_json: bool) -> None:
    """Stop and start a guest on the same host.

    \b
    Example:
      gridtool guest restart web1
    """
    rec = _target(app, name, on_host, running=True)
    _act(app, rec, "restart", wait, timeout + 60, as_json, {"timeout": timeout})


@click.command("set")
@click.argument("name", shell_complete=GUESTS)
@click.option("--ha", type=click.Choice(["on", "off"]), help="HA (restart elsewhere when its "
              "host dies) or pinned (moved only after 'host confirm-dead').")
@click.option("--anti-affinity", metavar="GROUP",
              help="No two guests of GROUP on one host ('' to clear).")
@click.option("--force", is_flag=True, help="With --ha on: even while the guest runs on a "
              "host with no working watchdog that cannot be fenced (it could run twice).")
@json_option
@pass_app
def set_guest(app: AppContext, name: str, ha: str | None, anti_affinity: str | None,
              force: bool, as_json: bool) -> None:
    """Change a guest's settings.

    An HA guest must run on a protected host: one whose agent pets a working watchdog
    (or that can be fenced), so that a hung agent cannot leave the guest running while
    the manager restarts it elsewhere. '--ha on' refuses a guest running on any other
    host unless --force; the manager never restarts an HA guest on one.

    \b
    Example:
      gridtool guest set db1 --ha on
    """
    from gridtool.registry import settings

    if ha is None and anti_affinity is None:
        raise UsageError("nothing to set: give --ha and/or --anti-affinity")
    records = app.registry.find_guest(name)
    rec = records[0]
    if ha == "on" and not rec.fenced:
        raise Conflict(f"guest {rec.name} has no disk on shared storage: HA needs one "
                       "(another host must be able to reach its disks)")
    if ha == "on" and not force:
        _refuse_unprotected(app, records)

    def change(s: GuestSettings) -> GuestSettings:
        if ha is not None:
            s = replace(s, ha=ha == "on")
        if anti_affinity is not None:
            s = replace(s, anti_affinity=anti_affinity)
        return s

    new = settings.update(app.store, app.config.keys, rec.uuid, rec.name, change)
    live = {h.name for h in app.registry.list_hosts()[0]}
    # re-put its fences as HA/pinned
    refreshed = [run_intent(app, r, "refresh", True, 30.0, quiet=as_json) for r in records
                 if r.state in ACTIVE_STATES and r.host in live and r.fenced]
    outcome(as_json, f"{rec.name}: ha={'on' if new.ha else 'off'} desired={new.desired}"
            + (f" anti-affinity={new.anti_affinity}" if new.anti_affinity else ""),
            guest=rec.name, uuid=rec.uuid, ha=new.ha, desired=new.desired,
            anti_affinity=new.anti_affinity, intents=[intent_doc(i) for i in refreshed])


def _refuse_unprotected(app: AppContext, records: list[GuestRecord]) -> None:
    """Conflict when the guest is active on a live host that is not protected (no working
    watchdog, no fence agent)."""
    from gridtool.placement.rules import unprotected_reason
    from gridtool.registry import fenceagents

    powered = frozenset(fenceagents.read_all(app.store, app.config.keys))
    hosts = {h.name: fenceagents.with_fencing(h, powered) for h in app.registry.list_hosts()[0]}
    for rec in records:
        host = hosts.get(rec.host)
        if rec.state in ACTIVE_STATES and host is not None and not host.protected:
            raise Conflict(f"guest {rec.name} runs on {rec.host}: "
                           f"{unprotected_reason(rec.host)} (--force to make it HA anyway)")


#: Added to ``gridtool guest`` by the CLI's entry point.
