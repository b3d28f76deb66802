"""``gridtool web ...``: a live, read-only web view of the fleet.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.web.commands import serve


@click.group()
def web() -> None:
    """A live, read-only web view of the fleet (hosts, guests, fences, pools, manager).

    \b
    Example:
      gridtool web serve
    """


for _command in (serve,):
    web.add_command(_command)
