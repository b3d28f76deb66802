"""Shared storage from a dom0-style kernel on the lab's L2 segment: how long a plain QEMU
(TCG) machine with the lab's Debian kernel takes to attach AoE (NIC up, ``modprobe aoe``,
discover, ``/dev/etherd/e0.1`` there: the real boot script, ``gridtool/lab/data/
dom0-storage.sh``) and the whole boot to power-off, over ``--rounds`` boots on one segment
with one vblade. The guest reads the test's marker from the LUN and writes a token back
(checked each round). iSCSI login + ``sg_persist`` from the dom0 kernel (and so "AoE vs
iSCSI guest start") needs the Xen dom0 image with open-iscsi (issue 17 item 1).

    python bench/xen_storage.py [--rounds 3] [--json PATH]
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

from gridtool.lab import aoe as lab_aoe
from gridtool.lab import dom0storage, qemu, segment
from tests.harness import aoe_guest

_UPTIME = re.compile(r"UPTIME-(BEFORE|AFTER) ([\d.]+)")


def one_boot(state: dict[str, Any], plan: dom0storage.HostStorage) -> dict[str, float]:
    targets = lab_aoe.AoeTargets.from_dict(state["aoe"])
    marker, token = secrets.token_hex(8), secrets.token_hex(4)
    with targets.lun_path(1).open("r+b") as fh:
        fh.write(marker.encode())
    start = time.monotonic()
    out = aoe_guest.boot([*plan.kernel_args, f"gridtool.token={token}"], plan.qemu_args, 600)
    wall = time.monotonic() - start
    with targets.lun_path(1).open("rb") as fh:
        fh.seek(512)
        wrote = fh.read(20) == f"GUEST-WROTE {token}".encode()
    up = dict(_UPTIME.findall(out))
    if not (wrote and f"AOE-READ {marker}" in out and len(up) == 2):
        raise SystemExit(f"xen_storage: the round failed; console:\n{out[-2000:]}")
    return {"boot_s": wall, "attach_s": float(up["AFTER"]) - float(up["BEFORE"]),
            "kernel_to_script_s": float(up["BEFORE"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    why = qemu.unavailable() or segment.unavailable()
    if why:
        print(f"xen_storage: cannot run here: {why}", file=sys.stderr)
        return 2
    aoe_guest.initramfs()  # built (once) outside the timings
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
    stats = {name: summary_ms([r[name] for r in rounds]) for name in rounds[0]}
    rows = [[name, *(f"{st[k] / 1000:.2f}" for k in ("p50_ms", "max_ms", "mean_ms"))]
            for name, st in stats.items()]
    header = ["phase (s)", "p50", "max", "mean"]
    print_table(f"AoE from the lab kernel on the segment, {args.rounds} boots, load average "
                f"{load[0]:.1f}", rows, header)
    write_json("xen_storage", {"rounds": rounds, "loadavg": load}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
