"""``gridtool fence ...``: who holds which shared volume, and fence violations.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.fence.commands import clear_violations, list_fences, release


@click.group()
def fence() -> None:
    """Fences: one holder host per shared-storage volume.

    \b
    Example:
      gridtool fence list
    """


for _command in (list_fences, release, clear_violations):
    fence.add_command(_command)
