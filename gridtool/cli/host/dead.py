"""``gridtool host confirm-dead``: release a dead host's fences, on the operator's word."""

from __future__ import annotations

import time

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import json_option, outcome


@click.command("confirm-dead")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_app
def confirm_dead(app: AppContext, name: str, yes: bool, as_json: bool) -> None:
    """Tell gridtool a host is powered off (STONITH by hand): its pinned guests may move.

    Refused while the host still holds its lease. The manager then releases the host's
    pinned fences and restarts its guests elsewhere.

    \b
    Example:
      gridtool host confirm-dead hv3 --yes
    """
    import json

    from gridtool.errors import Conflict, NotFound
    from gridtool.fencing.rules import Observed
    from gridtool.fencing.shell import read_all_fences
    from gridtool.registry.intents import who
    from gridtool.registry.store import Compare, Put

    keys = app.config.keys
    if app.store.get(keys.host(name)) is not None:
        raise Conflict(f"host {name} is alive (its lease is held): power it off first")
    guests, _ = app.registry.guests_of(name)
    fences, _ = read_all_fences(app.store, keys)
    if not guests and not any(isinstance(o, Observed) and o.fence.holder == name
                              for o in fences.values()):
        raise NotFound(f"unknown host {name!r}: no guest record or fence names it")
    if not yes:
        click.confirm(f"Is {name} really powered off? Its guests will be started elsewhere",
                      abort=True, err=True)
    body = {"v": 1, "host": name, "by": who(), "at": time.time()}
    if not app.store.txn([Compare(keys.host(name), "create", 0)],
                         [Put(keys.dead_host(name), json.dumps(body).encode())]):
        raise Conflict(f"host {name} came back (its agent registered): not marked dead")
    outcome(as_json, f"{name} confirmed dead: its pinned guests may now be restarted "
            "elsewhere", host=name, dead=True, by=body["by"], at=body["at"])
