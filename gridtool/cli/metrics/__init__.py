"""``gridtool metrics ...``: a Prometheus exporter of the fleet.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.metrics.commands import serve


@click.group()
def metrics() -> None:
    """Prometheus metrics of the fleet.

    \b
    Example:
      gridtool metrics serve --port 9477
    """


for _command in (serve,):
    metrics.add_command(_command)
