"""Shared storage from a dom0-style kernel on the lab's L2 segment: how long a plain QEMU
(TCG) machine with the lab's Debian kernel takes to attach AoE (NIC up, ``modprobe aoe``,
discover, ``/dev/etherd/e0.1`` there: the real boot script, ``gridtool/lab/data/
dom0-storage.sh``) and the whole boot to power-off, over ``--rounds`` boots on one segment
with one vblade. The guest reads the test's marker from the LUN and writes a token back
(checked each round). iSCSI login + ``sg_persist`` from the dom0 kernel (and so "AoE vs
iSCSI guest start") needs the Xen dom0 image with open-iscsi (issue 17 item 1).

    python bench/xen_storage.py [--rounds 3] [--json PATH]

Target: every round reads and writes the LUN, and the attach takes at most 10 s.
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
from tests.harness import kernel_guest

#: NIC up, modprobe aoe, discover, the device there: 0.2 s at load 11, 3.6 s at load 16.
ATTACH_BOUND_S = 10.0
_UPTIME = re.compile(r"UPTIME-(BEFORE|AFTER) ([\d.]+)")


def one_boot(state: dict[str, Any], plan: dom0storage.HostStorage) -> dict[str, float]:
    targets = lab_aoe.AoeTargets.from_dict(state["aoe"])
    marker, token = secrets.token_hex(8), secrets.token_hex(4)
    with targets.lun_path(1).open("r+b") as fh:
        fh.write(marker.encode())
    start = time.monotonic()
    out = kernel_guest.boot([*plan.kernel_args, f"gridtool.token={token}"], plan.qemu_args, 600)
    wall = time.monotonic() - start
    with targets.lun_path(1).open("rb") as fh:
        fh.seek(512)
        wrote = fh.read(20) == f"GUEST-WROTE {token}".encode()
    up = {k: float(v) for k, v in _UPTIME.findall(out)}
    ok = wrote and f"AOE-READ {marker}" in out and len(up) == 2
    if not ok:
        print(f"xen_storage: a round failed; its console:\n{out[-2000:]}", file=sys.stderr)
    return {"boot_s": wall, "ok": ok,
            "attach_s": up["AFTER"] - up["BEFORE"] if len(up) == 2 else float("nan"),
            "kernel_to_script_s": up.get("BEFORE", float("nan"))}


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
            plan = dom0storage.start(Path(tmp), state, ["hv1"])[0]
            for _ in range(args.rounds):
                rounds.append(one_boot(state, plan))
        finally:
            dom0storage.stop(state)
    load = os.getloadavg()
    phases = ("boot_s", "kernel_to_script_s", "attach_s")
    stats = {name: summary_ms([r[name] for r in rounds]) for name in phases}
    rows = [[name, *(f"{st[k] / 1000:.2f}" for k in ("p50_ms", "max_ms", "mean_ms"))]
            for name, st in stats.items()]
    header = ["phase (s)", "p50", "max", "mean"]
    print_table(f"AoE from the lab kernel on the segment, {args.rounds} boots, load average "
                f"{load[0]:.1f}", rows, header)
    verdict = Verdict("AoE from the dom0-style kernel")
    verdict.check("rounds that read the LUN and wrote it", sum(r["ok"] for r in rounds), "==",
                  args.rounds)
    verdict.check("AoE attach in the guest, worst", stats["attach_s"]["max_ms"] / 1000, "<=",
                  ATTACH_BOUND_S, "s")
    verdict.print()
    write_json("xen_storage", {"rounds": rounds, "loadavg": load, **verdict.to_dict()},
               args.json)
    return verdict.exit_code()


if __name__ == "__main__":
    sys.exit(main())
