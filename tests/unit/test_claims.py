"""The busy/judging protocol (agents.claims.GuestClaims), with real threads."""

from __future__ import annotations

import threading

from agents.claims import GuestClaims


def test_a_judgement_is_skipped_while_the_guest_is_busy_and_exclusive() -> None:
    claims = GuestClaims()
    with claims.working("u1", wait=0) as ended:
        assert ended and claims.busy("u1")
        with claims.judging("u1") as claimed:
            assert not claimed
        with claims.judging("u2") as claimed:
            assert claimed
            with claims.judging("u2") as again:
                assert not again, "one judgement per guest at a time"
    assert not claims.busy("u1")
    with claims.judging("u1") as claimed:
        assert claimed


def test_busy_marks_count_so_each_worker_ends_only_its_own() -> None:
    claims = GuestClaims()
    claims.enter("u1", wait=0)
    with claims.working("u1", wait=0):
        pass
    assert claims.busy("u1"), "the other worker still holds it"
    claims.leave("u1")
    assert not claims.busy("u1")


def test_work_waits_for_the_judgement_in_progress() -> None:
    claims = GuestClaims()
    entered = threading.Event()
    ended: list[bool] = []

    def work() -> None:
        ended.append(claims.enter("u1", wait=30))
        entered.set()

    with claims.judging("u1") as claimed:
        assert claimed
        worker = threading.Thread(target=work)
        worker.start()
        assert not entered.wait(0.2), "work must not start during the judgement"
    worker.join(timeout=30)
    assert entered.is_set() and ended == [True] and claims.busy("u1")


def test_work_gives_up_waiting_after_its_deadline_and_says_so() -> None:
    claims = GuestClaims()
    with claims.judging("u1"):
        assert claims.enter("u1", wait=0.05) is False
    assert claims.busy("u1")
