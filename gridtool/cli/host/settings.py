"""``gridtool host set``, and the same settings at ``host add``: labels, overflow,
manager candidate, watchdog, fence agent, kept in the registry (``hostconf/<host>``,
``fenceagents/<host>``) where no ``host add`` overwrites them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import emit_json, json_option, table, warn
from gridtool.errors import UsageError


def setting_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The host-setting options ``host add`` and ``host set`` share."""
    options = [
        click.option("--label", "labels", multiple=True, metavar="LABEL",
                     help="The host's labels, e.g. ssd or rack=3 (repeatable; replaces "
                          "agent.conf's labels)."),
        click.option("--no-labels", is_flag=True, help="No labels (besides overflow)."),
        click.option("--overflow/--no-overflow", default=None,
                     help="Use the host only when no dedicated host fits (the overflow "
                          "label)."),
        click.option("--manager-candidate/--no-manager-candidate", "manager", default=None,
                     help="The agent runs a candidate of the HA manager."),
        click.option("--watchdog", metavar="DEVICE",
                     help="The watchdog device the agent pets, e.g. /dev/watchdog."),
        click.option("--no-watchdog", is_flag=True, help="No watchdog."),
        click.option("--watchdog-timeout", type=float, metavar="SECONDS",
                     help="The watchdog's timeout (1-3600; the lease bounds it)."),
        click.option("--fence-agent", metavar="AGENT",
                     help="The host's power fence agent (as 'host fence-agent set')."),
        click.option("--fence-param", "fence_params", multiple=True, metavar="KEY=VALUE",
                     help="A parameter of --fence-agent (repeatable)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def setting_changes(labels: tuple[str, ...], no_labels: bool, overflow: bool | None,
                    manager: bool | None, watchdog: str | None, no_watchdog: bool,
                    watchdog_timeout: float | None,
                    unset: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings the options change (None: back to agent.conf's); UsageError (exit 2)
    for contradicting or bad values."""
    from gridtool.registry.hostconf import SETTINGS, check_settings

    if labels and no_labels:
        raise UsageError("--label and --no-labels exclude each other")
    if watchdog is not None and no_watchdog:
        raise UsageError("--watchdog and --no-watchdog exclude each other")
    changes: dict[str, Any] = {name: None for name in unset}
    for name in unset:
        if name not in SETTINGS:
            raise UsageError(f"--unset {name}: one of {', '.join(SETTINGS)}")
    if labels or no_labels:
        changes["labels"] = [] if no_labels else [x.strip() for x in labels]
    for name, value in (("overflow", overflow), ("manager", manager),
                        ("watchdog", "" if no_watchdog else watchdog),
                        ("watchdog_timeout", watchdog_timeout)):
        if value is not None:
            changes[name] = value
    try:
        check_settings(changes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return changes


def check_fence_options(fence_agent: str | None, fence_params: tuple[str, ...]) -> None:
    if fence_params and not fence_agent:
        raise UsageError("--fence-param needs --fence-agent")


def apply_settings(app: AppContext, host: str, changes: dict[str, Any],
                   fence_agent: str | None, fence_params: tuple[str, ...]) -> Any:
    """Store ``changes`` (and the fence agent); returns the host's settings record."""
    from gridtool.cli.host.fenceagent import write_agent
    from gridtool.registry import hostconf
    from gridtool.registry.intents import who

    if fence_agent:
        write_agent(app, host, fence_agent, fence_params)
    if changes.get("manager") is not None:
        _manager_role(app, host, changes["manager"])
    if changes:
        return hostconf.set_settings(app.store, app.config.keys, host, changes, who())
    return hostconf.read(app.store, app.config.keys, host)


def _manager_role(app: AppContext, host: str, manager: bool) -> None:
    """With registry authentication, a manager candidate's etcd user needs the manager
    role: grant (or take away) it, when root's password file is at hand."""
    from gridtool.auth.shell import credentials_dir, grant_manager

    if not app.config.user:
        return
    directory = credentials_dir(app.config, None)
    if grant_manager(app.config, directory, host, manager) is None:
        flag = "--manager" if manager else "--no-manager"
        warn(f"no root password in {directory}: give {host}'s etcd user the manager role "
             f"with 'gridtool host credentials {host} {flag}'")


@click.command("set")
@click.argument("name")
@setting_options
@click.option("--unset", multiple=True, metavar="SETTING",
              help="Back to agent.conf's value: labels, overflow, manager, watchdog or "
                   "watchdog_timeout (repeatable).")
@click.option("--no-fence-agent", is_flag=True, help="Forget the host's fence agent.")
@json_option
@pass_app
def set_host(app: AppContext, name: str, labels: tuple[str, ...], no_labels: bool,
             overflow: bool | None, manager: bool | None, watchdog: str | None,
             no_watchdog: bool, watchdog_timeout: float | None, fence_agent: str | None,
             fence_params: tuple[str, ...], unset: tuple[str, ...], no_fence_agent: bool,
             as_json: bool) -> None:
    """Change a host's settings in the registry, without editing its agent.conf.

    They win over the host's agent.conf and survive 'host add' (which only changes the
    settings it is given). The agent picks them up by itself: labels and overflow at
    once (placement sees them in the host record), the manager candidate and the
    watchdog at its next start (systemctl restart gridtool-agent on the host; drain a
    host with HA guests first unless its watchdog works). Exit 2 for bad values.

    \b
    Example:
      gridtool host set hv4 --overflow
      gridtool host set hv1 --label ssd --label rack=3 --manager-candidate
      gridtool host set hv2 --watchdog /dev/watchdog --watchdog-timeout 5
      gridtool host set hv2 --unset watchdog --json
    """
    from gridtool.cli.host.facts import settings_doc, settings_rows
    from gridtool.registry import fenceagents
    from gridtool.registry.hostconf import LIVE
    from gridtool.registry.keys import validate_name

    try:
        validate_name("host", name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if no_fence_agent and fence_agent:
        raise UsageError("--fence-agent and --no-fence-agent exclude each other")
    check_fence_options(fence_agent, fence_params)
    changes = setting_changes(labels, no_labels, overflow, manager, watchdog, no_watchdog,
                              watchdog_timeout, unset)
    if not (changes or fence_agent or fence_params or no_fence_agent):
        raise UsageError("nothing to set: give a setting (see 'gridtool host set --help')")
    keys = app.config.keys
    known = app.store.get(keys.host(name)) or app.store.get(keys.hostconf(name))
    conf = apply_settings(app, name, changes, fence_agent, fence_params)
    if no_fence_agent:
        fenceagents.remove(app.store, keys, name)
    fence = fenceagents.read(app.store, keys, name)
    if not known:
        warn(f"host {name} is not in the registry (yet): its agent reads these at start")
    restart = sorted(set(changes) - LIVE)
    if as_json:
        emit_json(host=name, settings=settings_doc(conf, fence), changed=sorted(changes),
                  at_next_start=restart)
        return
    table(f"host {name} settings", ["SETTING", "VALUE"], settings_rows(conf, fence))
    if restart:
        click.echo(f"{name}: {', '.join(restart)} take effect when its agent restarts "
                   "(systemctl restart gridtool-agent)", err=True)
