"""agents.bounded: the main loop's libvirt calls with a deadline, ticking meanwhile."""

from __future__ import annotations

import threading

import libvirt
import pytest

from agents.bounded import BoundedCalls, LibvirtStalled


def _calls(**kw: float) -> tuple[BoundedCalls, list[str]]:
    seen: list[str] = []
    calls = BoundedCalls(tick=lambda: seen.append("tick"),
                         on_stall=lambda why: seen.append(why),
                         on_answer=lambda: seen.append("answer"), **kw)
    calls.owner = threading.current_thread()
    return calls, seen


def test_an_answer_is_returned_and_told() -> None:
    calls, seen = _calls()
    assert calls("read", lambda a, b: a + b, 2, 3) == 5
    assert seen == ["answer"]


def test_the_owner_ticks_while_a_call_waits() -> None:
    calls, seen = _calls(slice_s=0.01)
    gate = threading.Event()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 5:
            gate.set()  # the call answers after the fifth tick

    calls.tick = tick
    assert calls("read", lambda: gate.wait(10) and "done") == "done"
    assert ticks >= 5 and seen == ["answer"]


def test_no_answer_by_the_deadline_is_a_stall() -> None:
    with pytest.raises(libvirt.libvirtError):  # leaves this thread a last libvirt error
        libvirt.open("test:///nowhere/no-such-file.xml")
    calls, seen = _calls(deadline=0.05, slice_s=0.01)
    gate = threading.Event()
    with pytest.raises(LibvirtStalled, match=r"^libvirt not answering: node: no answer in"):
        calls("node", gate.wait, 10)
    gate.set()
    assert isinstance(LibvirtStalled("x"), libvirt.libvirtError)
    assert seen[-1].startswith("libvirt not answering: node:") and "answer" not in seen


def test_the_call_s_own_error_is_raised_as_it_was() -> None:
    calls, seen = _calls()

    def fails() -> None:
        raise libvirt.libvirtError("Domain not found")

    with pytest.raises(libvirt.libvirtError, match="Domain not found"):
        calls("read", fails)
    assert seen == []


def test_another_thread_calls_straight_through() -> None:
    calls, seen = _calls()
    on: list[str] = []
    worker = threading.Thread(target=lambda: on.append(
        calls("read", lambda: threading.current_thread().name)), name="intents")
    worker.start()
    worker.join(5)
    assert on == ["intents"] and seen == []  # on its own thread, untimed
