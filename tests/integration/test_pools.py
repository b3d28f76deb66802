"""Worker pools end to end: real agents clone workers from a template, the leader-elected
manager keeps a pool at size (regrowing it elsewhere when a host dies), fills overflow
hosts only when the dedicated ones are full and empties them first, follows load reports
for a flex pool, and the CLI creates, scales, shows and deletes pools."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import gridtool as gridtool_api
from gridtool.clone.shell import create_template
from gridtool.ha.manager import Manager
from gridtool.pools import shell as pools
from tests.harness.testbed import AGO, domain_xml, wait_until
from tests.harness.testbed import run_cli as gridtool


def start_fleet(lab_hosts, registry, store, cfg, hosts: dict[str, tuple[str, ...]],  # type: ignore[no-untyped-def]
                memory_mib: int, **agent: object) -> None:
    """Hosts with agents (name -> labels; ``agent``: more settings of each) and a
    template ``w`` of ``memory_mib``."""
    for name in hosts:
        lab_hosts.add(name)
    for name, labels in hosts.items():
        lab_hosts.start_agent(name, labels=labels, **agent)
    wait_until(lambda: len(registry.list_hosts()[0]) == len(hosts), what="hosts registered")
    first = next(iter(hosts))
    lab_hosts.conn(first).defineXML(domain_xml("w-src", memory_mib=memory_mib,
                                               disk="/var/lib/nowhere/w.qcow2"))
    wait_until(lambda: registry.guests_of(first)[0], what="template source synced")
    create_template(store, cfg, "w", "w-src", timeout=30)


def run_manager(store, cfg, name: str):  # type: ignore[no-untyped-def]
    """A manager candidate on its own thread: (manager, stop it: it resigns)."""
    stop = threading.Event()
    mgr = Manager(cfg, store, name, period=0.2, pool_period=0.3)
    thread = threading.Thread(target=mgr.run, args=(stop,))
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(30)
    return mgr, end


@pytest.fixture
def manager(store, cfg):  # type: ignore[no-untyped-def]
    mgr, end = run_manager(store, cfg, "m1")
    yield mgr
    end()


def running_members(store, cfg, registry, pool: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """uuid -> host of the pool's members that run on a live host."""
    hosts, views = pools.observe(store, cfg.keys, pool)
    live = {h.name for h in hosts}
    return {v.uuid: v.host for v in views if v.state == "running" and v.host in live}


def overlays(lab_hosts, host: str) -> list[Path]:  # type: ignore[no-untyped-def]
    return sorted(Path(lab_hosts.images_dir, "clones", host).glob("*.qcow2"))


