"""``gridtool manager ...``: the leader-elected HA manager.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.manager.commands import run, status


@click.group()
def manager() -> None:
    """The HA manager: one leader (etcd election) among any number of candidates.

    \b
    Example:
      gridtool manager status
    """


for _command in (run, status):
    manager.add_command(_command)
