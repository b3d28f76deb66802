"""``gridtool host fence-agent set|show|remove|test``: the power fence agent of a host (the
standard fence-agent interface: fence_ipmilan, fence_redfish, ... or the lab's
fence_gridtool_lab), which the manager runs before it recovers the host's guests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from gridtool.cli.common.complete import HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import emit_json, json_option, outcome, table
from gridtool.errors import NotFound, OperationFailed, UsageError


@click.group("fence-agent")
def fence_agent() -> None:
    """The power fence agent of a host, run by the manager before recovering its guests.

    \b
    Example:
      gridtool host fence-agent set hv1 fence_ipmilan ip=10.0.0.11 username=admin \\
          passwd_file=/etc/gridtool/ipmi-hv1 lanplus=1
      gridtool host fence-agent test hv1
    """


def _name(host: str) -> str:
    from gridtool.registry.keys import validate_name

    try:
        return validate_name("host", host)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@fence_agent.command("set")
@click.argument("host", shell_complete=HOSTS)
@click.argument("agent")
@click.argument("params", nargs=-1, metavar="[KEY=VALUE]...")
@json_option
@pass_app
def set_agent(app: AppContext, host: str, agent: str, params: tuple[str, ...],
              as_json: bool) -> None:
    """Set HOST's fence AGENT (a name on the manager's PATH or in /usr/sbin, or a path)
    and its parameters, passed on the agent's stdin as key=value lines.

    Secrets are never stored in the registry: give passwd_file=PATH (a file on the
    manager's hosts; its first line is passed as password=) or password_script=PATH.
    password= itself is refused (exit 2).

    \b
    Example:
      gridtool host fence-agent set hv1 fence_ipmilan ip=10.0.0.11 username=admin \\
          passwd_file=/etc/gridtool/ipmi-hv1 lanplus=1
      gridtool host fence-agent set hv2 fence_gridtool_lab lab_dir=/tmp/gridtool-lab plug=hv2
    """
    conf = write_agent(app, host, agent, params)
    outcome(as_json, f"{host}: fence agent {agent} with {len(conf.params)} parameters",
            host=host, agent=agent, params=conf.params)


def write_agent(app: AppContext, host: str, agent: str, params: Sequence[str]) -> Any:
    """Check and store HOST's fence agent (UsageError, exit 2, for bad input)."""
    from gridtool.fencing.power import parse_params
    from gridtool.registry import fenceagents
    from gridtool.registry.intents import who

    if not agent.strip() or any(c in agent for c in "\r\n\0"):
        raise UsageError(f"bad fence agent {agent!r}")
    try:
        parsed = parse_params(params)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return fenceagents.write(app.store, app.config.keys, _name(host), agent, parsed, who())


def _row(conf: Any) -> dict[str, Any]:
    return {"host": conf.host, "agent": conf.agent, "params": conf.params, "by": conf.by,
            "since": conf.since}


@fence_agent.command("show")
@click.argument("host", required=False, shell_complete=HOSTS)
@json_option
@pass_app
def show_agent(app: AppContext, host: str | None, as_json: bool) -> None:
    """Show HOST's fence agent and parameters (every host's without HOST); exits 3 when
    HOST has none.

    \b
    Example:
      gridtool host fence-agent show hv1
      gridtool host fence-agent show --json
    """
    from gridtool.registry import fenceagents

    keys = app.config.keys
    if host is not None:
        conf = fenceagents.read(app.store, keys, _name(host))
        if conf is None:
            raise NotFound(f"host {host} has no fence agent")
        confs = [conf]
    else:
        confs = [c for _, c in sorted(fenceagents.read_all(app.store, keys).items())]
    if as_json:
        emit_json(fence_agents=[_row(c) for c in confs])
        return
    table("fence agents", ["HOST", "AGENT", "PARAMETERS", "SET BY"],
          [(c.host, c.agent, " ".join(f"{k}={v}" for k, v in sorted(c.params.items())),
            c.by) for c in confs])


@fence_agent.command("remove")
@click.argument("host", shell_complete=HOSTS)
@json_option
@pass_app
def remove_agent(app: AppContext, host: str, as_json: bool) -> None:
    """Forget HOST's fence agent: the manager then recovers its guests on the timed path
    (or by storage fencing). Exits 3 when it had none.

    \b
    Example:
      gridtool host fence-agent remove hv1
    """
    from gridtool.registry import fenceagents

    if not fenceagents.remove(app.store, app.config.keys, _name(host)):
        raise NotFound(f"host {host} has no fence agent")
    outcome(as_json, f"{host}: fence agent removed", host=host, removed=True)


@fence_agent.command("test")
@click.argument("host", shell_complete=HOSTS)
@json_option
@pass_app
def test_agent(app: AppContext, host: str, as_json: bool) -> None:
    """Run HOST's fence agent here with action=monitor, then action=status (never off).
    Exits 8 when it fails or hangs (killed after 20 s), 3 when HOST has none.

    \b
    Example:
      gridtool host fence-agent test hv1
    """
    from gridtool.fencing import agentrun
    from gridtool.registry import fenceagents

    conf = fenceagents.read(app.store, app.config.keys, _name(host))
    if conf is None:
        raise NotFound(f"host {host} has no fence agent")
    outcome = agentrun.check(conf)
    if as_json:
        emit_json(host=host, agent=conf.agent, ok=outcome.ok, message=outcome.message,
                  seconds=round(outcome.seconds, 3))
    if not outcome.ok:
        raise OperationFailed(f"{host}: fence agent {conf.agent}: {outcome.message}")
    if not as_json:
        click.echo(f"{host}: fence agent {conf.agent}: {outcome.message}", err=True)
