"""The benchmarks' verdicts (bench/verdict.py and each benchmark's ``judge``): pure rules
over measured numbers, so every target is judged as the README states it and a failed
target is exit status 1."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.harness import ROOT


def bench(name: str) -> ModuleType:
    """bench/NAME.py, imported the way the benchmarks import each other."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


verdict = bench("verdict")


# -- the shared rule ---------------------------------------------------------------


@pytest.mark.parametrize("measured, op, bound, ok", [
    (10.0, "<=", 10.0, True), (10.01, "<=", 10.0, False), (3, ">=", 3, True),
    (2, ">=", 3, False), (0, "==", 0, True), (1, "==", 0, False), (True, "==", True, True),
    (False, "==", True, False), (0.5, "<", 1, True), (1, ">", 1, False),
    (None, "<=", 10.0, False), (math.nan, "<=", 10.0, False), (math.inf, "<=", 10.0, False),
])
def test_a_check_compares_the_measurement_with_its_bound(measured: object, op: str,
                                                          bound: float, ok: bool) -> None:
    check = verdict.Check("x", measured, op, bound)
    assert check.ok is ok
    assert check.row()[-1] == ("PASS" if ok else "FAIL")


def test_an_unknown_comparison_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown comparison"):
        verdict.Check("x", 1, "=<", 2)


def test_a_verdict_passes_only_when_every_target_holds() -> None:
    v = verdict.Verdict("demo")
    assert not v.ok and v.exit_code() == 1  # nothing measured is no pass
    assert v.check("fast", 0.5, "<=", 1.0, "s")
    assert v.ok and v.exit_code() == 0
    assert not v.check("complete", 9, "==", 10)
    assert not v.ok and v.exit_code() == 1
    assert [c.name for c in v.failed] == ["complete"]
    body = v.to_dict()
    assert body["pass"] is False
    assert body["targets"][0] == {"target": "fast", "measured": 0.5, "op": "<=",
                                  "bound": 1.0, "unit": "s", "pass": True}
    json.dumps(body)  # goes into the benchmark's JSON as it is


