"""Every command a script may run has ``--json``: listings, and every command that
changes something (its JSON says what changed, with names and intent ids). Walks the
real click tree, so a new command without ``--json`` fails here. No etcd."""

from __future__ import annotations

import json
from collections.abc import Iterator

import click
import pytest

from gridtool.cli.common.output import outcome
from gridtool.cli.main import cli

#: Commands without --json, and why: they serve or print a script, not a result.
NO_RESULT = {
    "manager run": "a long-running service (logs, no result)",
    "metrics serve": "a long-running HTTP server",
    "web serve": "a long-running HTTP server",
    "completion": "prints a shell script to source",
}


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


ALL = dict(commands(cli))


def test_the_walk_sees_the_mutating_commands() -> None:
    """The walk reaches nested groups (a walk that saw nothing would pass below)."""
    for path in ("guest start", "guest stop", "guest set", "pool scale", "pool delete",
                 "pool report", "host add", "host remove", "fence release",
                 "guest migrate", "clone", "host drain", "host fence-agent set",
                 "intent list", "intent show"):
        assert path in ALL, path


@pytest.mark.parametrize("path", sorted(ALL))
def test_every_command_has_json(path: str) -> None:
    names = {opt for p in ALL[path].params for opt in getattr(p, "opts", ())}
    if path in NO_RESULT:
        assert "--json" not in names, f"{path} is listed as having no result"
        return
    assert "--json" in names, f"'gridtool {path}' has no --json"


def test_outcome_is_one_json_document_or_one_line_for_people(
        capsys: pytest.CaptureFixture[str]) -> None:
    outcome(True, "pool web: size 3", pool={"name": "web", "desired": 3})
    out, err = capsys.readouterr()
    assert json.loads(out) == {"v": 1, "pool": {"name": "web", "desired": 3}} and err == ""
    outcome(False, "pool web: size 3", pool={"name": "web"})
    out, err = capsys.readouterr()
    assert out == "" and err == "pool web: size 3\n"
