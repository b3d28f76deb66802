"""``gridtool manager ...``: the leader-elected HA manager."""

from __future__ import annotations

import socket
import time

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import NOTHING, emit_json, json_option, section, when


@click.command("run")
@click.option("--name", default=lambda: socket.gethostname(), show_default="hostname",
              help="This candidate's name.")
@click.option("--period", default=1.0, show_default=True, help="Seconds between rounds.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@pass_app
def run(app: AppContext, name: str, period: float, log_level: str) -> None:
    """Run a manager candidate in the foreground until SIGTERM or Ctrl-C.

    The leader restarts HA guests of dead hosts elsewhere (after their fences expired)
    and pinned guests of hosts an operator confirmed dead. Every agent can also run a
    candidate (agent setting 'manager = yes').

    \b
    Example:
      gridtool manager run --name mgr1
    """
    import logging
    import signal
    import threading

    from gridtool import logsetup, supervise
    from gridtool.ha.manager import Manager

    logsetup.configure(log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from gridtool.fencing.storagefence import from_config

    manager = Manager(app.config, app.store, name, period=period,
                      storage_fencer=from_config(app.config))
    # what its step does not expect ends the process in one line (its threads, the pool
    # round and the watches, are supervised the same way): a supervisor restarts it
    supervise.supervised(manager.run, "manager", logging.getLogger("gridtool.ha.manager"))(stop)


@click.command("status")
@json_option
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Who leads, since when, what it did and waits for, and how each lost host was
    fenced (storage, power, or the timed grace; FAILED stops its recovery).

    \b
    Example:
      gridtool manager status
    """
    import json
    from dataclasses import asdict

    from gridtool.errors import NotFound
    from gridtool.registry.records import ManagerStatus, decode

    keys = app.config.keys
    leader = app.store.get(keys.manager_leader)
    if leader is None:
        raise NotFound("no manager leads: start one with 'gridtool manager run'")
    who = json.loads(leader.value)
    item = app.store.get(keys.manager_status)
    st = decode(ManagerStatus, item.key, item.value) if item else None
    if as_json:
        emit_json(leader=who.get("leader"), since=who.get("since"),
                  status=asdict(st) if st else None)
        return
    now = time.time()
    click.echo(f"leader: {who.get('leader')}, since {when(who.get('since'), now)}")
    click.echo(f"last round: {when(st.heartbeat, now) if st else NOTHING}")
    section("recent actions", ["ACTION"], [(a,) for a in st.actions] if st else [])
    section("waiting", ["GUEST", "REASON"], list(st.blocked.items()) if st else [])
    section("lost hosts", ["HOST", "FENCE"], list(st.fences.items()) if st else [])
