"""``gridtool host ...``: the hypervisor hosts in the registry.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.host.admin import add_host, remove_host
from gridtool.cli.host.credentials import credentials
from gridtool.cli.host.dead import confirm_dead
from gridtool.cli.host.drain import drain_host, undrain_host
from gridtool.cli.host.fenceagent import fence_agent
from gridtool.cli.host.settings import set_host
from gridtool.cli.host.show import list_hosts, show_host


@click.group()
def host() -> None:
    """Hypervisor hosts (each reported by its agent, under its lease).

    \b
    Example:
      gridtool host list
    """


for _command in (list_hosts, show_host, confirm_dead, drain_host, undrain_host, add_host,
                 remove_host, credentials, fence_agent, set_host):
    host.add_command(_command)
