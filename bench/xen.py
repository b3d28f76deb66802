"""Xen hosts in QEMU (issue 17 item 4): dom0 boot to agent registered, a PV guest's start to
running in the registry, HA failover after a dom0's machine is killed.

One lab (``gridtool.lab.lab.up(hypervisor="xen")``, the image built once by ``gridtool lab
build-xen-image``): ``--hosts`` dom0s booting at once. Phases (seconds):

* boot: QEMU started -> every dom0's libvirtd answering -> every agent registered;
* guest start: a start intent for PV guest ``ha-pv`` on hv1 -> done -> ``running`` in the
  registry -> its console's ready marker (xenconsoled's log in the dom0);
* failover (``--failover``): hv1's QEMU SIGKILLed -> hv1's host record gone -> ``ha-pv``
  running on another host. The manager runs on the lab machine with the lab's power fence
  agent for every dom0 (:func:`gridtool.lab.xenha.lab_machine_manager`; in a dom0 it could
  not fence another, and an unprotected host gets no HA guest).

    python bench/xen.py [--hosts 2] [--ttl 10] [--failover] [--json PATH]

Under TCG on a shared machine these are slow and noisy: the load average is printed with
every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import print_table
from verdict import Verdict

from gridtool.config import load
from gridtool.lab import lab as labmod
from gridtool.lab import xenimage, xenlab
from gridtool.lab.procs import wait_for
from gridtool.lab.xenha import lab_machine_manager
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode

GUEST = "ha-pv"


def run(hosts: int, ttl: int, failover: bool) -> dict[str, Any]:
    xenimage.build()
    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-xen-") as tmp:
        directory = Path(tmp) / "lab"
        t0 = time.monotonic()

        def progress(msg: str) -> None:
            marks.setdefault(msg, time.monotonic() - t0)

        state = labmod.up(directory, hosts=hosts, guests=0, ttl=ttl, hypervisor="xen",
                          progress=progress)
        try:
            result: dict[str, Any] = {
                "boot_s": {"libvirtd_answering": _at(marks, "waiting for the dom0s' agents"),
                           "agents_registered": round(time.monotonic() - t0, 1)}}
            with lab_machine_manager(directory, load(state["config"], env={})):
                result["guest_start_s"], where = _guest_start(state)
                if failover:
                    result["failover_s"] = _failover(state, directory, where)
            return result
        finally:
            labmod.down(directory)


def _at(marks: dict[str, float], prefix: str) -> float:
    return round(next(v for k, v in marks.items() if k.startswith(prefix)), 1)


def _guest_start(state: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Define ``ha-pv`` on every host (HA, its disk on each dom0's pool), start it on hv1."""
    cfg = load(state["config"], env={})
    store = EtcdStore(cfg)
    registry = Registry(store, cfg.keys)
    hosts = [xenlab.XenHost.from_dict(h) for h in state["hosts"]]
    import libvirt

    uuid = ""
    for host in hosts:
        conn = libvirt.open(host.libvirt_uri)
        pool = xenlab.ensure_pool(conn)
        vol = pool.createXML(  # type: ignore[attr-defined]
            f"<volume><name>{GUEST}.img</name><capacity unit='MiB'>8</capacity>"
            "<target><format type='raw'/></target></volume>", 0)
        uuid = conn.defineXML(xenlab.pv_guest_xml(GUEST, vol.path())).UUIDString()
        conn.close()
    store.put(cfg.keys.guest_settings(uuid), encode(GuestSettings(uuid, GUEST, ha=True)))
    client = IntentClient(store, cfg.keys)
    t0 = time.monotonic()
    client.wait(client.submit("hv1", "start", uuid, GUEST), 300)
    done = time.monotonic() - t0
    wait_for(lambda: _state(registry, "hv1", uuid) == "running", 120, "ha-pv running")
    running = time.monotonic() - t0
    wait_for(lambda: "GRIDTOOL-HEARTBEAT" in hosts[0].console(GUEST), 300,
             "ha-pv's heartbeats on its console", interval=1.0)
    ready = time.monotonic() - t0
    return ({"intent_done": round(done, 1), "running_in_registry": round(running, 1),
             "console_ready": round(ready, 1)},
            {"store": store, "registry": registry, "uuid": uuid})


def _state(registry: Registry, host: str, uuid: str) -> str | None:
    recs, _ = registry.guests_of(host)
    rec = recs.get(uuid)
    return rec.state if rec else None


def _failover(state: dict[str, Any], directory: Path, where: dict[str, Any]) -> dict[str, float]:
    from gridtool.lab.power import power_off

    registry, uuid = where["registry"], where["uuid"]
    others = [h["name"] for h in state["hosts"] if h["name"] != "hv1"]
    t0 = time.monotonic()
    power_off(directory, "hv1")
    wait_for(lambda: "hv1" not in {h.name for h in registry.list_hosts()[0]}, 120,
             "hv1's record gone", interval=0.2)
    gone = time.monotonic() - t0
    wait_for(lambda: any(_state(registry, h, uuid) == "running" for h in others), 600,
             "ha-pv running elsewhere", interval=0.5)
    return {"host_record_gone": round(gone, 1),
            "running_elsewhere": round(time.monotonic() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = run(args.hosts, args.ttl, args.failover)
    result["loadavg"] = {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]}
    rows = [(phase, step, value) for phase in ("boot_s", "guest_start_s", "failover_s")
            for step, value in result.get(phase, {}).items()]
    print_table(f"Xen lab, {args.hosts} dom0s (TCG), load {result['loadavg']}", rows,
                ["PHASE", "STEP", "SECONDS"])
    verdict = judge(result, args.failover)
    verdict.print()
    result["verdict"] = verdict.to_dict()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return verdict.exit_code()


#: The bench's own deadlines per phase (s): the issue names no figure for Xen under TCG,
#: so each phase is judged as done within the time the lab allows it.
PHASE_BOUNDS = {"boot_s": xenlab.BOOT_TIMEOUT, "guest_start_s": 300.0, "failover_s": 600.0}


def judge(result: dict[str, Any], failover: bool) -> Verdict:
    """Every phase asked for measured, each step within its phase's deadline."""
    verdict = Verdict("Xen lab phases")
    for phase, bound in PHASE_BOUNDS.items():
        if phase == "failover_s" and not failover:
            continue
        steps = result.get(phase) or {"(not measured)": None}
        for step, value in steps.items():
            verdict.check(f"{phase[:-2]}: {step}", value, "<=", bound, "s")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
