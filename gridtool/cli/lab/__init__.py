"""``gridtool lab ...``: a local lab of etcd and simulated hypervisor hosts.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.lab.commands import (
    build_xen_image,
    disk_check,
    down,
    power_off,
    power_on,
    status,
    up,
)


@click.group()
def lab() -> None:
    """A local lab: a real etcd and simulated hosts (libvirtd test driver + agent).

    \b
    Example:
      gridtool lab up --hosts 3 --guests 2
      gridtool lab down
    """


for _command in (up, status, down, power_off, power_on, disk_check, build_xen_image):
    lab.add_command(_command)
