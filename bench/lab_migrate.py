"""Cold migration in the lab: how long each phase of a migration takes.

Starts a real etcd and two libvirtd test-driver hosts with their agents, runs GUESTS
guests on hv1 (half of them on shared storage, so fenced: a third of those HA, the rest
pinned), then migrates every guest to the other host, one after another, ROUNDS times
(round 2 moves them back), through the same ``Migrator`` the CLI uses. Reports per phase
(define on the destination, stop + fence handover on the source, start on the
destination, undefine on the source) and per migration the p50/p99/max/mean; an
independent checker samples every host's libvirt: a guest must never run on two hosts.
Targets: every migration done, every guest on its destination, 0 double-run samples.
Exits 1 when a target fails.

    python bench/lab_migrate.py [--guests 20] [--rounds 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt
from benchlib import lab_etcd, print_table, summary_ms, write_json
from verdict import Verdict

from gridtool.config import Config
from gridtool.lab.etcd import EtcdCluster
from gridtool.placement.shell import Migrator
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.intents import IntentClient
from gridtool.registry.records import GuestSettings, encode
from tests.harness.checker import DoubleRunChecker
from tests.harness.testbed import LabHosts, domain_xml, wait_until

HOSTS = ("hv1", "hv2")
PHASES = ("define", "stop", "start", "undefine")


def guest_xml(i: int) -> tuple[str, str, bool, bool]:
    """(name, xml, fenced, ha) of guest ``i``: even ones on AoE shelf 20, every third
    fenced one HA."""
    name = f"mig{i:02d}"
    fenced = i % 2 == 0
    xml = domain_xml(name, disk=f"/dev/etherd/e20.{i}" if fenced else None, block=fenced)
    return name, xml, fenced, fenced and i % 3 == 0


def run(base: Path, cluster: EtcdCluster, guests: int, rounds: int) -> dict:
    prefix = f"/bench-migrate-{uuid.uuid4().hex[:6]}/"
    cfg = Config(endpoints=tuple(cluster.endpoints), prefix=prefix, ttl=10, timeout=5.0)
    store = EtcdStore(cfg)
    registry = Registry(store, cfg.keys)
    hosts = LabHosts(base / "hosts", cfg)
    try:
        for name in HOSTS:
            hosts.add(name)
        for name in HOSTS:
            hosts.start_agent(name)
        wait_until(lambda: len(registry.list_hosts()[0]) == len(HOSTS), what="hosts")
        kinds: dict[str, tuple[bool, bool]] = {}
        client = IntentClient(store, cfg.keys)
        for i in range(guests):
            name, xml, fenced, ha = guest_xml(i)
            guest = hosts.conn("hv1").defineXML(xml).UUIDString()
            kinds[name] = (fenced, ha)
            if ha:
                store.put(cfg.keys.guest_settings(guest),
                          encode(GuestSettings(guest, name, ha=True)))
            key = cfg.keys.guest("hv1", guest)
            wait_until(lambda key=key: store.get(key), what=f"{name} recorded")
            client.wait(client.submit("hv1", "start", guest, name), 30)
        wait_until(lambda: sum(g.state == "running" for g in registry.guests_of("hv1")[0]
                               .values()) == guests, what="guests running")
        migrations: list[dict] = []
        migrator = Migrator(store, cfg.keys, shutdown_timeout=30)
        with DoubleRunChecker(lambda: hosts.conns, interval=0.01) as checker:
            for r in range(rounds):
                source, target = (HOSTS[0], HOSTS[1]) if r % 2 == 0 else (HOSTS[1], HOSTS[0])
                records = sorted((g for g in registry.guests_of(source)[0].values()
                                  if g.state == "running"), key=lambda g: g.name)
                for rec in records:
                    result = migrator.migrate(rec, target)
                    fenced, ha = kinds[rec.name]
                    doc = result.to_dict()  # with unrounded seconds for the statistics
                    doc["seconds"] = result.seconds
                    for entry, event in zip(doc["phases"], result.phases, strict=True):
                        entry["seconds"] = event.seconds
                    migrations.append({**doc, "fenced": fenced, "ha": ha})
                    if not result.ok:
                        raise SystemExit(f"migration failed: {result.message}")
        final = {n: [h for h, c in hosts.conns.items() for d in c.listAllDomains(
            libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING) if d.name() == n] for n in kinds}
        expected = HOSTS[1] if rounds % 2 else HOSTS[0]
        return {"migrations": migrations, "overlaps": len(checker.overlaps),
                "overlap_s": checker.overlap_seconds, "samples": checker.samples,
                "all_on_target": all(v == [expected] for v in final.values())}
    finally:
        hosts.close()
        store.delete_prefix(prefix)
        store.close()


def judge(out: dict, guests: int, rounds: int) -> Verdict:
    """Every migration done and landed, never a guest on two hosts."""
    verdict = Verdict("cold migration")
    migrations = out["migrations"]
    verdict.check("migrations done", sum(bool(m["ok"]) for m in migrations), "==",
                  guests * rounds)
    verdict.check("every guest on its destination", bool(out["all_on_target"]), "==", True)
    verdict.check("double-run samples", out["overlaps"], "==", 0)
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    with lab_etcd() as (tmp, cluster):
        out = run(Path(tmp), cluster, args.guests, args.rounds)
    migrations = out["migrations"]
    rows, summary = [], {}
    groups = (("fenced", [m for m in migrations if m["fenced"]]),
              ("unfenced", [m for m in migrations if not m["fenced"]]),
              ("all", migrations))
    for label, group in groups:
        for phase in (*PHASES, "total"):
            values = ([m["seconds"] for m in group] if phase == "total" else
                      [p["seconds"] for m in group for p in m["phases"] if p["phase"] == phase])
            if not values:
                continue
            s = summary_ms(values)
            summary.setdefault(label, {})[phase] = s
            rows.append((label, phase, s["count"], s["p50_ms"], s["p99_ms"], s["max_ms"],
                         s["mean_ms"]))
    print_table(f"cold migration, {args.guests} guests x {args.rounds} round(s), test driver "
                "(ms per phase)", rows,
                ["guests", "phase", "n", "p50 ms", "p99 ms", "max ms", "mean ms"])
    print(f"\n{len(migrations)} migrations; double-run samples with overlap: "
          f"{out['overlaps']} of {out['samples']}")
    verdict = judge(out, args.guests, args.rounds)
    verdict.print()
    write_json("lab_migrate", {"guests": args.guests, "rounds": args.rounds,
                               "summary": summary, "overlaps": out["overlaps"],
                               "overlap_s": out["overlap_s"], "samples": out["samples"],
                               "migrations": migrations, **verdict.to_dict()},
               args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
