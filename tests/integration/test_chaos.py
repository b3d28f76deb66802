"""Randomized faults: "never two running", whatever fails (tests/harness/chaos.py).

The fast tier runs one seeded schedule with every fault kind a few times (about a
minute and a half on a 2-core machine); the soak tier (``-m soak``, not in CI) runs for
minutes with a random seed. Both pass by ``ChaosReport.ok``, the rule bench/chaos.py
prints as PASS: 0 overlaps, 0 agent or manager crashes, every round settled (every guest
running) within the settle bound, every round sampled fast enough, at most 1 % unknown
samples. Replay a failure with GRIDTOOL_CHAOS_SEED=<seed>; the logs of a failed run are
kept (the path is printed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.chaos import (
    KINDS,
    ChaosReport,
    ChaosRun,
    ChaosSettings,
    Planner,
    RoundResult,
    settle_bound,
)
from tests.harness.checker import MAX_UNKNOWN_FRACTION, DoubleRunChecker
from tests.harness.testbed import wait_until

CI_SEED = 20240607


def _seed(default: int | None) -> int | None:
    raw = os.environ.get("GRIDTOOL_CHAOS_SEED")
    return int(raw) if raw else default


def _need_netns() -> None:
    from tests.harness.netns import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


def _explain(report: ChaosReport) -> str:
    tail = "\n".join(report.events[-40:])
    crashes = "\n".join(e for e in report.events if " CRASH " in e or "NOT SETTLED" in e)
    return (f"{report.verdict()}\n{report.summary()}\nreplay: GRIDTOOL_CHAOS_SEED="
            f"{report.seed}; logs in {report.work_dir}\n"
            f"{chr(10).join(report.overlap_detail)}\n{crashes}\n"
            f"unknown samples: {report.unknown_detail[:10]}\nlast events:\n{tail}")


def _check(report: ChaosReport) -> None:
    print(report.verdict())
    assert report.ok, _explain(report)


def test_schedule_is_a_function_of_the_seed() -> None:
    hosts = ["hv1", "hv2", "hv3"]
    first = [Planner(5, hosts, 3, per_kind=2, concurrent=0.5).next_round() for _ in range(3)]
    again = [Planner(5, hosts, 3, per_kind=2, concurrent=0.5).next_round() for _ in range(3)]
    assert first == again
    planner = Planner(9, hosts, 3, per_kind=2, concurrent=0.5)
    rounds = []
    while (faults := planner.next_round()) is not None:
        rounds.append(faults)
    assert sorted(r[0].kind for r in rounds) == sorted(KINDS * 2)
    for faults in rounds:
        etcd = [f for f in faults if f.kind in ("kill_etcd_leader", "restart_etcd")]
        assert len(etcd) <= 1  # quorum always stays
        targets = [f.host for f in faults if f.host]
        assert len(targets) == len(set(targets))  # two host faults: two hosts


def _passing_report() -> ChaosReport:
    report = ChaosReport(1, 4, 3, 3, settle_bound_s=settle_bound(3), samples=2000,
                         sample_rate=20.0)
    report.rounds = [RoundResult(i, ["cut hv1"], 5.0, 3, 3, True, 200, 10.0)
                     for i in range(1, 11)]
    return report


def test_the_verdict_fails_on_each_criterion() -> None:
    """ChaosReport.ok is one rule of six criteria; breaking any one of them fails it."""
    assert settle_bound(3) == 14.0
    good = _passing_report()
    assert good.ok, good.verdict()
    assert good.verdict().count("PASS") == 7  # six criteria and the run

    def broken(change) -> ChaosReport:  # type: ignore[no-untyped-def]
        report = _passing_report()
        change(report)
        assert not report.ok, report.verdict()
        assert report.verdict().count("FAIL") == 2, report.verdict()  # one criterion, the run
        return report

    broken(lambda r: setattr(r, "overlaps", 1))
    broken(lambda r: setattr(r, "agent_crashes", 1))
    broken(lambda r: setattr(r, "manager_crashes", 1))
    broken(lambda r: setattr(r.rounds[3], "running", 2))  # a guest not running at the end
    broken(lambda r: setattr(r.rounds[3], "settled", False))  # a host not back in time
    broken(lambda r: setattr(r.rounds[5], "samples", 149))  # 14.9/s in a round of 10 s
    broken(lambda r: setattr(r, "unknown_samples", 21))  # 1.05 % of 2000
    empty = _passing_report()
    empty.rounds = []  # nothing ran: nothing proven
    assert not empty.ok, empty.verdict()
    assert _passing_report().unknown_fraction == 0.0
    edge = _passing_report()
    edge.unknown_samples = int(edge.samples * MAX_UNKNOWN_FRACTION)  # exactly 1 %: passes
    edge.rounds[0].samples = 150  # exactly 15/s: passes
    assert edge.ok, edge.verdict()


class _Dom:
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid

    def UUIDString(self) -> str:  # libvirt's name
        return self.uuid


class _Conn:
    """Stands in for a libvirt connection: lists ``uuids`` or raises when ``broken``."""

    def __init__(self, *uuids: str) -> None:
        self.uuids = uuids
        self.broken = False
        self.calls = 0

    def listAllDomains(self, _flags: int) -> list[_Dom]:  # libvirt's name
        import libvirt

        self.calls += 1
        if self.broken:
            raise libvirt.libvirtError("internal error: client socket is closed")
        return [_Dom(u) for u in self.uuids]


def test_the_checker_counts_an_unreadable_host_as_unknown_not_as_empty() -> None:
    """A libvirt error is not "nothing runs here": the sample is unknown, and past 1 %
    of unknown samples the checker is blind (its 0 overlaps prove nothing)."""
    hv1, hv2 = _Conn("g1"), _Conn("g1")
    hv2.broken = True
    checker = DoubleRunChecker(lambda: {"hv1": hv1, "hv2": hv2})
    running, unknown = checker.observe()
    assert running == {"g1": ["hv1"]} and list(unknown) == ["hv2"]
    assert "client socket is closed" in unknown["hv2"]
    with checker:
        wait_until(lambda: checker.samples >= 5, timeout=10, what="5 samples")
    assert checker.samples >= 5 and checker.unknown == checker.samples
    assert checker.unknown_fraction == 1.0 and checker.blind
    assert checker.overlaps == []  # hv2 may well run g1 too: nobody can tell
    assert checker.rate > 0 and checker.max_gap > 0
    hv2.broken = False
    assert checker.observe() == ({"g1": ["hv1", "hv2"]}, {})


@pytest.mark.netns
def test_never_two_running_under_every_fault_kind(tmp_path: Path) -> None:
    _need_netns()
    settings = ChaosSettings(seed=_seed(CI_SEED), hosts=4, guests=3, ttl=3, per_kind=3,
                             concurrent=0.3, seconds=150)
    report = ChaosRun(settings, work_dir=tmp_path / "chaos").run()
    _check(report)
    assert len(report.rounds) == 3 * len(KINDS), _explain(report)
    for kind in KINDS:
        assert report.faults[kind] >= 3, (kind, _explain(report))
    assert report.counters["ha_restarts"] > 0  # faults did move guests: the test has teeth
    assert report.namespaces and not set(report.namespaces) & _namespaces()  # cleaned up


def _namespaces() -> set[str]:
    import subprocess

    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


SOAK_MINUTES = float(os.environ.get("GRIDTOOL_CHAOS_MINUTES", "10"))


@pytest.mark.soak
@pytest.mark.netns
# its own length plus the CI tier's limit (setup.cfg's timeout) for setup, the last round's
# settling and the teardown
@pytest.mark.timeout(SOAK_MINUTES * 60 + 600)
def test_never_two_running_soak(tmp_path: Path) -> None:
    _need_netns()
    settings = ChaosSettings(seed=_seed(None), hosts=4, guests=3, ttl=3,
                             seconds=SOAK_MINUTES * 60, concurrent=0.3)
    report = ChaosRun(settings, work_dir=tmp_path / "chaos").run()
    _check(report)
    print(report.summary())
