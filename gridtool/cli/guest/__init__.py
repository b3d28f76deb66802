"""``gridtool guest ...``: guests (libvirt domains) across the fleet.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.guest.lifecycle import destroy, restart, set_guest, start, stop
from gridtool.cli.guest.place import create_guest, migrate_guest, place_guest
from gridtool.cli.guest.show import list_guests, show_guest


@click.group()
def guest() -> None:
    """Guests (libvirt domains) on every host.

    \b
    Example:
      gridtool guest list --host hv1
    """


for _command in (list_guests, show_guest, start, stop, destroy, restart, set_guest, place_guest,
                 create_guest, migrate_guest):
    guest.add_command(_command)
