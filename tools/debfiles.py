"""Files of the Debian packages generated from the code (``scripts/build-deb`` runs it).

A build tool, not part of the installed package. ``python tools/debfiles.py DIR`` writes
into DIR:

- ``agent.conf``: the commented ``/etc/gridtool/agent.conf`` conffile, every setting of
  the agent's sections with its meaning and default from the ``Config`` table in
  :mod:`gridtool.config` (the table the man page ``gridtool.conf(5)`` comes from), all
  commented out but the hook socket that the packaged hook and unit expect;
- ``gridtool-agent.service``: ``scripts/systemd/gridtool-agent.service`` with the
  package's program path (``gridtool.bootstrap.rules.render_unit``).
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

from gridtool.bootstrap.rules import PACKAGE_LAYOUT, render_unit
from gridtool.config import AGENT_CONFIG, MEANINGS, Config

ROOT = Path(__file__).resolve().parents[1]
UNIT_TEMPLATE = ROOT / "scripts" / "systemd" / "gridtool-agent.service"
#: The sections an agent reads, in the order the conffile lists them.
SECTIONS = ("registry", "agent", "storage")
#: Settings the conffile sets (uncommented): the hook socket, where the packaged fence
#: hook asks the agent (``/run/gridtool`` is the unit's ``RuntimeDirectory``).
LIVE = {"hook_socket": "/run/gridtool/hook.sock"}
#: Test-only settings the conffile leaves out (the man page still lists them).
HIDDEN = frozenset({"fault_points", "watchdog_kind"})

HEADER = f"""\
# {AGENT_CONFIG}: the gridtool agent's settings (man 5 gridtool.conf).
#
# The agent does not start until this file names the host, its libvirt URI and the
# registry (host, libvirt_uri, endpoints below); then:
#   systemctl enable --now gridtool-agent
# It holds etcd credentials: keep it 0600 root. Every setting can also come from the
# environment (GRIDTOOL_<NAME>) or a flag of gridtool-agent.
"""


def plain(text: str) -> str:
    """The man pages' mini markup (`` `code` ``, ``*italic*``) as plain text."""
    return re.sub(r"[`*]", "", text)


def default_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def agent_conf() -> str:
    """The commented conffile (see the module docstring)."""
    out = [HEADER]
    for section in SECTIONS:
        out.append(f"\n[{section}]\n")
        for f in fields(Config):
            if f.metadata["section"] != section or f.name in HIDDEN:
                continue
            wrapped = textwrap.wrap(plain(MEANINGS[f.name]), 86)
            out.append("\n" + "".join(f"# {line}\n" for line in wrapped))
            if f.name in LIVE:
                out.append(f"{f.name} = {LIVE[f.name]}\n")
            else:
                out.append(f"#{f.name} = {default_text(f.default)}".rstrip() + "\n")
    return "".join(out)


def unit() -> str:
    """The agent's systemd unit with the package's paths."""
    return render_unit(UNIT_TEMPLATE.read_text(), PACKAGE_LAYOUT)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: debfiles.py DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "agent.conf").write_text(agent_conf())
    (out / "gridtool-agent.service").write_text(unit())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
