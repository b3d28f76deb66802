"""A cold migration starts the guest on the destination by what the source agent found at
its ``stop`` (its ``params['result']['was_running']``), not by a registry record that may be a
moment behind (:func:`gridtool.placement.shell.stopped_as_found`)."""

from __future__ import annotations

import pytest

from gridtool.errors import Conflict
from gridtool.placement.shell import XEN_LIVE_REFUSAL, choose_mode, stopped_as_found
from gridtool.registry.model import GuestRecord, HostRecord


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


def host(name: str, hypervisor: str) -> HostRecord:
    return HostRecord(name, f"{hypervisor}:///system", hypervisor, 1, 1024, 512, "0", 0.0)


def test_xen_hosts_migrate_paused_by_default_and_refuse_live_saying_why() -> None:
    hv1, hv2 = host("hv1", "xen"), host("hv2", "xen")
    assert choose_mode(hv1, hv2, None) == "paused"
    assert choose_mode(hv1, hv2, "cold") == "cold"
    with pytest.raises(Conflict, match="Failed to enable logdirty"):
        choose_mode(hv1, hv2, "live")
    assert "use --paused" in XEN_LIVE_REFUSAL and "or --cold" in XEN_LIVE_REFUSAL
    with pytest.raises(Conflict, match="the test driver cannot live-migrate"):
        choose_mode(host("t1", "test"), host("t2", "test"), "live")
    q1, q2 = host("q1", "qemu"), host("q2", "qemu")
    assert choose_mode(q1, q2, None) == "live"
    with pytest.raises(Conflict, match=r"cannot migrate paused from q1 to q2: .*use --live"):
        choose_mode(q1, q2, "paused")
    with pytest.raises(Conflict, match=r"xen hosts only .*use --cold"):
        choose_mode(host("t1", "test"), host("t2", "test"), "paused")
    assert choose_mode(host("t1", "test"), host("t2", "test"), None) == "cold"
