"""Warm pool workers against a cold clone, on the QEMU lab (TCG, 128 MiB guests).

Starts a real etcd and one namespaced libvirtd QEMU host with its agent, freezes the lab
guest as a template with the ready marker ``GRIDTOOL-READY``, and creates a pool of it.
The clones' overlays are in the lab's shared dir, so every worker is fenced: a wake
goes through the fences and (for a restore) libvirt's hook like any start.

Per round, three phases in the same run, each from the scale-up decision (the moment
the keeper calls the wake or the clone; ``t0``):

- ``hibernate``: a warm worker cloned, booted to its ready marker and hibernated
  (libvirt managed save, :func:`gridtool.pools.warm.refill`) is woken
  (:func:`gridtool.pools.warm.start_wake`, what the pool round calls: it records the
  worker ``waking`` and sends the wake intent, and returns; then this bench waits for
  the intent's outcome and calls :func:`gridtool.pools.warm.mark_awake`, the next
  round's step): the agent starts it, which restores the managed save image through
  the hook;
- ``pause``: the same with a paused worker (resumed after its fences are checked);
- ``cold``: a new clone booted until its ready marker (``clone_guests``).

Columns (seconds after ``t0``): ``round`` the pool round's part (record the worker
``waking``, send the wake; for cold: submit the clone intent), after which the round
returns; ``libvirt`` the agent's restore/resume (or overlay +
define + start) call; ``agent alive`` when the agent saw the guest write to its console
after the wake (for cold: the ready marker, by the agent's clock); ``ready`` when the
caller saw the outcome (the wake intent done: the agent reports it only once the guest
wrote anew; the cold clone reported ready in the registry); ``heartbeat`` when this
bench, reading the serial file itself from ``t0``, saw a new ``GRIDTOOL-HEARTBEAT`` line
(a line written after the wake: a resumed/restored guest is alive, not its stale
marker from before the sleep). Also: the time to put a worker to sleep, and whether
the restore asked the hook (``op=restore`` in the agent's log).

Target (README, issue 15): a warm worker ``ready`` <= 1.5 s after the decision, at the
median round of each warm mode. Exits 1 when a target fails, 2 when QEMU cannot run.
The load average at start and end is printed and written (a shared machine is noisy).

    python bench/warm_pool.py [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import on_qemu_lab, percentile, print_table, summary_ms, write_json
from verdict import Verdict

from gridtool.clone.rules import serial_file
from gridtool.clone.shell import clone_guests, create_template, remove_clone
from gridtool.config import Config
from gridtool.lab import qemu
from gridtool.lab.etcd import EtcdCluster
from gridtool.pools import shell as pools
from gridtool.pools import warm
from gridtool.pools.rules import WARM_ASLEEP
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient
from gridtool.registry.store import Store
from tests.harness import qemu_testbed
from tests.harness.testbed import wait_until

MODES = ("hibernate", "pause")
COLUMNS = ("round", "libvirt", "agent_alive", "ready", "heartbeat")
TARGET_WARM_READY_S = 1.5
#: The pool round's part of a wake (record, send): it must not wait for the wake.
TARGET_ROUND_S = 1.0


class HeartbeatAfter:
    """Scans a serial file from ``before`` bytes (a file started afresh: from its start)
    for the first new heartbeat line; ``seconds`` after ``began`` (a monotonic time)."""

    def __init__(self, path: str, before: int, began: float, timeout: float = 60.0) -> None:
        self.path, self.before, self.began, self.timeout = path, before, began, timeout
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self.scan, daemon=True)

    def start(self) -> HeartbeatAfter:
        self._thread.start()
        return self

    def wait(self) -> float | None:
        self._thread.join(self.timeout + 1)
        return self.seconds

    def scan(self) -> float | None:
        marker = qemu.HEARTBEAT.encode()
        while time.monotonic() - self.began < self.timeout:
            try:
                data = Path(self.path).read_bytes()
            except OSError:
                data = b""
            new = data if len(data) < self.before else data[self.before:]
            at = new.find(marker)
            if at >= 0 and b"\n" in new[at:]:
                self.seconds = time.monotonic() - self.began
                break
            time.sleep(0.005)
        return self.seconds


def console_of(hosts: qemu_testbed.QemuHosts, uuid_: str) -> str:
    xml = hosts.conn("hv1").lookupByUUIDString(uuid_).XMLDesc(0)
    return serial_file(ET.fromstring(xml))


def size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def asleep_member(store: Store, cfg: Config, pool: str) -> tuple[str, str, str]:
    found = [(u, m.name, m.host) for u, m in pools.members(store, cfg.keys, pool).items()
             if m.warm == WARM_ASLEEP]
    assert len(found) == 1, found
    return found[0]


def warm_round(store: Store, cfg: Config, hosts: qemu_testbed.QemuHosts,
               spec: pools.PoolSpec) -> dict[str, float | str]:
    """One warm worker made, put to sleep, then woken from the decision on."""
    errors = warm.refill(store, cfg, spec, 1, timeout=180.0)
    if errors:
        raise RuntimeError(f"refill: {errors[0]}")
    uuid_, name, host = asleep_member(store, cfg, spec.name)
    path = console_of(hosts, uuid_)
    log_before = len(hosts.agent_log("hv1"))
    t0 = time.monotonic()  # the decision
    watcher = HeartbeatAfter(path, size_of(path), t0).start()
    intent_id = warm.start_wake(store, cfg, spec.name, uuid_, name, host)  # the round's
    sent = time.monotonic() - t0
    if not intent_id:
        raise RuntimeError(f"wake {name}: not sent")
    done = IntentClient(store, cfg.keys).wait(warm.wake_intent(uuid_, name, host, intent_id),
                                              60.0, raise_failed=False)
    ready = time.monotonic() - t0
    if done.state != "done":
        raise RuntimeError(f"wake {name}: {done.message}")
    if not warm.mark_awake(store, cfg, spec.name, uuid_, name):  # the next round's
        raise RuntimeError(f"wake {name}: not recorded serving")
    timings = (done.params.get("result") or {}).get("timings") or {}
    heartbeat = watcher.wait()
    ops = re.findall(rf"event=hook_(\w+) host=hv1 guest={re.escape(name)} op=(\w+)",
                     hosts.agent_log("hv1")[log_before:])
    rec = next((g for g in Registry(store, cfg.keys).guests_of("hv1")[0].values()
                if g.uuid == uuid_), None)
    fenced = bool(rec and rec.fenced)
    remove_clone(store, cfg, host, uuid_, name, pool=spec.name)
    return {"name": name, "round": sent, "libvirt": float(timings.get("wake", "nan")),
            "agent_alive": float(timings.get("alive", "nan")), "ready": ready,
            "heartbeat": float("nan") if heartbeat is None else heartbeat,
            "hook_restore": ",".join(f"{op} {how}" for how, op in ops) or "none",
            "fenced": "yes" if fenced else "no"}


def cold_round(store: Store, cfg: Config, hosts: qemu_testbed.QemuHosts,
               n: int) -> dict[str, float | str]:
    """One cold clone booted to its ready marker, from the decision on (its serial file,
    named after it, watched from the decision)."""
    t0 = time.monotonic()
    watcher = HeartbeatAfter(str(hosts.serial / f"cold{n}-1.log"), 0, t0,
                             timeout=240.0).start()  # (a TCG boot under load: minutes)
    (result,) = clone_guests(store, cfg, "tiny", 1, name_prefix=f"cold{n}-", timeout=180.0)
    ready = time.monotonic() - t0  # (the pool round waits for it: "round" = "ready")
    if not result.ok:
        raise RuntimeError(f"cold clone: {result.error}")
    heartbeat = watcher.wait()
    t = result.timings
    remove_clone(store, cfg, result.host, result.uuid, result.name)
    return {"name": result.name, "round": ready,
            "libvirt": sum(t.get(p, 0.0) for p in ("overlay", "define", "start")),
            "agent_alive": t.get("boot", float("nan")), "ready": ready,
            "heartbeat": float("nan") if heartbeat is None else heartbeat,
            "hook_restore": "-", "fenced": "-"}


def judge(rows: dict[str, list[dict[str, float | str]]], rounds: int) -> Verdict:
    verdict = Verdict("warm pool")
    for mode in MODES:
        done = [float(r["ready"]) for r in rows[mode]]
        verdict.check(f"{mode}: rounds done", len(done), "==", rounds)
        verdict.check(f"{mode}: decision -> ready, median round",
                      percentile(done, 50) if done else None, "<=", TARGET_WARM_READY_S, "s")
        verdict.check(f"{mode}: the pool round's part of the wake, worst round",
                      max((float(r["round"]) for r in rows[mode]), default=None), "<=",
                      TARGET_ROUND_S, "s")
        verdict.check(f"{mode}: alive after the wake, every round",
                      all(float(r["heartbeat"]) == float(r["heartbeat"]) for r in rows[mode]),
                      "==", True)
    verdict.check("hibernate: every restore asked the hook",
                  all("restore allowed" in str(r["hook_restore"]) for r in rows["hibernate"]),
                  "==", True)
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    return on_qemu_lab("warm_pool", run, args)


def run(base: Path, cluster: EtcdCluster, args: argparse.Namespace) -> int:
    load_start = os.getloadavg()
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix=f"/bench-{uuid.uuid4().hex[:8]}/",
                 ttl=5, resync_interval=5.0,
                 images_dir=str(base / "lab" / "shared" / "images"))  # fenced clones
    store = EtcdStore(cfg)
    registry = Registry(store, cfg.keys)
    hosts = qemu_testbed.QemuHosts(base / "lab", cfg)
    try:
        hosts.add("hv1")
        hosts.start_agent("hv1", images_dir=cfg.images_dir)  # (overlays in the shared dir)
        wait_until(lambda: len(registry.list_hosts()[0]) == 1, 30, what="the host")
        hosts.define("hv1", "tiny")
        wait_until(lambda: any(g.name == "tiny" for g in registry.list_guests()[0]), 20,
                   what="the template guest")
        create_template(store, cfg, "tiny", "tiny", ready_marker=qemu.READY)
        spec = pools.create(store, cfg.keys, pools.new_spec("bench", "tiny", 0, 4, warm=1))
        rows: dict[str, list[dict[str, float | str]]] = {m: [] for m in (*MODES, "cold")}
        for n in range(1, args.rounds + 1):
            for mode in MODES:
                rows[mode].append(warm_round(store, cfg, hosts, replace(spec, warm_mode=mode)))
            rows["cold"].append(cold_round(store, cfg, hosts, n))
        table = [(phase, n + 1, r["name"], *(r[c] for c in COLUMNS), r["fenced"],
              r["hook_restore"])
                 for phase, found in rows.items() for n, r in enumerate(found)]
        load_end = os.getloadavg()
        print_table(f"decision -> ready of one worker, 128 MiB TCG guest, {args.rounds} rounds "
                    f"(seconds after the decision; load {load_start[0]:.1f} -> "
                    f"{load_end[0]:.1f})", table,
                    ["PHASE", "N", "WORKER", "ROUND", "LIBVIRT", "AGENT ALIVE", "READY",
                     "HEARTBEAT", "FENCED", "HOOK"])
        medians = {phase: {c: percentile([float(r[c]) for r in found], 50) for c in COLUMNS}
                   for phase, found in rows.items()}
        print_table("medians", [(p, *(m[c] for c in COLUMNS)) for p, m in medians.items()],
                    ["PHASE", "ROUND", "LIBVIRT", "AGENT ALIVE", "READY", "HEARTBEAT"])
        verdict = judge(rows, args.rounds)
        verdict.print()
        write_json("warm_pool", {
            "params": {"rounds": args.rounds, "memory_mib": 128, "accel": hosts.image.accel},
            "load_average": {"start": load_start, "end": load_end},
            "rows": rows, "medians_s": medians,
            "ready": {phase: summary_ms([float(r["ready"]) for r in found])
                      for phase, found in rows.items()},
            **verdict.to_dict(),
        }, args.json_path)
        return verdict.exit_code()
    finally:
        hosts.close()
        store.delete_prefix(cfg.prefix)
        store.close()


if __name__ == "__main__":
    sys.exit(main())
