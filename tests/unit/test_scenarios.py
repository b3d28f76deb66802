"""Scenario tests: tests/scenarios/<name>/{initial.json, cmds, expected_log[, expected_error]}.

Each scenario runs in :class:`tests.sim.hasim.Simulator` (the shipped manager, fencer and
in-memory store on a simulated clock), which asserts after every step that no fenced
guest runs on two hosts. The log must equal ``expected_log``, written by
hand. A scenario with ``expected_error`` must instead break the invariant with that text
(the negative cases that show the simulator does catch a double start).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gridtool.registry.records import Intent
from tests.sim.hasim import SimulationError, Simulator

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
CASES = sorted(p for p in SCENARIOS.iterdir() if (p / "initial.json").is_file())


def _run(case: Path) -> tuple[list[str], str | None]:
    sim = Simulator(json.loads((case / "initial.json").read_text()))
    try:
        sim.run((case / "cmds").read_text().splitlines())
    except SimulationError as exc:
        return sim.log, str(exc).splitlines()[0]
    return sim.log, None


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_scenario(case: Path) -> None:
    log, error = _run(case)
    expected = (case / "expected_log").read_text().splitlines()
    diff = "\n".join(difflib.unified_diff(expected, log, "expected_log", "actual", lineterm=""))
    assert log == expected, f"log differs:\n{diff}"
    error_file = case / "expected_error"
    want = error_file.read_text().strip() if error_file.exists() else None
    assert error == want if want is None else want in (error or ""), error


def test_scenarios_do_not_depend_on_an_earlier_libvirt_error() -> None:
    """libvirt-python names a new libvirtError after the thread's last real libvirt error:
    a failed libvirt call earlier in the process (an integration test) must not change
    what the simulated libvirt says."""
    import libvirt

    with pytest.raises(libvirt.libvirtError):
        libvirt.open("test:///no/such/file.xml")  # leaves a last error behind
    case = SCENARIOS / "libvirtd-restart"
    assert _run(case)[0] == (case / "expected_log").read_text().splitlines()


def test_there_are_enough_scenarios() -> None:
    assert len([c for c in CASES if not (c / "expected_error").exists()]) >= 8


def test_bad_command_is_refused() -> None:
    sim = Simulator({"hosts": [{"name": "h1", "memory_mib": 1024}], "guests": []})
    with pytest.raises(SimulationError, match="bad command"):
        sim.command("fly h1")
    with pytest.raises(SimulationError, match="unknown host"):
        sim.command("power-off h9")


def test_invariant_catches_a_double_start() -> None:
    sim = Simulator({
        "hosts": [{"name": "h1", "memory_mib": 4096}, {"name": "h2", "memory_mib": 4096}],
        "guests": [{"name": "vm1", "host": "h1", "state": "running", "memory_mib": 512,
                    "volumes": ["vol1"]}],
    })
    sim.hosts["h2"].virt.define("vm1")
    sim.hosts["h2"].virt.start("vm1")  # a start that bypassed the fence
    with pytest.raises(SimulationError, match="guest vm1 in use on h1 and h2"):
        sim.check_invariant()


def test_a_scenario_turns_red_without_the_shipped_fence_before_recover_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator runs the shipped manager: with ``hadecide`` patched to ignore the
    fences still present (restart an HA guest while its fence is held), the scenario that
    exercises the rule no longer matches its expected log."""
    from gridtool.ha import rules as hadecide

    monkeypatch.setattr(hadecide._Round, "held", lambda self, guest: {})
    case = SCENARIOS / "ha-fence-before-recover"
    with pytest.raises(AssertionError, match="log differs"):
        test_scenario(case)
    log, _ = _run(case)
    assert "45 manager@h1: restart vm1 on h1 (host h2 gone)" in log


