"""``gridtool registry ...``: the etcd cluster behind gridtool.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.registry.commands import certs, init, status
from gridtool.cli.registry.users import user


@click.group()
def registry() -> None:
    """The registry (etcd cluster): status, authentication, TLS certificates.

    \b
    Examples:
      gridtool registry status
      gridtool registry init --hosts hv1,hv2 --managers all
    """


for _command in (status, init, certs, user):
    registry.add_command(_command)
