"""``gridtool host ...``: the hypervisor hosts in the registry.

The group; its commands live in this package's modules."""

from __future__ import annotations

from gridtool.cli.common.lazy import lazy_group


@lazy_group({"list": "gridtool.cli.host.show:list_hosts",
             "show": "gridtool.cli.host.show:show_host",
             "confirm-dead": "gridtool.cli.host.dead:confirm_dead",
             "drain": "gridtool.cli.host.drain:drain_host",
             "undrain": "gridtool.cli.host.drain:undrain_host",
             "add": "gridtool.cli.host.admin:add_host",
             "remove": "gridtool.cli.host.admin:remove_host",
             "credentials": "gridtool.cli.host.credentials:credentials",
             "fence-agent": "gridtool.cli.host.fenceagent:fence_agent",
             "set": "gridtool.cli.host.settings:set_host"})
def host() -> None:
    """Hypervisor hosts (each reported by its agent, under its lease).

    \b
    Example:
      gridtool host list
    """
