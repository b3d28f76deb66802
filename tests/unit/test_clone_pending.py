"""Unit test for gridtool.clone.shell's placement view: clones another call is still making
(a clone record, no guest record yet) count against their hosts."""

from __future__ import annotations

from gridtool.clone.shell import _with_pending
from gridtool.clone.templates import CloneRecord, Template
from gridtool.placement.rules import HostView
from gridtool.placement.shell import FleetView
from gridtool.registry.model import GuestRecord


def test_pending_clones_take_room() -> None:
    hosts = (HostView("hv1", 1024, 1024, 4), HostView("hv2", 1024, 1024, 4))
    made = GuestRecord("u1", "w-1", "hv1", "shutoff", 1, 256, 0.0)
    fleet = FleetView(hosts, {}, (made,), {}, frozenset())
    tpl = Template("w", "<domain/>", [], {}, 256, 1, "/img", "s", "base", "hv1", 0.0)
    clones = [CloneRecord("u1", "w-1", "w", "hv1", 0.0),  # made (stopped): no room taken
              CloneRecord("u2", "w-2", "w", "hv2", 0.0),  # still being made on hv2
              CloneRecord("u3", "x-1", "gone", "hv2", 0.0)]  # template unknown: ignored
    out = _with_pending(hosts, fleet, clones, {"w": tpl})
    assert [(h.name, h.free_memory_mib, h.vcpus_allocated) for h in out] == [
        ("hv1", 1024, 0), ("hv2", 768, 1)]