def test_a_scenario_runs_a_pinned_guest_twice_when_the_manager_skips_confirm_dead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped manager moves a pinned guest only after ``host confirm-dead``: with
    ``hadecide`` patched to count every unreachable host as confirmed dead, it releases
    the fence of the guest still running on the cut-off host and restarts it elsewhere,
    and the simulator's invariant catches the double run."""
    from dataclasses import replace

    from gridtool.ha import rules as hadecide

    real = hadecide._decide_pinned

    def without_confirm_dead(guest: hadecide.GuestView, rnd: hadecide._Round) -> list:
        dead = rnd.snap.confirmed_dead | {guest.host or ""}
        return real(guest, replace(rnd, snap=replace(rnd.snap, confirmed_dead=dead)))

    monkeypatch.setattr(hadecide, "_decide_pinned", without_confirm_dead)
    case = SCENARIOS / "pinned-partition-confirm-dead"
    with pytest.raises(AssertionError, match="log differs"):
        test_scenario(case)
    assert _run(case)[1] == "t=56: guest vm2 in use on h2 and h3"  # after the timed grace


def _start_without_fence(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's start handler defines and starts the guest but skips its fence."""
    from agents.intents import HANDLERS, Handler, IntentWorker
    from gridtool.registry.records import IntentAction

    def start(worker: IntentWorker, intent: Intent) -> str:
        worker._domain(intent).create()
        return f"{intent.name} started on {worker.host}"

    monkeypatch.setitem(HANDLERS, IntentAction.START, Handler(start))


def _acquire_blind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Fencer plans as if no fence were there and drops the transaction's
    create-revision compares (the guard that a fence is still absent)."""
    from agents import fencer
    from gridtool.fencing import shell

    real_plan = fencer.plan_acquire

    def plan_acquire(host: str, guest: Any, observed: dict, now: float) -> Any:
        return real_plan(host, guest, dict.fromkeys(observed), now)

    def run_plan(store: Any, keys: Any, plan: Any, lease: Any = None, guard: Any = ()) -> bool:
        txn = shell.plan_ops(keys, plan, lease, guard)
        if txn is None:
            return False
        compares, ops = txn
        return store.txn([c for c in compares if c.target != "create"], ops)

    monkeypatch.setattr(fencer, "plan_acquire", plan_acquire)
    monkeypatch.setattr(fencer, "run_plan", run_plan)


def _self_fence_forgets_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's self-fence stops counting HA guests it failed to destroy."""
    from agents.selffence import SelfFence

    real = SelfFence.step

    def step(self: SelfFence, in_doubt: bool) -> bool:
        real(self, in_doubt)
        self._fencer.forget_ha()
        return True

    monkeypatch.setattr(SelfFence, "step", step)


@pytest.mark.parametrize(("patch", "case", "error"), [
    (_start_without_fence, "operator-start-fence-held", "t=6: guest vm1 in use on h1 and h2"),
    (_acquire_blind, "operator-start-fence-held", "t=6: guest vm1 in use on h1 and h2"),
    (_self_fence_forgets_on_failure, "libvirtd-down-self-fence-watchdog",
     "t=56: guest vm1 in use on h1 and h3"),
], ids=["start-skips-fence", "acquire-skips-create-compare", "self-fence-forgets-failures"])
def test_a_scenario_turns_red_when_the_agent_side_of_the_fence_is_patched_out(
        monkeypatch: pytest.MonkeyPatch, patch: Callable[[pytest.MonkeyPatch], None],
        case: str, error: str) -> None:
    """The simulator runs the agent's real IntentWorker, Fencer, lease guard and
    self-fence: with the start handler not taking the fence, or the Fencer's acquire not
    guarded by the fence's create revision, the operator's start of a guest fenced on
    another host runs it twice; with a failed self-fence no longer counted, the watchdog
    is disarmed and the guest runs on while it is restarted elsewhere."""
    patch(monkeypatch)
    with pytest.raises(AssertionError, match="log differs"):
        test_scenario(SCENARIOS / case)
    assert _run(SCENARIOS / case)[1] == error
