"""Xen hosts in QEMU (issue 17 item 4): dom0 boot to agent registered, a PV guest's start to
running in the registry, HA failover after a dom0's machine is killed.

One lab (``gridtool.lab.lab.up(hypervisor="xen")``, the image built once by ``gridtool lab
build-xen-image``): ``--hosts`` dom0s booting at once. Phases (seconds):

* boot: QEMU started -> every dom0's libvirtd answering -> every agent registered;
* guest start: a start intent for PV guest ``ha-pv`` on hv1 -> done -> ``running`` in the
  registry -> its console's ready marker (heartbeats through ``xl console``);
* AoE vs iSCSI guest start: the same for a PV guest whose disk is the dom0 kernel's
  ``/dev/etherd/e0.1`` (``aoe-pv``), then one on its iSCSI LUN
  ``/dev/disk/by-path/...-iscsi-...-lun-1`` (``iscsi-pv``: the agent's ``sg_persist``
  REGISTER and RESERVE come first), both on the lab segment;
* failover (``--failover``): hv1's QEMU SIGKILLed -> hv1's host record gone -> ``ha-pv``
  running on another host. The manager runs on the lab machine with the lab's power fence
  agent for every dom0 (:func:`gridtool.lab.xenha.lab_machine_manager`; in a dom0 it could
  not fence another, and an unprotected host gets no HA guest).

    python bench/xen.py [--hosts 2] [--ttl 60] [--failover] [--no-luns] [--json PATH]

Under TCG on a shared machine these are slow and noisy: the load average is printed with
every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import print_table
from verdict import Verdict

from gridtool.config import load
from gridtool.errors import GridtoolError
from gridtool.lab import dom0storage, xenimage, xenlab
from gridtool.lab import lab as labmod
from gridtool.lab.procs import LabError, wait_for
from gridtool.lab.xenha import lab_machine_manager
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode

GUEST = "ha-pv"
#: The agents' lease TTL (the Xen tier's, tests/harness/xenbed.py).
TTL = 60


def run(hosts: int, ttl: int, failover: bool, luns: bool = True) -> dict[str, Any]:
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
                if luns:
                    result["lun_start_s"] = _lun_starts(state, where)
                if failover:
                    result["failover_s"] = _failover(state, directory, where)
            return result
        finally:
            labmod.down(directory)


def _at(marks: dict[str, float], prefix: str) -> float:
    return round(next(v for k, v in marks.items() if k.startswith(prefix)), 1)


def _guest_start(state: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, Any]]:
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
    where = {"store": store, "registry": registry, "uuid": uuid, "cfg": cfg, "host": hosts[0]}
    return _timed_start(where, uuid, GUEST), where


def _timed_start(where: dict[str, Any], uuid: str, name: str) -> dict[str, float | None]:
    """Start guest ``name`` on hv1 through its agent: seconds to the intent done, to
    ``running`` in the registry, to heartbeats on its console; a step not reached within
    its deadline (and those after it) is None, which fails the verdict."""
    registry, host = where["registry"], where["host"]
    client = IntentClient(where["store"], where["cfg"].keys)
    steps: dict[str, float | None] = dict.fromkeys(
        ("intent_done", "running_in_registry", "console_ready"))
    t0 = time.monotonic()
    try:
        client.wait(client.submit("hv1", "start", uuid, name), 300)
        steps["intent_done"] = round(time.monotonic() - t0, 1)
        wait_for(lambda: _state(registry, "hv1", uuid) == "running", 120, f"{name} running")
        steps["running_in_registry"] = round(time.monotonic() - t0, 1)
        wait_for(lambda: "GRIDTOOL-HEARTBEAT" in host.console(name), 300,
                 f"{name}'s heartbeats on its console", interval=1.0)
        steps["console_ready"] = round(time.monotonic() - t0, 1)
    except (LabError, GridtoolError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        print(_agent_log(host), file=sys.stderr)
    return steps


def _agent_log(host: xenlab.XenHost, lines: int = 80) -> str:
    """The dom0 agent's last journal lines (why a step missed its deadline)."""
    try:
        shown = host.ssh(f"journalctl -b -o short-monotonic -u gridtool-agent | tail -n {lines}",
                         timeout=120)
    except subprocess.TimeoutExpired:
        return f"({host.name}'s agent journal: ssh did not finish in 120 s)"
    return f"--- {host.name}'s agent journal, last {lines} lines ---\n{shown.stdout}"


