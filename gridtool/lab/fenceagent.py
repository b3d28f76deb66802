"""``fence_gridtool_lab``: the lab's power fence agent, speaking the standard fence-agent
protocol (``key=value`` lines on stdin, as Pacemaker and RHCS run ``fence_ipmilan``).

Parameters: ``lab_dir`` (the lab's directory), ``plug`` (a lab host's name; ``port`` and
``nodename`` are accepted too), ``action``: ``off`` pulls the host's plug exactly as
``gridtool lab power-off`` does, ``on`` starts its agent again (``lab power-on``),
``reboot`` both; ``status`` exits 0 when on and 2 when off (off: its agent process is gone
and its libvirtd runs no guest); ``monitor`` checks the lab is there; ``list`` prints
``host,host`` lines; ``metadata`` the agent's XML description. Exit 1 on any error, with
one line on stderr. Example::

    printf 'lab_dir=/tmp/gridtool-lab\\nplug=hv1\\naction=status\\n' | fence_gridtool_lab
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_OFF = 0, 1, 2

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_gridtool_lab" shortdesc="Fence agent for gridtool lab hosts">
<longdesc>Powers a gridtool lab host off (kills its agent, destroys its guests) and on.
</longdesc>
<parameters>
  <parameter name="action" unique="0" required="1"><getopt mixed="-o, --action=[action]"/>
    <content type="string" default="reboot"/><shortdesc lang="en">Fencing action</shortdesc>
  </parameter>
  <parameter name="lab_dir" unique="0" required="1"><content type="string"/>
    <shortdesc lang="en">The lab's directory</shortdesc></parameter>
  <parameter name="plug" unique="0" required="1"><content type="string"/>
    <shortdesc lang="en">The lab host to fence</shortdesc></parameter>
</parameters>
<actions>
  <action name="on"/><action name="off"/><action name="reboot"/><action name="status"/>
  <action name="monitor"/><action name="list"/><action name="metadata"/>
</actions>
</resource-agent>
"""


class FenceError(Exception):
    """A one-line failure of the agent (exit 1)."""


def parse(text: str) -> dict[str, str]:
    """``key=value`` lines (blank lines and ``#`` comments skipped)."""
    params = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            params[key.strip()] = value.strip()
    return params


def _hosts(directory: Path) -> dict[str, dict]:
    from gridtool.lab.state import read_state

    state = read_state(directory)
    if state is None:
        raise FenceError(f"no lab in {directory}")
    return {h["name"]: h for h in state.get("hosts", [])}


def _plug(params: Mapping[str, str], directory: Path) -> str:
    name = params.get("plug") or params.get("port") or params.get("nodename") or ""
    hosts = _hosts(directory)
    if name not in hosts:
        raise FenceError(f"no lab host {name!r} (lab hosts: {', '.join(sorted(hosts)) or '-'})")
    return name


def powered_on(directory: Path, name: str) -> bool:
    """On while its agent process runs or its libvirtd runs a guest (a Xen host: while
    its machine's QEMU runs)."""
    import libvirt

    from gridtool.lab.procs import AGENT_MARKER, cmdline

    entry = _hosts(directory)[name]
    if entry.get("hypervisor") == "xen":  # a dom0's machine: on while its QEMU runs
        from gridtool.lab.xenlab import XenHost

        return XenHost.from_dict(entry).running()
    if AGENT_MARKER in cmdline(int(entry.get("agent_pid") or 0) or -1):
        return True
    try:
        conn = libvirt.open(entry["libvirt_uri"])
    except libvirt.libvirtError as exc:
        raise FenceError(f"cannot tell whether {name} is on: {exc}") from None
    try:
        return bool(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
    finally:
        conn.close()


def _switch(directory: Path, name: str, action: str) -> None:
    """``lab power-off`` and/or ``lab power-on`` (imported only here: a status run,
    the one repeated while a fence waits, stays quick)."""
    import libvirt

    from gridtool.lab.power import power_off
    from gridtool.lab.procs import LabError

    try:
        if action in ("off", "reboot"):
            power_off(directory, name)
        if action in ("on", "reboot"):
            from gridtool.lab import lab as labmod  # heavy: only when powering on

            labmod.power_on(directory, name)
    except (LabError, OSError, libvirt.libvirtError) as exc:
        raise FenceError(str(exc)) from None


def act(params: Mapping[str, str]) -> tuple[int, str]:
    """Carry out ``params['action']``; the exit code and what to print."""
    action = params.get("action") or params.get("option") or "reboot"
    if action == "metadata":
        return EXIT_OK, METADATA
    if not params.get("lab_dir"):
        raise FenceError("missing parameter lab_dir")
    directory = Path(params["lab_dir"])
    if action == "monitor":
        _hosts(directory)
        return EXIT_OK, ""
    if action == "list":
        return EXIT_OK, "".join(f"{name},{name}\n" for name in sorted(_hosts(directory)))
    name = _plug(params, directory)
    if action in ("off", "on", "reboot"):
        _switch(directory, name, action)
        return EXIT_OK, "Success: Powered OFF\n" if action == "off" else "Success: Powered ON\n"
    if action == "status":
        on = powered_on(directory, name)
        return (EXIT_OK, "Status: ON\n") if on else (EXIT_OFF, "Status: OFF\n")
    raise FenceError(f"unknown action {action!r}")


def main(argv: list[str] | None = None) -> int:
    """Read the parameters from stdin (``-o ACTION`` on the command line overrides the
    action); print the result; return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    params = parse(sys.stdin.read() if not sys.stdin.isatty() else "")
    if len(args) == 2 and args[0] in ("-o", "--action"):
        params["action"] = args[1]
    try:
        code, out = act(params)
    except FenceError as exc:
        print(f"fence_gridtool_lab: {exc}", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
