"""Shared storage from a dom0-style kernel on the lab's L2 segment, AoE vs iSCSI: a plain
QEMU (TCG) machine with the lab's Debian kernel (``tests/harness/kernel_guest.py``), per
round booted twice on one segment with one vblade and the lab's tgtd:

* AoE: the real boot script (``gridtool/lab/data/dom0-storage.sh``: NIC up, ``modprobe
  aoe``, discover, ``/dev/etherd/e0.1`` there), the guest reads the bench's marker from the
  LUN and writes a token back (checked);
* iSCSI: the kernel initiator's login with ``iscsistart`` to tgtd's segment portal until
  the disk is there, then ``sg_persist`` REGISTER + RESERVE (checked).

Measured in the guest (its uptime): the attach (AoE) and login-to-disk (iSCSI) times, and
the kernel's time to /init; outside: the whole AoE boot.

    python bench/xen_storage.py [--rounds 3] [--json PATH]

Target: every round attaches both ways (and the AoE one reads and writes the LUN), each
attach at most 10 s.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import print_table, summary_ms, write_json
from verdict import Verdict

from gridtool.lab import aoe as lab_aoe
from gridtool.lab import dom0storage, qemu, segment
from gridtool.lab import iscsi as lab_iscsi
from gridtool.lab.procs import LabError
from gridtool.storage import pr
from tests.harness import kernel_guest

#: NIC up, modprobe aoe, discover, the device there: 0.2 s at load 11, 3.6 s at load 16.
ATTACH_BOUND_S = 10.0
_UPTIME = re.compile(r"UPTIME-([A-Z]+) ([\d.]+)")


def aoe_boot(state: dict[str, Any], plan: dom0storage.HostStorage) -> dict[str, Any]:
    targets = lab_aoe.AoeTargets.from_dict(state["aoe"])
    marker, token = secrets.token_hex(8), secrets.token_hex(4)
    with targets.lun_path(1).open("r+b") as fh:
        fh.write(marker.encode())
    args = [a for a in plan.kernel_args if not a.startswith("gridtool.iscsi=")]
    start = time.monotonic()
    out = kernel_guest.boot([*args, f"gridtool.token={token}"], plan.qemu_args, 600)
    wall = time.monotonic() - start
    with targets.lun_path(1).open("rb") as fh:
        fh.seek(512)
        wrote = fh.read(20) == f"GUEST-WROTE {token}".encode()
    up = {k: float(v) for k, v in _UPTIME.findall(out)}
    ok = wrote and f"AOE-READ {marker}" in out and {"BEFORE", "AFTER"} <= up.keys()
    if not ok:
        print(f"xen_storage: an AoE round failed; its console:\n{out[-2000:]}", file=sys.stderr)
    return {"boot_s": wall, "aoe_ok": ok,
            "aoe_attach_s": up["AFTER"] - up["BEFORE"] if ok else float("nan"),
            "kernel_to_script_s": up.get("BEFORE", float("nan"))}


def iscsi_login(state: dict[str, Any]) -> dict[str, Any]:
    seg = segment.Segment.from_dict(state["segment"])
    target = lab_iscsi.IscsiTarget.from_dict(state["iscsi"])
    address, port = target.segment_portal.split(":")
    args = [seg.kernel_arg(0), f"gridtool.portal={address},{port},{target.iqn},"
            f"{lab_iscsi.initiator_iqn('hv1')}", f"gridtool.key=0x{pr.host_key('hv1'):x}"]
    with kernel_guest.Machine(args, seg.qemu_args(0)) as machine:
        try:
            machine.wait_line(lambda ln: ln.startswith("PR-RESERVE "), 600, "PR-RESERVE")
        except LabError as exc:
            print(f"xen_storage: an iSCSI round failed: {exc}", file=sys.stderr)
    out = "\n".join(machine.lines)
    up = {k: float(v) for k, v in _UPTIME.findall(out)}
    ok = ("ISCSI-LOGIN 0" in machine.lines and "PR-REGISTER 0" in machine.lines
          and ("PR-RESERVE 0" in machine.lines or "PR-RESERVE held" in machine.lines))
    return {"iscsi_ok": ok and {"LOGIN", "DISK"} <= up.keys(),
            "iscsi_login_s": up["DISK"] - up["LOGIN"] if ok else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    why = qemu.unavailable() or segment.unavailable()
    if why:
        print(f"xen_storage: cannot run here: {why}", file=sys.stderr)
        return 2
    kernel_guest.initramfs()  # built (once) outside the timings
    rounds = []
    with tempfile.TemporaryDirectory(prefix="gt-xen-storage-") as tmp:
        state: dict[str, Any] = {}
        try:
            target = lab_iscsi.create(Path(tmp), ["hv1"], luns=1, size_mb=8)
            lab_iscsi.start(target)
            state["iscsi"] = target.to_dict()
            plan = dom0storage.start(Path(tmp), state, ["hv1"])[0]
            for _ in range(args.rounds):
                rounds.append({**aoe_boot(state, plan), **iscsi_login(state)})
        finally:
            dom0storage.stop(state)
            if "iscsi" in state:
                lab_iscsi.stop(lab_iscsi.IscsiTarget.from_dict(state["iscsi"]))
    load = os.getloadavg()
    phases = ("boot_s", "kernel_to_script_s", "aoe_attach_s", "iscsi_login_s")
    stats = {name: summary_ms([r[name] for r in rounds]) for name in phases}
    rows = [[name, *(f"{st[k] / 1000:.2f}" for k in ("p50_ms", "max_ms", "mean_ms"))]
            for name, st in stats.items()]
    header = ["phase (s)", "p50", "max", "mean"]
    print_table(f"AoE vs iSCSI from the lab kernel on the segment, {args.rounds} rounds, load "
                f"{load[0]:.1f}", rows, header)
    verdict = Verdict("AoE vs iSCSI from the dom0-style kernel")
    verdict.check("rounds whose AoE LUN was read and written", sum(r["aoe_ok"] for r in rounds),
                  "==", args.rounds)
    verdict.check("rounds logged in and reserved over iSCSI", sum(r["iscsi_ok"] for r in rounds),
                  "==", args.rounds)
    for name in ("aoe_attach_s", "iscsi_login_s"):
        verdict.check(f"{name}, worst", stats[name]["max_ms"] / 1000, "<=", ATTACH_BOUND_S, "s")
    verdict.print()
    write_json("xen_storage", {"rounds": rounds, "loadavg": load, **verdict.to_dict()},
               args.json)
    return verdict.exit_code()


if __name__ == "__main__":
    sys.exit(main())
