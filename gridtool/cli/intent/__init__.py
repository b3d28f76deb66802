"""``gridtool intent list|show``: operations in flight and recently done, as intents."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import click

from gridtool.cli.common.complete import HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.intents import intent_doc
from gridtool.cli.common.output import (
    age,
    emit_json,
    json_option,
    table,
    text,
    warn,
    when,
)
from gridtool.errors import NotFound
from gridtool.registry.records import INTENT_STATES, Intent


def select(intents: Iterable[Intent], states: Sequence[str], host: str | None) -> list[Intent]:
    """The intents in one of ``states`` (all when empty) on ``host`` (all when None)."""
    return [i for i in intents
            if (not states or i.state in states) and (host is None or i.host == host)]


def _read(app: AppContext) -> list[Intent]:
    from gridtool.registry.intents import read_intents

    intents, errors = read_intents(app.store, app.config.keys)
    for error in errors:
        warn(str(error))
    return intents


@click.group()
def intent() -> None:
    """Intents: what hosts were asked to do (start, stop, migrate, clone...) and how it
    went, like a job queue. Finished intents stay listed for 10 minutes.

    \b
    Examples:
      gridtool intent list --state running
      gridtool intent show 18d2f1c3a9b4e000-1a2b3c
    """


@intent.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(INTENT_STATES),
              help="Only intents in this state (repeatable).")
@click.option("--host", "host_name", shell_complete=HOSTS, metavar="HOST",
              help="Only intents for this host.")
@json_option
@pass_app
def list_intents(app: AppContext, states: tuple[str, ...], host_name: str | None,
                 as_json: bool) -> None:
    """Intents queued, running and recently finished, oldest first.

    \b
    Example:
      gridtool intent list --state pending --state running --host hv2
      gridtool intent list --state failed --json
    """
    chosen = select(_read(app), states, host_name)
    if as_json:
        emit_json(intents=[intent_doc(i) for i in chosen])
        return
    now = time.time()
    table(None, ["ID", "KIND", "GUEST", "HOST", "STATE", "AGE", "BY", "RESULT"],
          [(i.id, i.action, i.name, i.host, i.state, age(i.created, now), i.by,
            text(i.message)) for i in chosen])


@intent.command("show")
@click.argument("intent_id", metavar="ID")
@json_option
@pass_app
def show_intent(app: AppContext, intent_id: str, as_json: bool) -> None:
    """One intent in full: who asked, when, its parameters and its outcome. Exit 3 when
    no intent has that ID (finished ones are forgotten after 10 minutes).

    \b
    Example:
      gridtool intent show 18d2f1c3a9b4e000-1a2b3c --json
    """
    found = next((i for i in _read(app) if i.id == intent_id), None)
    if found is None:
        raise NotFound(f"no intent {intent_id!r} (finished intents are kept 10 minutes)")
    if as_json:
        emit_json(intent=intent_doc(found))
        return
    params = {k: v for k, v in found.params.items() if k != "xml"}  # XML: see guest show
    table(None, ["FIELD", "VALUE"], [
        ("id", found.id), ("kind", found.action), ("guest", f"{found.name} ({found.guest})"),
        ("host", found.host), ("state", found.state), ("by", found.by),
        ("created", when(found.created)), ("updated", when(found.updated)),
        ("params", text([f"{k}={v}" for k, v in sorted(params.items())])),
        ("result", text(found.message))])
