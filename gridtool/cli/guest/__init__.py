"""``gridtool guest ...``: guests (libvirt domains) across the fleet.

The group; its commands live in this package's modules."""

from __future__ import annotations

from gridtool.cli.common.lazy import lazy_group


@lazy_group({"list": "gridtool.cli.guest.show:list_guests",
             "show": "gridtool.cli.guest.show:show_guest",
             **{name: f"gridtool.cli.guest.lifecycle:{name}"
                for name in ("start", "stop", "destroy", "restart")},
             "set": "gridtool.cli.guest.lifecycle:set_guest",
             **{name: f"gridtool.cli.guest.place:{name}_guest"
                for name in ("place", "create", "migrate")}})
def guest() -> None:
    """Guests (libvirt domains) on every host.

    \b
    Example:
      gridtool guest list --host hv1
    """