def _lun_starts(state: dict[str, Any], where: dict[str, Any]) -> dict[str, float | None]:
    """A PV guest on hv1's AoE LUN, then one on its iSCSI LUN, each started and timed."""
    import libvirt

    devices = dom0storage.devices(state)
    result: dict[str, float | None] = {}
    for kind, name in (("aoe", "aoe-pv"), ("iscsi", "iscsi-pv")):
        conn = libvirt.open(where["host"].libvirt_uri)
        try:
            uuid = conn.defineXML(xenlab.pv_guest_xml(name, devices[kind][0])).UUIDString()
        finally:
            conn.close()
        for step, seconds in _timed_start(where, uuid, name).items():
            result[f"{kind}: {step}"] = seconds
    return result


def _state(registry: Registry, host: str, uuid: str) -> str | None:
    recs, _ = registry.guests_of(host)
    rec = recs.get(uuid)
    return rec.state if rec else None


def _failover(state: dict[str, Any], directory: Path,
              where: dict[str, Any]) -> dict[str, float | None]:
    from gridtool.lab.power import power_off

    registry, uuid = where["registry"], where["uuid"]
    others = [h["name"] for h in state["hosts"] if h["name"] != "hv1"]
    if "hv1" not in {h.name for h in registry.list_hosts()[0]} \
            or _state(registry, "hv1", uuid) != "running":
        # nothing to measure (seen: hv1's agent lost its lease during a hung start and the
        # manager had already restarted ha-pv elsewhere: 0 s would read as a pass)
        print("failover: not measured: ha-pv is not running on a registered hv1 before "
              "the power-off", file=sys.stderr)
        return {"host_record_gone": None, "running_elsewhere": None}
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
    # a TCG dom0 busy with a guest's start misses a 10 s lease's keepalives: the lab
    # machine's manager then powers it off as lost and restarts ha-pv elsewhere, and the
    # next start on it (the iSCSI guest's) never ends: the Xen tier's TTL
    parser.add_argument("--ttl", type=int, default=TTL)
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--no-luns", action="store_true",
                        help="skip the AoE vs iSCSI guest start phase")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = run(args.hosts, args.ttl, args.failover, not args.no_luns)
    result["loadavg"] = {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]}
    rows = [(phase, step, value) for phase in PHASE_BOUNDS
            for step, value in result.get(phase, {}).items()]
    print_table(f"Xen lab, {args.hosts} dom0s (TCG), load {result['loadavg']}", rows,
                ["PHASE", "STEP", "SECONDS"])
    verdict = judge(result, args.failover, not args.no_luns)
    verdict.print()
    result["verdict"] = verdict.to_dict()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return verdict.exit_code()


#: The bench's own deadlines per phase (s): the issue names no figure for Xen under TCG,
#: so each phase is judged as done within the time the lab allows it.
PHASE_BOUNDS = {"boot_s": xenlab.BOOT_TIMEOUT, "guest_start_s": 300.0, "lun_start_s": 300.0,
                "failover_s": 600.0}


def judge(result: dict[str, Any], failover: bool, luns: bool = True) -> Verdict:
    """Every phase asked for measured, each step within its phase's deadline."""
    verdict = Verdict("Xen lab phases")
    skipped = {"failover_s": not failover, "lun_start_s": not luns}
    for phase, bound in PHASE_BOUNDS.items():
        if skipped.get(phase):
            continue
        steps = result.get(phase) or {"(not measured)": None}
        for step, value in steps.items():
            verdict.check(f"{phase[:-2]}: {step}", value, "<=", bound, "s")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
