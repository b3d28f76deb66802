"""Randomized faults: "never two running", whatever fails (tests/harness/chaos.py).

The fast tier runs one seeded schedule with every fault kind a few times (about a
minute and a half on a 2-core machine); the soak tier (``-m soak``, not in CI) runs for
minutes with a random seed. Replay a failure with GRIDTOOL_CHAOS_SEED=<seed>; the logs
of a failed run are kept (the path is printed).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.harness.chaos import KINDS, ChaosReport, ChaosRun, ChaosSettings, Planner

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
    return (f"{report.summary()}\nreplay: GRIDTOOL_CHAOS_SEED={report.seed}; logs in "
            f"{report.work_dir}\n{chr(10).join(report.overlap_detail)}\nlast events:\n{tail}")


def _check(report: ChaosReport) -> None:
    assert not report.error, _explain(report)
    assert report.overlaps == 0 and report.overlap_seconds == 0.0, _explain(report)
    assert report.samples > 0
    if report.agent_crashes or report.manager_crashes:
        warnings.warn(f"chaos seed {report.seed}: {report.agent_crashes} agent(s) and "
                      f"{report.manager_crashes} manager(s) exited by themselves and were "
                      "restarted (see the AGENT CRASH / MANAGER CRASH events)", stacklevel=2)


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


@pytest.mark.soak
@pytest.mark.netns
def test_never_two_running_soak(tmp_path: Path) -> None:
    _need_netns()
    minutes = float(os.environ.get("GRIDTOOL_CHAOS_MINUTES", "10"))
    settings = ChaosSettings(seed=_seed(None), hosts=4, guests=3, ttl=3,
                             seconds=minutes * 60, concurrent=0.3)
    report = ChaosRun(settings, work_dir=tmp_path / "chaos").run()
    _check(report)
    print(report.summary())
