"""Pulling a lab host's plug (``lab power-off`` and the lab fence agent's ``off``): kill
its agent and its iSCSI initiator (a powered-off dom0's sessions end; the target keeps
their registrations), destroy its running guests. Light on imports on purpose: the fence agent runs
it in a fresh process on every fence, inside the manager's failover time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

from gridtool.lab.procs import AGENT_MARKER, INITIATOR_MARKER, LabError, kill_now
from gridtool.lab.state import read_state


def power_off(directory: Path, name: str) -> list[str]:
    """Simulate pulling lab host ``name``'s plug; the names of the guests destroyed."""
    state = read_state(directory)
    hosts = {h["name"]: h for h in (state or {}).get("hosts", [])}
    if name not in hosts:
        raise LabError(f"no lab host {name!r} (lab hosts: {', '.join(sorted(hosts)) or '-'})")
    entry = hosts[name]
    if entry.get("hypervisor") == "xen":  # the dom0's machine: its guests die with it
        from gridtool.lab.xenlab import kill_machine

        kill_machine(entry)
        return []
    kill_now(int(entry.get("agent_pid") or 0), AGENT_MARKER)
    for initiator in initiators_of(state, name):
        kill_now(initiator["pid"], INITIATOR_MARKER)
    conn = libvirt.open(entry["libvirt_uri"])
    try:
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        for dom in doms:
            dom.destroy()
        return [d.name() for d in doms]
    finally:
        conn.close()


def initiators_of(state: dict[str, Any] | None, name: str) -> list[dict[str, Any]]:
    """Lab host ``name``'s iSCSI initiator entries in the lab state (none without)."""
    return [e for e in (state or {}).get("initiators", []) if e["host"] == name]