def test_pool_kept_at_size_and_regrown_after_a_host_dies(lab_hosts, registry, store, cfg,  # type: ignore[no-untyped-def]
                                                         manager, capsys):
    start_fleet(lab_hosts, registry, store, cfg, {"hv1": (), "hv2": (), "hv3": ()}, 128)
    code, _, err = gridtool(cfg, capsys, "pool", "create", "workers", "--template", "w",
                            "--min", "2", "--max", "10", "--size", "8")
    assert code == 0 and "pool workers created: 8 worker(s)" in err
    members = wait_until(lambda: len(m := running_members(store, cfg, registry, "workers"))
                         == 8 and m, timeout=30, what="8 workers running")
    by_host = Counter(members.values())
    assert set(by_host) == {"hv1", "hv2", "hv3"}  # spread over the dedicated hosts

    code, out, _ = gridtool(cfg, capsys, "pool", "show", "workers", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["target"] == 8 and len(doc["members"]) == 8
    assert {m["class"] for m in doc["members"]} == {"ready"}
    code, out, _ = gridtool(cfg, capsys, "pool", "list", "--json")
    assert [(p["name"], p["target"], p["members"]) for p in json.loads(out)["pools"]] == [
        ("workers", 8, 8)]
    code, out, _ = gridtool(cfg, capsys, "pool", "list")
    assert code == 0 and out.splitlines()[1].split()[:7] == [
        "workers", "w", "fixed", "2", "10", "8", "8"]
    code, out, _ = gridtool(cfg, capsys, "pool", "show", "workers")
    assert code == 0 and "8 (min 2, max 10)" in out and out.count(" ready ") == 8
    assert re.search(rf"^created\s+{AGO}\s*$", out, re.M), out
    assert re.search(rf"^last round\s+{AGO}\s*$", out, re.M), out

    victim = by_host.most_common(1)[0][0]
    lab_hosts.stop_agent(victim, kill=True)  # power off: agent gone, then its guests
    for dom in lab_hosts.conn(victim).listAllDomains(1):  # active ones
        dom.destroy()
    regrown = wait_until(
        lambda: len(m := running_members(store, cfg, registry, "workers")) == 8
        and victim not in m.values() and len(pools.members(store, cfg.keys, "workers")) == 8
        and m, timeout=cfg.ttl + 30, what=f"the pool to regrow to 8 without {victim}")
    assert set(regrown.values()) == {"hv1", "hv2", "hv3"} - {victim}
    assert set(members) - set(regrown)  # the lost workers were replaced by new ones
    status = pools.status(store, cfg.keys, "workers")
    assert status is not None and status.desired == 8

    # bad input: one line, distinct exit codes, nothing changed
    assert gridtool(cfg, capsys, "pool", "scale", "nope", "3")[0] == 3
    assert gridtool(cfg, capsys, "pool", "show", "nope")[0] == 3
    assert gridtool(cfg, capsys, "pool", "scale", "workers", "11")[0] == 2
    assert gridtool(cfg, capsys, "pool", "create", "x", "--template", "w", "--min", "3",
                    "--max", "2")[0] == 2
    assert gridtool(cfg, capsys, "pool", "create", "x", "--template", "nope", "--min", "1",
                    "--max", "2")[0] == 3
    assert gridtool(cfg, capsys, "pool", "create", "workers", "--template", "w", "--min", "1",
                    "--max", "2")[0] == 7
    assert [s.name for s in pools.list_specs(store, cfg.keys)] == ["workers"]


def test_overflow_used_last_emptied_first_and_delete(lab_hosts, registry, store, cfg,  # type: ignore[no-untyped-def]
                                                     manager, capsys, monkeypatch):
    start_fleet(lab_hosts, registry, store, cfg, {"hv1": ("dedicated",), "ov1": ("overflow",)},
                1024)
    per_host = registry.get_host("hv1").memory_mib // 1024
    assert per_host >= 2
    code, _, _ = gridtool(cfg, capsys, "pool", "create", "batch", "--template", "w", "--min",
                          "0", "--max", str(2 * per_host), "--size", str(per_host))
    assert code == 0
    first = wait_until(lambda: len(m := running_members(store, cfg, registry, "batch"))
                       == per_host and m, timeout=30, what="dedicated host filled")
    assert set(first.values()) == {"hv1"}  # the overflow host is not used while hv1 has room
    wait_until(lambda: registry.get_host("hv1").free_memory_mib < 1024, what="hv1 full")

    monkeypatch.setenv("GRIDTOOL_ENDPOINTS", ",".join(cfg.endpoints))
    monkeypatch.setenv("GRIDTOOL_PREFIX", cfg.prefix)
    try:  # what an outside policy engine calls
        assert gridtool_api.set_desired("batch", per_host + 2) == per_host + 2
    finally:
        pools.close_api_stores()
    grown = wait_until(lambda: len(m := running_members(store, cfg, registry, "batch"))
                       == per_host + 2 and m, timeout=30, what="overflow workers")
    assert Counter(grown.values()) == {"hv1": per_host, "ov1": 2}
    assert len(overlays(lab_hosts, "ov1")) == 2

    assert gridtool(cfg, capsys, "pool", "scale", "batch", str(per_host))[0] == 0
    wait_until(lambda: not overlays(lab_hosts, "ov1")
               and len(pools.members(store, cfg.keys, "batch")) == per_host,
               timeout=30, what="overflow emptied and its overlays removed")
    assert running_members(store, cfg, registry, "batch") == first  # dedicated ones kept
    assert not [d for d in lab_hosts.conn("ov1").listAllDomains(0)]

    code, _, err = gridtool(cfg, capsys, "pool", "delete", "batch")
    assert code == 0 and f"{per_host} clone(s) removed" in err
    assert not overlays(lab_hosts, "hv1")
    assert [d.name() for d in lab_hosts.conn("hv1").listAllDomains(0)] == ["w-src"]
    assert store.list(f"{cfg.keys.pools}batch/")[0] == []
    assert gridtool(cfg, capsys, "pool", "delete", "batch")[0] == 3


def test_flex_pool_follows_load_reports(lab_hosts, registry, store, cfg, manager,  # type: ignore[no-untyped-def]
                                        capsys, monkeypatch):
    start_fleet(lab_hosts, registry, store, cfg, {"hv1": ()}, 64)
    code, _, _ = gridtool(cfg, capsys, "pool", "create", "api", "--template", "w", "--min",
                          "1", "--max", "4", "--policy", "flex", "--target-wait", "0.1")
    assert code == 0
    wait_until(lambda: len(running_members(store, cfg, registry, "api")) == 1, timeout=30,
               what="the pool's minimum")
    monkeypatch.setenv("GRIDTOOL_ENDPOINTS", ",".join(cfg.endpoints))
    monkeypatch.setenv("GRIDTOOL_PREFIX", cfg.prefix)
    try:  # the Python API, configured as the CLI is: 10 requests/s of 0.5 s
        gridtool_api.report("api", arrivals=100, completions=100, busy_seconds=50.0, interval=10)
    finally:
        pools.close_api_stores()
    wait_until(lambda: len(running_members(store, cfg, registry, "api")) == 4, timeout=30,
               what="the flex policy to scale up to max")
    code, out, _ = gridtool(cfg, capsys, "pool", "show", "api", "--json")
    flex = json.loads(out)["flex"]
    assert flex["from"] == "manager" and flex["desired"] == 4
    assert flex["service_time"] == pytest.approx(0.5)
    # the smoothed rate starts below the one report's 10/s by an amount that depends on
    # how long after the manager's previous round it came (a short interval is a noisy
    # sample: its Poisson lower bound), so only its bounds and the load's formula are fixed
    assert 0 < flex["smoothed_rate"] <= 10.0 + 1e-9, flex
    assert flex["offered_load"] == pytest.approx(
        (flex["smoothed_rate"] + flex.get("backlog_rate", 0.0)) * flex["service_time"]), flex
    assert json.loads(out)["status"]["decisions"]["up"] >= 1
    code, out, _ = gridtool(cfg, capsys, "pool", "show", "api")
    assert code == 0 and "offered load" in out and "0.500 s" in out
    assert re.search(r"^flex target\s+mean wait <= 0.1 s\s*$", out, re.M), out
    assert gridtool(cfg, capsys, "pool", "scale", "api", "2")[0] == 2  # flex: policy decides
    code, _, _ = gridtool(cfg, capsys, "pool", "report", "api", "--arrivals", "5",
                          "--service-time", "0.5", "--queue-depth", "2", "--interval", "10")
    assert code == 0 and len(pools.samples(store, cfg.keys, "api")) == 2
    assert gridtool(cfg, capsys, "pool", "report", "api", "--arrivals", "-1")[0] == 2
    assert gridtool(cfg, capsys, "pool", "report", "nope", "--arrivals", "1")[0] == 3
    code, _, err = gridtool(cfg, capsys, "pool", "delete", "api", "--keep-guests")
    assert code == 0 and "4 clone(s) kept" in err
    assert len([d for d in lab_hosts.conn("hv1").listAllDomains(0)]) == 5


def test_reports_give_flex_numbers_and_busy_workers_before_any_manager(store, cfg, capsys):  # type: ignore[no-untyped-def]
    pools.create(store, cfg.keys, pools.new_spec("q", "w", 1, 30, policy="flex"))
    for i in (1, 2):  # members as the clone API records them
        store.put(cfg.keys.pool_member("q", f"uuid-{i}"), json.dumps(
            {"v": 1, "host": "hv1", "name": f"q-{i}", "template": "w",
             "created_at": 1.0}).encode())
    pools.report(store, cfg.keys, "q", arrivals=200, completions=200, busy_seconds=9.0,
                 interval=10, source="q-1")
    pools.report(store, cfg.keys, "q", arrivals=100, completions=30, mean_service_time=0.1,
                 interval=10, source="q-2", queue_depth=4)
    numbers = pools.flex_numbers(store, cfg.keys, "q")
    assert numbers["from"] == "reports" and numbers["direction"] == "up"
    assert numbers["service_time"] == pytest.approx(12 / 230)  # (9 + 30 x 0.1) / 230
    assert 20 < numbers["smoothed_rate"] <= 30 and numbers["recommended"] >= 2
    # what an outside engine reads: the same numbers, the measured rate beside them
    engine = pools.engine_numbers(store, cfg.keys, "q")
    # 200/10 s + 100/10 s, over the window from the first report to now
    assert engine["arrival_rate"] == pytest.approx(30.0, rel=0.01)
    assert engine["service_time"] == numbers["service_time"]
    assert engine["intensity"] == pytest.approx(numbers["offered_load"], rel=0.01)  # later
    assert engine["last_decision"]["from"] == "reports"
    code, out, _ = gridtool(cfg, capsys, "pool", "numbers", "q", "--json")
    # a dry run over the reports measures the rate up to "now": a read a moment later may
    # round to one worker more or less (seen: 5 against 4 at load 17)
    shown = json.loads(out)["numbers"]
    assert code == 0 and set(shown) == set(engine), (shown, engine)
    assert abs(shown["recommended"] - engine["recommended"]) <= 1, (shown, engine)
    assert gridtool(cfg, capsys, "pool", "numbers", "nope")[0] == 3
    _, views = pools.observe(store, cfg.keys, "q")
    assert {v.name: (v.busy, v.state) for v in views} == {
        "q-1": (True, "missing"), "q-2": (False, "missing")}
    assert pools.overview(store, cfg.keys)[0]["members"] == 2
    # the reports share one lease; a revoked lease is replaced on the next report
    (lease,) = {i.lease for i in store.list(cfg.keys.pool_samples("q"))[0]}
    store.revoke_lease(lease)
    assert pools.samples(store, cfg.keys, "q") == []
    pools.report(store, cfg.keys, "q", arrivals=1, interval=10, source="q-1")
    (again,) = store.list(cfg.keys.pool_samples("q"))[0]
    assert again.lease not in (0, lease)


def warm_members(store, cfg, pool: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """uuid -> warm state ("" serving) of the pool's members."""
    return {u: m.warm for u, m in pools.members(store, cfg.keys, pool).items()}


def domain_of(lab_hosts, uuid: str):  # type: ignore[no-untyped-def]
    return lab_hosts.conn("hv1").lookupByUUIDString(uuid)


def test_warm_pool_wakes_hibernated_and_paused_workers_first_and_refills(  # type: ignore[no-untyped-def]
        lab_hosts, registry, store, cfg, manager, capsys):
    """On libvirtd's test driver (it has managed save): the warm set is booted then
    hibernated, a scale-up wakes those very workers (restored from managed save) before
    any cold clone, the warm set is refilled to min(warm, max - size), a paused set is
    resumed, and warm workers are reported apart from serving ones."""
    import libvirt

    from gridtool.registry import settings

    start_fleet(lab_hosts, registry, store, cfg, {"hv1": ()}, 64)
    code, _, err = gridtool(cfg, capsys, "pool", "create", "jobs", "--template", "w",
                            "--min", "1", "--max", "4", "--warm", "2")
    assert code == 0 and "2 warm (hibernate)" in err

    def counts() -> tuple[int, int]:  # (serving, asleep)
        states = list(warm_members(store, cfg, "jobs").values())
        return states.count(""), states.count("asleep")

    wait_until(lambda: counts() == (1, 2), timeout=30, what="1 serving, 2 warm asleep")
    asleep = [u for u, w in warm_members(store, cfg, "jobs").items() if w == "asleep"]
    for uuid in asleep:  # hibernated: off, with a managed save image
        dom = domain_of(lab_hosts, uuid)
        assert not dom.isActive() and dom.hasManagedSaveImage(0)
    wait_until(lambda: (pools.status(store, cfg.keys, "jobs") or pools.PoolStatus(
        "", 0, 0, 0, 0)).warm == 2, timeout=10, what="the manager's status")
    code, out, _ = gridtool(cfg, capsys, "pool", "show", "jobs", "--json")
    doc = json.loads(out)
    assert doc["warm"] == {"size": 2, "mode": "hibernate", "asleep": 2, "booting": 0}
    assert doc["status"]["ready"] == 1 and doc["status"]["warm"] == 2
    assert sorted(m["class"] for m in doc["members"]) == ["ready", "warm", "warm"]
    code, out, _ = gridtool(cfg, capsys, "pool", "list", "--json")
    row = json.loads(out)["pools"][0]
    assert (row["ready"], row["warm"], row["warm_mode"], row["warm_asleep"]) == (
        1, 2, "hibernate", 2)
    code, out, _ = gridtool(cfg, capsys, "pool", "list")
    assert "2/2 hibernate" in out
    code, out, _ = gridtool(cfg, capsys, "pool", "show", "jobs")
    assert re.search(r"^warm\s+2 asleep, 0 booting \(keeps 2, hibernate; not serving\)",
                     out, re.M), out

    # scale up by 2: the two hibernated workers are restored (no cold clone), then the
    # warm set is refilled to min(2, 4 - 3) = 1
    assert gridtool(cfg, capsys, "pool", "scale", "jobs", "3")[0] == 0
    wait_until(lambda: counts() == (3, 1), timeout=30, what="3 serving, 1 warm")
    states = warm_members(store, cfg, "jobs")
    assert all(states[u] == "" for u in asleep), "the warm workers were woken"
    for uuid in asleep:
        dom = domain_of(lab_hosts, uuid)
        assert dom.isActive() and not dom.hasManagedSaveImage(0)

    # pause mode: scale down to 2 (one serving removed), the set refills with a paused one
    code, out, _ = gridtool(cfg, capsys, "pool", "set", "jobs", "--warm-mode", "pause",
                            "--json")
    assert code == 0 and json.loads(out)["pool"]["warm_mode"] == "pause"
    assert gridtool(cfg, capsys, "pool", "scale", "jobs", "2")[0] == 0
    wait_until(lambda: counts() == (2, 2), timeout=30, what="2 serving, 2 warm")
    paused = [u for u, w in warm_members(store, cfg, "jobs").items() if w == "asleep"
              and domain_of(lab_hosts, u).state()[0] == libvirt.VIR_DOMAIN_PAUSED]
    assert len(paused) == 1
    assert gridtool(cfg, capsys, "pool", "scale", "jobs", "4")[0] == 0
    wait_until(lambda: counts() == (4, 0), timeout=30, what="4 serving, none warm (max)")
    assert domain_of(lab_hosts, paused[0]).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert len(pools.members(store, cfg.keys, "jobs")) == 4, "no cold clone was needed"

    # bad input: one line each, usage (2) or unknown pool (3), nothing changed
    for args in (("--warm", "5"), ("--warm", "-1")):
        code, _, err = gridtool(cfg, capsys, "pool", "set", "jobs", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "above the pool's maximum 4" in gridtool(cfg, capsys, "pool", "set", "jobs",
                                                     "--warm", "5")[2]
    assert gridtool(cfg, capsys, "pool", "set", "jobs", "--warm-mode", "sleep")[0] == 2
    assert gridtool(cfg, capsys, "pool", "set", "jobs")[0] == 2
    assert gridtool(cfg, capsys, "pool", "set", "nope", "--warm", "1")[0] == 3
    assert gridtool(cfg, capsys, "pool", "create", "x", "--template", "w", "--min", "1",
                    "--max", "2", "--warm", "3")[0] == 2
    assert pools.get(store, cfg.keys, "jobs").warm == 2
    # a worker that slept has a settings record (its desired state); a removed one (the
    # scale-down to 2, then the delete) takes it along
    kept = {s.uuid for s in settings.read_all(store, cfg.keys).values()}
    assert kept and kept <= set(pools.members(store, cfg.keys, "jobs")), (
        "settings left behind by the scale-down")
    code, _, err = gridtool(cfg, capsys, "pool", "delete", "jobs")
    assert code == 0 and "4 clone(s) removed" in err
    assert settings.read_all(store, cfg.keys) == {}, "no settings record left behind"
    assert not store.list(cfg.keys.clones)[0]
    # one left by an older version (or a removal while its host was down): reported
    settings.set_desired_after(store, cfg.keys, "0a1b2c3d-0000-4000-8000-000000000001",
                               "jobs-old", "sleep")
    code, out, _ = gridtool(cfg, capsys, "check", "--json")
    found = [f for f in json.loads(out)["findings"] if f["code"] == "SETTINGS_ORPHAN"]
    assert code == 1 and [f["subject"] for f in found] == [
        "0a1b2c3d-0000-4000-8000-000000000001"], out


def spare_pool(lab_hosts, registry, store, cfg, capsys, serial: Path):  # type: ignore[no-untyped-def]
    """hv1 and manager m1 running, a template ``slow`` (its source writes its console to
    ``serial``; ready marker READY) and a pool ``spare`` of it with one warm worker, whose
    clone is submitted: (m1's stop, the warm worker's uuid)."""
    start_fleet(lab_hosts, registry, store, cfg, {"hv1": ()}, 64)
    _, end1 = run_manager(store, cfg, "m1")
    lab_hosts.conn("hv1").defineXML(domain_xml("slow-src", memory_mib=64).replace(
        "</devices>", f"<serial type='file'><source path='{serial}'/><target port='0'/>"
                      "</serial></devices>"))
    wait_until(lambda: any(g.name == "slow-src" for g in registry.guests_of("hv1")[0].values()),
               what="slow-src synced")
    create_template(store, cfg, "slow", "slow-src", timeout=30, ready_marker="READY")
    assert gridtool(cfg, capsys, "pool", "create", "spare", "--template", "slow",
                    "--min", "0", "--max", "2", "--size", "0", "--warm", "1")[0] == 0
    (uuid,) = wait_until(lambda: list(warm_members(store, cfg, "spare")), timeout=10,
                         what="the warm clone submitted")
    return end1, uuid


def pool_updated(store, cfg, pool: str) -> float:  # type: ignore[no-untyped-def]
    """When the leading manager last wrote ``pool``'s status (0: never)."""
    st = pools.status(store, cfg.keys, pool)
    return st.updated if st else 0.0


@contextlib.contextmanager
def failed_over(end1, store, cfg, pool: str):  # type: ignore[no-untyped-def]
    """m1 resigns and m2 leads: runs the block once a round of m2 wrote ``pool``'s
    status, then stops m2."""
    end1()
    mgr2, end2 = run_manager(store, cfg, "m2")
    try:
        wait_until(lambda: mgr2.leader_rev, timeout=15, what="m2 leads")
        taken = pool_updated(store, cfg, pool)
        wait_until(lambda: pool_updated(store, cfg, pool) > taken, timeout=10,
                   what="a round of m2")
        yield mgr2
    finally:
        end2()


def test_a_warm_refill_never_blocks_the_pool_round_nor_runs_twice_after_failover(  # type: ignore[no-untyped-def]
        lab_hosts, registry, store, cfg, capsys, tmp_path):
    """A warm worker that does not come up (its template's ready marker never shows on
    the test driver) stays ``booting`` in the registry while later rounds go on: the
    same pool's status is written again, another pool is grown, and a new leader after
    a failover does not clone it again."""
    end1, booting = spare_pool(lab_hosts, registry, store, cfg, capsys,
                               tmp_path / "console.log")

    updated = functools.partial(pool_updated, store, cfg, "spare")

    seen = wait_until(updated, timeout=10, what="the round that started the refill")
    wait_until(lambda: updated() > seen, timeout=10, what="a later round of the same pool")
    assert gridtool(cfg, capsys, "pool", "create", "busy", "--template", "w",
                    "--min", "1", "--max", "2", "--size", "1")[0] == 0
    wait_until(lambda: running_members(store, cfg, registry, "busy"), timeout=10,
               what="another pool grown while the warm worker boots")
    assert warm_members(store, cfg, "spare") == {booting: "booting"}

    # fail over (m1 resigns, m2 leads): m2's rounds see the refill in the registry
    with failed_over(end1, store, cfg, "spare"):
        assert warm_members(store, cfg, "spare") == {booting: "booting"}, "no second refill"


def test_a_hibernated_worker_whose_fence_moved_is_never_restored(  # type: ignore[no-untyped-def]
        lab_hosts, registry, store, cfg, manager, capsys):
    """A fenced warm worker (its overlay on storage the agent treats as shared) keeps
    its fence while hibernated. Another host takes the fence meanwhile (an operator's
    forced release, that host runs the disk, releases it again): the scale-up's wake
    is refused with the reason, the stale image is discarded, never restored, and the
    pool replaces the worker (one serving, one warm again)."""
    import libvirt

    from gridtool.fencing.rules import Fence, FenceKind
    from gridtool.registry.records import Intent, decode

    lab_hosts.add("hv1")
    lab_hosts.start_agent("hv1", shared_patterns=(f"{lab_hosts.images_dir}/clones/*",))
    wait_until(lambda: registry.list_hosts()[0], what="hv1 registered")
    lab_hosts.conn("hv1").defineXML(domain_xml("w-src", memory_mib=64,
                                               disk="/var/lib/nowhere/w.qcow2"))
    wait_until(lambda: registry.guests_of("hv1")[0], what="template source synced")
    create_template(store, cfg, "w", "w-src", timeout=30)
    assert gridtool(cfg, capsys, "pool", "create", "jobs", "--template", "w",
                    "--min", "1", "--max", "3", "--warm", "1")[0] == 0
    wait_until(lambda: sorted(warm_members(store, cfg, "jobs").values()) == ["", "asleep"],
               timeout=30, what="1 serving, 1 warm asleep")
    (uuid,) = [u for u, w in warm_members(store, cfg, "jobs").items() if w == "asleep"]
    rec = next(r for r in registry.guests_of("hv1")[0].values() if r.uuid == uuid)
    assert rec.fenced and domain_of(lab_hosts, uuid).hasManagedSaveImage(0)
    fence_key = cfg.keys.fence(rec.volumes[0])

    # another host takes the fence while it sleeps, writes the disk, lets it go
    store.delete(fence_key)
    store.put(fence_key, json.dumps(Fence(rec.volumes[0], "hv2", uuid, rec.name,
                                          FenceKind.PINNED, 1.0).to_dict()).encode())
    store.delete(fence_key)
    assert gridtool(cfg, capsys, "pool", "scale", "jobs", "2")[0] == 0

    def wake_outcome() -> Intent | None:
        for item in store.list(cfg.keys.intents_done)[0] + store.list(
                cfg.keys.intents("hv1"))[0]:
            intent = decode(Intent, item.key, item.value)
            if intent.action == "wake" and intent.guest == uuid and intent.finished:
                return intent
        return None

    woke = wait_until(wake_outcome, timeout=30, what="the wake's outcome")
    assert woke.state == "failed" and "restored" not in woke.message, woke.message
    # discarded by the wake itself, or by the agent's judgement of the guest before it
    assert re.search(r"was released while it slept.*its saved image was discarded|"
                     r"it has no saved image", woke.message), woke.message
    assert re.search(rf"event=stale_image_discarded host=hv1 guest={rec.name} .*"
                     "was released while it slept", lab_hosts.agent_log("hv1"))
    with contextlib.suppress(libvirt.libvirtError):  # (or the pool removed it already)
        assert not domain_of(lab_hosts, uuid).hasManagedSaveImage(0)
    # replaced: the worker is removed, a cold clone serves, a new warm one sleeps
    wait_until(lambda: uuid not in (m := warm_members(store, cfg, "jobs")) and sorted(
        m.values()) == ["", "", "asleep"], timeout=30, what="2 serving, 1 new warm asleep")
    # the wake's error is the pool's last failure, not only the agent's log and intent
    code, out, _ = gridtool(cfg, capsys, "pool", "show", "jobs", "--json")
    status = json.loads(out)["status"]
    assert code == 0 and f"wake of {rec.name} on hv1 failed: " in status["failure"]
    assert woke.message in status["failure"] and status["failed_at"] > 0
    code, out, _ = gridtool(cfg, capsys, "pool", "show", "jobs")
    # (a long row is cut to the terminal's width)
    assert code == 0 and re.search(rf"last failure +wake of {rec.name} on hv1 failed: ", out)


def wake_intents(store, cfg, uuid: str, action: str = "wake") -> list:  # type: ignore[no-untyped-def]
    """Every wake (or ``action``) intent of ``uuid`` the registry has (queued, finished
    or collected)."""
    from gridtool.registry.intents import read_intents

    return [i for i in read_intents(store, cfg.keys)[0]
            if i.action == action and i.guest == uuid]


def test_a_cold_clone_never_blocks_the_pool_round_nor_runs_twice_after_failover(  # type: ignore[no-untyped-def]
        lab_hosts, registry, store, cfg, capsys):
    """A cold clone in flight (hv1's agent waits 6 s before each start: the
    delay-before-create fault point) does not hold the pool round: the pool's status is
    written again while its clone intent runs, the member recorded ``cloning``. A new
    leader after a failover mid-clone sees it cloning: no second clone; once the guest
    runs, that leader records it serving."""
    start_fleet(lab_hosts, registry, store, cfg, {"hv1": ()}, 64,
                fault_points=("delay-before-create=6",))
    _, end1 = run_manager(store, cfg, "m1")
    assert gridtool(cfg, capsys, "pool", "create", "cold", "--template", "w",
                    "--min", "1", "--max", "2", "--size", "1")[0] == 0
    (uuid,) = wait_until(lambda: list(pools.members(store, cfg.keys, "cold")), timeout=10,
                         what="the clone recorded")
    wait_until(lambda: [i.state for i in wake_intents(store, cfg, uuid, "clone")] ==
               ["running"], timeout=10, what="the agent in the clone (its start delayed)")
    in_flight = time.time()
    updated = functools.partial(pool_updated, store, cfg, "cold")
    wait_until(lambda: updated() > in_flight, timeout=3,
               what="a pool round written while the clone is in flight")
    assert warm_members(store, cfg, "cold") == {uuid: "cloning"}

    with failed_over(end1, store, cfg, "cold"):  # mid-clone: m2 sees it under way
        assert warm_members(store, cfg, "cold") == {uuid: "cloning"}, "no second clone"
        wait_until(lambda: warm_members(store, cfg, "cold") == {uuid: ""}, timeout=20,
                   what="m2 records the clone serving once it runs")
        assert [i.state for i in wake_intents(store, cfg, uuid, "clone")] == ["done"]
        assert len(pools.members(store, cfg.keys, "cold")) == 1, "cloned once"
        code, out, _ = gridtool(cfg, capsys, "pool", "show", "cold", "--json")
        assert code == 0 and [m["class"] for m in json.loads(out)["members"]] == ["ready"]


def removal_under_way(store, cfg, capsys, pool: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A pool of two serving workers scaled to one: the worker recorded ``removing``
    once its agent runs the removal (delayed by a fault point), and the one kept."""
    assert gridtool(cfg, capsys, "pool", "create", pool, "--template", "w",
                    "--min", "1", "--max", "2", "--size", "2")[0] == 0
    wait_until(lambda: sorted(warm_members(store, cfg, pool).values()) == ["", ""],
               timeout=20, what="two workers serving")
    members = set(warm_members(store, cfg, pool))
    assert gridtool(cfg, capsys, "pool", "scale", pool, "1")[0] == 0
    (uuid,) = wait_until(lambda: [u for u, w in warm_members(store, cfg, pool).items()
                                  if w == "removing"], timeout=10, what="one recorded removing")
    wait_until(lambda: [i.state for i in wake_intents(store, cfg, uuid, "remove_clone")]
               == ["running"], timeout=10, what="the agent in the removal (delayed)")
    (kept,) = members - {uuid}
    return uuid, kept


def test_a_removal_never_blocks_the_pool_round_nor_runs_twice_after_failover(  # type: ignore[no-untyped-def]
        lab_hosts, registry, store, cfg, capsys):
    """A removal in flight (hv1's agent waits 6 s before each removal: the
    delay-before-remove fault point) does not hold the pool round: the pool's status is
    written again while it runs, the member recorded ``removing``. A new leader after a
    failover mid-removal sends no second removal and loses no worker; once it is done,
    that leader forgets the worker's clone record, membership and settings."""
    import libvirt

    from gridtool.clone import templates

    start_fleet(lab_hosts, registry, store, cfg, {"hv1": ()}, 64,
                fault_points=("delay-before-remove=6",))
    _, end1 = run_manager(store, cfg, "m1")
    try:
        uuid, kept = removal_under_way(store, cfg, capsys, "shrink")
        in_flight = time.time()
        updated = functools.partial(pool_updated, store, cfg, "shrink")
        wait_until(lambda: updated() > in_flight, timeout=3,
                   what="a pool round written while the removal is in flight")
        assert warm_members(store, cfg, "shrink") == {uuid: "removing", kept: ""}
    except BaseException:
        end1()
        raise

    with failed_over(end1, store, cfg, "shrink"):  # mid-removal: m2 sees it under way
        wait_until(lambda: warm_members(store, cfg, "shrink") == {kept: ""}, timeout=20,
                   what="m2 forgets the worker once removed")
        assert [i.state for i in wake_intents(store, cfg, uuid, "remove_clone")] == ["done"]
        assert not wake_intents(store, cfg, kept, "remove_clone"), "the kept one stays"
        assert templates.find_clone(store, cfg.keys, uuid) is None
        assert store.get(cfg.keys.guest_settings(uuid)) is None
        with pytest.raises(libvirt.libvirtError):
            domain_of(lab_hosts, uuid)
        assert domain_of(lab_hosts, kept).isActive()


def test_pool_delete_follows_a_removal_under_way_instead_of_sending_another(  # type: ignore[no-untyped-def]
        lab_hosts, registry, store, cfg, manager, capsys):
    """``pool delete`` while the manager removes a worker (recorded ``removing``; hv1's
    agent waits 3 s before each removal) follows that removal's intent, under the id
    recorded in the member, instead of sending a second ``remove_clone``: one removal
    per worker, and every worker, clone record and membership gone."""
    import libvirt

    from gridtool.clone import templates

    start_fleet(lab_hosts, registry, store, cfg, {"hv1": ()}, 64,
                fault_points=("delay-before-remove=3",))
    uuid, kept = removal_under_way(store, cfg, capsys, "gone")
    workers = {uuid, kept}
    recorded = pools.members(store, cfg.keys, "gone")[uuid].intent

    code, _, err = gridtool(cfg, capsys, "pool", "delete", "gone")
    assert code == 0, err
    assert [(i.id, i.state) for i in wake_intents(store, cfg, uuid, "remove_clone")] == \
        [(recorded, "done")], "the manager's removal followed, no second one"
    assert [i.state for i in wake_intents(store, cfg, kept, "remove_clone")] == ["done"]
    assert not pools.members(store, cfg.keys, "gone")
    for worker in workers:
        assert templates.find_clone(store, cfg.keys, worker) is None
        with pytest.raises(libvirt.libvirtError):
            domain_of(lab_hosts, worker)


def test_a_wake_never_blocks_the_pool_round_nor_runs_twice_after_failover(  # type: ignore[no-untyped-def]
        lab_hosts, registry, store, cfg, capsys, tmp_path):
    """A wake in flight (the agent waits until the woken guest writes to its console;
    here the test writes it) does not hold the pool round: the pool's status is written
    again while it runs. A new leader after a failover mid-wake sees the worker
    ``waking``: no second wake, no restart, no cold clone for it; once the guest
    writes, that leader records it serving."""
    from gridtool.registry import settings

    end1, uuid = spare_pool(lab_hosts, registry, store, cfg, capsys, tmp_path / "src.log")
    console = tmp_path / f"{pools.members(store, cfg.keys, 'spare')[uuid].name}.log"
    console.write_text("booted\nREADY\n")  # (the clone's own serial file)
    wait_until(lambda: warm_members(store, cfg, "spare") == {uuid: "asleep"}, timeout=30,
               what="the warm worker hibernated")

    updated = functools.partial(pool_updated, store, cfg, "spare")

    assert gridtool(cfg, capsys, "pool", "scale", "spare", "1")[0] == 0
    wait_until(lambda: [i.state for i in wake_intents(store, cfg, uuid)] == ["running"],
               timeout=10, what="the agent in the wake (waiting for the console)")
    in_flight = time.time()
    wait_until(lambda: updated() > in_flight, timeout=10,
               what="a pool round written while the wake is in flight")
    assert warm_members(store, cfg, "spare")[uuid] == "waking"

    # fail over mid-wake (m1 resigns, m2 leads): m2 sees the wake under way
    with failed_over(end1, store, cfg, "spare"):
        assert [i.state for i in wake_intents(store, cfg, uuid)] == ["running"]
        serving = {u for u, w in warm_members(store, cfg, "spare").items()
                   if w in ("", "waking")}
        assert serving == {uuid}, "no cold clone for a worker being woken"
        run_id = domain_of(lab_hosts, uuid).ID()
        with console.open("a") as f:
            f.write("alive\n")  # the woken guest writes: the wake is done
        wait_until(lambda: warm_members(store, cfg, "spare")[uuid] == "", timeout=10,
                   what="m2 records the woken worker serving")
        assert [i.state for i in wake_intents(store, cfg, uuid)] == ["done"], "woken once"
        assert domain_of(lab_hosts, uuid).ID() == run_id, "not started again"
        assert settings.read(store, cfg.keys, uuid).desired == "running"
        code, out, _ = gridtool(cfg, capsys, "pool", "show", "spare", "--json")
        assert code == 0 and [m["class"] for m in json.loads(out)["members"]
                              if m["uuid"] == uuid] == ["ready"]