def test_the_printed_verdict_names_what_failed(capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict.Verdict("demo")
    v.check("fast", 0.5, "<=", 1.0, "s")
    v.check("complete", None, "==", 10)
    v.print()
    out = capsys.readouterr().out
    assert "0.5 s" in out and "<= 1 s" in out and "not measured" in out
    assert out.rstrip().endswith("demo: FAIL (complete)")
    verdict.Verdict("empty").print()
    assert capsys.readouterr().out.rstrip().endswith("empty: FAIL (no target checked)")


# -- each benchmark's targets -------------------------------------------------------


def _failover_round(elsewhere: float, overlaps: int = 0) -> dict:
    return {"detected": 3.0, "fence_expired": elsewhere - 1, "running_elsewhere": elsewhere,
            "overlap_s": 0.0, "overlaps": overlaps}


def test_failover_judges_the_worst_round_not_the_mean() -> None:
    failover = bench("failover")
    good = [_failover_round(s) for s in (8.0, 9.2, 7.5)]
    assert failover.judge({"power_off": good, "partition": good}, 3).ok
    # mean 8.7 s passes "<= 13 s" (TTL 10 + the fence step); the round at 14 s does not
    slow = [_failover_round(s) for s in (6.0, 6.0, 14.0)]
    judged = failover.judge({"power_off": slow, "partition": good}, 3)
    assert [c.name for c in judged.failed] == ["power-off -> running elsewhere, worst round"]
    overlap = [*good[:2], _failover_round(8.0, overlaps=1)]
    assert not failover.judge({"power_off": good, "partition": overlap}, 3).ok
    assert not failover.judge({"power_off": good[:2], "partition": good}, 3).ok
    # the timed path's own bound: 2 TTL + 2 s grace margin + 3 s
    assert failover.target_s(10, "timed") == 25.0 and failover.target_s(10, "power") == 13.0


def test_failover_with_suspicion_targets_five_seconds_and_splits_the_phases() -> None:
    failover = bench("failover")
    assert failover.target_s(10, "power", 2.0) == 5.0
    assert failover.target_s(10, "timed", 2.0) == 25.0  # no fence: the lease is waited for
    assert not failover.judge({"power_off": [_failover_round(5.5)],
                               "partition": [_failover_round(4.0)]}, 1, 5.0).ok
    marks = {"suspected": 2.0, "power_fenced": 3.5, "detected": 3.6, "running_elsewhere": 3.9}
    assert failover._phases(marks) == pytest.approx(
        {"phase_detect_s": 2.0, "phase_fence_s": 1.5, "phase_restart_s": 0.4})
    lease = {"detected": 9.0, "power_fenced": 11.0, "running_elsewhere": 11.2}
    assert failover._phases(lease) == pytest.approx(
        {"phase_detect_s": 9.0, "phase_fence_s": 2.0, "phase_restart_s": 0.2})


def test_registry_scale_checks_how_many_records_came_back() -> None:
    scale = bench("registry_scale")

    def point(seconds: float, guests: list[int]) -> dict:
        want = scale.expected(2000, 50)
        after = {what: {"seconds": [seconds] * 3, "counts": [n] * 3}
                 for what, n in want.items()}
        after["guest list"]["counts"] = guests
        return {"guests": 100_000, "expected": want, "after": after}

    assert scale.judge([point(0.15, [100_000] * 3)]).ok
    dropped = scale.judge([point(0.15, [100_000, 99_999, 100_000])])
    assert [c.name for c in dropped.failed] == ["guest list at 100000 guests: fewest listed"]
    slow = scale.judge([point(0.25, [100_000] * 3)])
    assert [c.name for c in slow.failed] == [
        "guest list --host, median at 100000 guests", "guest show, median at 100000 guests"]


def test_propagation_fails_on_a_negative_latency_instead_of_clamping_it() -> None:
    propagation = bench("propagation")
    assert propagation.judge([0.002, 0.003, 0.004], 3).ok
    judged = propagation.judge([0.002, -0.001, 0.004], 3)
    assert [c.name for c in judged.failed] == ["negative latencies"]
    assert not propagation.judge([0.002] * 99 + [0.2], 100).ok  # p99 over 50 ms
    assert not propagation.judge([0.002], 2).ok  # a change never seen


def _clone(overlay: float = 0.02, define: float = 0.005, start: float = 0.6) -> dict:
    return {"overlay": overlay, "define": define, "start": start, "running": 0.9,
            "ready": 11.0, "boot": 10.0}


def test_real_clone_has_the_readmes_targets() -> None:
    real_clone = bench("real_clone")
    # a worst define + start of 1.5 s is within target: the target is the median clone
    assert real_clone.judge([_clone(), _clone(), _clone(start=1.5)], 3).ok
    assert not real_clone.judge([_clone(), _clone(overlay=0.2)], 2).ok
    assert not real_clone.judge([_clone(start=1.2), _clone(start=1.1)], 2).ok
    assert not real_clone.judge([_clone()], 2).ok  # a clone never ready
    partial = _clone()
    del partial["overlay"]
    assert not real_clone.judge([_clone(), partial], 2).ok  # not measured is no pass


def test_placement_exits_with_its_verdict(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    placement = bench("placement")
    args = ["--hosts", "20", "--guests", "100", "--json", str(tmp_path / "p.json")]
    monkeypatch.setattr(placement, "PLACE_P99_TARGET_MS", 1e9)
    assert placement.main(args) == 0
    assert json.loads((tmp_path / "p.json").read_text())["pass"] is True
    monkeypatch.setattr(placement, "PLACE_P99_TARGET_MS", 0.0)  # nothing is that fast
    assert placement.main(args) == 1
    assert json.loads((tmp_path / "p.json").read_text())["pass"] is False


def test_placement_judges_capacity_and_the_linear_rule() -> None:
    placement = bench("placement")

    def body(**placed: object) -> dict:
        return {"config": {"guests": 100},
                "placement": {"place": {"p99_ms": 0.5}, "placed": 90, "unplaced": 10,
                              "hosts_over_capacity": 0, "linear_disagreements": 0, **placed},
                "rebalance": {"plan_s": 0.2}}

    assert placement.judge(body()).ok
    assert not placement.judge(body(hosts_over_capacity=1)).ok
    assert not placement.judge(body(linear_disagreements=2)).ok
    assert not placement.judge(body(placed=80)).ok


def test_flex_ratios() -> None:
    flex = bench("flex")
    assert flex.ratio(20, 100) == 0.2
    assert flex.ratio(0, 0) == 0.0  # no violation either way: within any share
    assert flex.ratio(5, 0) == math.inf  # worse than a perfect baseline: never within


def test_every_benchmark_uses_the_shared_verdict() -> None:
    """One rule for every benchmark: each judges through bench/verdict.py and exits with
    its status."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        if path.stem in ("benchlib", "verdict"):
            continue
        source = path.read_text()
        assert "from verdict import" in source, path.name
        assert "exit_code()" in source, path.name


def test_chaos_fails_on_an_overlap_a_lost_guest_a_failed_check_or_its_own_rule() -> None:
    from tests.harness.chaos import ChaosReport, RoundResult

    chaos = bench("chaos")

    def report(**change: object) -> ChaosReport:
        r = ChaosReport(1, 4, 8, 3, settle_bound_s=14.0, samples=1000, sample_rate=40.0)
        r.rounds = [RoundResult(1, ["cut hv1"], 2.0, 8, 8, True, 400, 10.0, kinds=["cut"])]
        for name, value in change.items():
            setattr(r, name, value)
        return r

    good = chaos.judge(report())
    assert good.ok and good.exit_code() == 0
    lost = report()
    lost.rounds[0].running, lost.rounds[0].settled = 6, False
    failed = report()
    failed.rounds[0].failures.append("intruder: it ran")
    for bad, target in [(report(overlaps=1), "overlap"), (lost, "lost guests"),
                        (failed, "failed fault checks"), (report(agent_crashes=1), "ok")]:
        verdict = chaos.judge(bad)
        assert not verdict.ok and verdict.exit_code() == 1
        assert any(target in c.name for c in verdict.failed), verdict.failed
    assert not chaos.judge(report(rounds=[])).ok  # nothing ran: nothing proven


def _qemu_round(check_ok: bool = True, writes: int | None = 0, overlaps: int = 0,
                elsewhere: bool = True, fence: str = "storage") -> dict:
    marks = {"running_elsewhere": 4.0} if elsewhere else {}
    return {**marks, "check_ok": check_ok, "writes_after_fence": writes, "fence": fence,
            "overlaps": overlaps, "overlap_s": 0.1 * overlaps}


def test_qemu_failover_judges_the_checker_writes_after_the_fence_and_overlap() -> None:
    qemu = bench("failover_qemu")
    good = [_qemu_round(), _qemu_round(writes=None, fence="")]  # timed: no fence recorded
    assert qemu.judge({"power_off": good, "partition": good}, False).ok
    assert not qemu.judge({"partition": [_qemu_round(writes=1)]}, False).ok
    assert not qemu.judge({"partition": [_qemu_round(check_ok=False)]}, False).ok
    assert not qemu.judge({"partition": [_qemu_round(elsewhere=False)]}, False).ok
    # a storage-fenced old copy may still run (its writes refused); without one, no overlap
    assert qemu.judge({"partition": [_qemu_round(overlaps=3)]}, False).ok
    assert not qemu.judge({"partition": [_qemu_round(overlaps=3, fence="power")]}, False).ok
    assert not qemu.judge({"migrate_kill": [_qemu_round(overlaps=1, fence="")]}, True).ok
    # a fault that need not move the guest is judged by the checker alone
    assert qemu.judge({"leader_stop": [_qemu_round(elsewhere=False, fence="")]}, True).ok


def test_writes_after_the_fence_count_the_old_boots_later_records_only() -> None:
    from gridtool.lab.diskcheck import Record
    from tests.harness.qemu_failover import last_seq, writes_after

    records = [Record(n, boot, seq, 0, 0.0, "u") for n, (boot, seq) in enumerate(
        [("old", 1), ("old", 2), ("old", 5), ("new", 1), ("old", 9)])]
    assert last_seq(records, "old") == 9 and last_seq(records, "gone") == 0
    assert writes_after(records, "old", 2) == 2
    assert writes_after(records, "old", 9) == 0
    assert writes_after(records, "new", 0) == 1


# -- bench/queue_pool.py --------------------------------------------------------------


def test_queue_pool_counts_waits_unserved_jobs_sla_windows_and_worker_seconds() -> None:
    from argparse import Namespace

    qp = bench("queue_pool")
    start = 1000.0
    times = [0.5, 1.0, 12.0, 15.0]  # trace times of 4 jobs; job 3 is never taken
    done = [[0, 1000.5, 1000.7, 1001.0, "w1"],  # waited 0.2 s
            [1, 1001.0, 1001.4, 1002.0, "w1"],  # 0.4 s
            [2, 1012.0, 1015.0, 1016.0, "w2"]]  # 3.0 s
    timeline = [{"t": 0.0, "serving": 1}, {"t": 10.0, "serving": 2}, {"t": 20.0, "serving": 0}]
    out = qp.summarize(times, start, 1020.0, done, timeline,
                       Namespace(period=10.0, sla_wait=1.0))
    assert (out["jobs"], out["served"], out["unserved"]) == (4, 3, 1)
    # window 0 (jobs 0, 1): mean 0.3 s; window 1 (job 2: 3 s, job 3 still waiting 5 s)
    assert out["violating_windows_s"] == [10.0] and out["sla_violation_s"] == 10.0
    assert out["wait_s"]["max"] == pytest.approx(5.0)
    assert out["wait_s"]["p50"] == pytest.approx(0.4)
    assert out["worker_seconds"] == 30.0 and out["peak_serving"] == 2


# -- the failover's phases (bench/benchlib.py) --------------------------------


def test_failover_phases_time_each_step_from_the_lease_seen_gone() -> None:
    phases = bench("benchlib")
    log = """\
2026-12-03 06:52:20,000 1 gridtool.ha.manager event=host_lost host=hv1 registration=0
2026-12-03 06:52:20,100 1 gridtool.ha.manager event=host_lost host=hv9 registration=0
2026-12-03 06:52:52,500 1 gridtool.ha.manager event=ha_restart guest=a on=hv2 from=hv1 r=x
2026-12-03 06:52:52,500 1 gridtool.ha.manager event=ha_restart guest=b on=hv3 from=hv1 r=x
2026-12-03 06:52:52,600 7 gridtool.agent event=intent_start host=hv2 guest=a
2026-12-03 06:52:52,900 7 gridtool.agent event=intent_start host=hv3 guest=b
2026-12-03 06:52:53,000 8 gridtool.agent event=intent_done host=hv3 guest=a
not a log line
2026-12-03 06:52:53,250 7 gridtool.agent event=intent_done host=hv3 guest=b
"""
    (f,) = phases.failovers(phases.parse_log(log.splitlines()))  # hv9: nothing restarted
    assert (f.host, f.guests, f.per_process, f.destinations) == ("hv1", 2, {"7": 2}, 2)
    assert f.phases["restart written (manager)"] == (2, 32.5, 32.5)
    n, first, last = f.phases["intent picked up, running written"]
    assert (n, first, last) == (2, pytest.approx(32.6), pytest.approx(32.9))
    assert f.phases["outcome written"][1:] == (pytest.approx(33.0), pytest.approx(33.25))
    assert "fence taken (agent)" not in f.phases
