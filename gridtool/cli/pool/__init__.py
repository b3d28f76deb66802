"""``gridtool pool ...``: worker pools kept at size by the manager, their load reports, and
the simulator of the flex policies.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.pool.commands import (
    create,
    delete,
    feed,
    list_pools,
    numbers_cmd,
    report,
    scale,
    set_pool,
    show,
    simulate,
)


@click.group()
def pool() -> None:
    """Worker pools: clones of a template kept at size (fixed) or flexed with measured
    load (flex) by the leading manager.

    \b
    Example:
      gridtool pool create web --template worker --min 2 --max 20 --policy flex
      gridtool pool simulate --trace bench/traces/spike.csv --plot spike.png
    """


for _command in (simulate, create, scale, set_pool, list_pools, show, delete, report,
                 numbers_cmd, feed):
    pool.add_command(_command)
