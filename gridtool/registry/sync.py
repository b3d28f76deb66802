"""Pure reconcile: what an agent writes so the registry matches what libvirt shows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gridtool.registry.model import GuestRecord


@dataclass(frozen=True)
class SyncPlan:
    """Records to write and guest uuids whose records to remove."""

    puts: tuple[GuestRecord, ...]
    deletes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.puts and not self.deletes


def plan_sync(observed: Mapping[str, GuestRecord], stored: Mapping[str, GuestRecord]) -> SyncPlan:
    """Diff libvirt's view (by uuid) against the registry's records for one host.

    A record whose guest libvirt no longer knows is deleted (it was undefined, or was
    a transient guest destroyed while the agent was down); changed or new guests are
    written; unchanged ones are left alone apart from the report timestamp.
    """
    puts = tuple(
        rec for uuid, rec in sorted(observed.items())
        if uuid not in stored or not rec.same_content(stored[uuid])
    )
    deletes = tuple(sorted(set(stored) - set(observed)))
    return SyncPlan(puts, deletes)
