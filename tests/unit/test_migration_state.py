"""A cold migration starts the guest on the destination by what the source agent found at
its ``stop`` (its ``params['result']['was_running']``), not by a registry record that may be a
moment behind (:func:`gridtool.placement.shell.stopped_as_found`)."""

from __future__ import annotations

import pytest

from gridtool.placement.shell import stopped_as_found
from gridtool.registry.model import GuestRecord


def record(state: str) -> GuestRecord:
    return GuestRecord("u1", "vm1", "hv1", state, 1, 128, 0.0)


@pytest.mark.parametrize(("state", "result", "after"), [
    ("shutoff", {"was_running": True}, "running"),  # a record behind a start
    ("running", {"was_running": False}, "shutoff"),  # a record behind a stop
    ("blocked", {"was_running": True}, "blocked"),  # agrees: kept as it is
    ("shutoff", {"was_running": False}, "shutoff"),
    ("running", {}, "running"),  # an older agent says nothing: the record stands
    ("shutoff", {"was_running": "yes"}, "shutoff"),  # not a bool: ignored
])
def test_the_source_agents_word_wins_over_the_record(state: str, result: dict[str, object],
                                                     after: str) -> None:
    assert stopped_as_found(record(state), result).state == after
