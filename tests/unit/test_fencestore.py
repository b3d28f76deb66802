"""The transaction a fencing plan stands for (gridtool.fencing.shell.plan_ops, pure)."""

from __future__ import annotations

from gridtool.fencing.rules import (
    Fence,
    FenceKind,
    GuestRef,
    Observed,
    plan_acquire,
    plan_handover,
    plan_release,
)
from gridtool.fencing.shell import plan_ops
from gridtool.registry.keys import Keys
from gridtool.registry.store import Compare, Delete, Put

KEYS = Keys("/p/")
HA_VM = GuestRef("u1", "vm1", FenceKind.HA, ("vol-a", "vol-b"))
PINNED_VM = GuestRef("u1", "vm1", FenceKind.PINNED, ("vol-a",))


def held(volume: str, kind: FenceKind = FenceKind.HA, rev: int = 7) -> Observed:
    return Observed(Fence(volume, "h1", "u1", "vm1", kind, 1.0), rev)


def test_an_acquire_compares_absent_or_revision_and_puts_ha_fences_with_the_lease() -> None:
    plan = plan_acquire("h1", HA_VM, {"vol-a": None, "vol-b": held("vol-b", rev=9)}, now=5)
    compares, ops = plan_ops(KEYS, plan, lease=42)  # type: ignore[misc]
    assert compares == [Compare("/p/fences/vol-a", "create", 0),
                        Compare("/p/fences/vol-b", "mod", 9)]
    assert [(o.key, o.lease) for o in ops if isinstance(o, Put)] == [
        ("/p/fences/vol-a", 42), ("/p/fences/vol-b", 42), ("/p/holders/u1", None)]
    assert ops[-1] == Put("/p/holders/u1", b"h1")  # outlives the lease: names who ran it


def test_a_handover_names_the_target_the_holder_and_a_pinned_fence_names_none() -> None:
    plan = plan_handover("h1", "h2", HA_VM, {"vol-a": held("vol-a"), "vol-b": held("vol-b")},
                         now=5)
    txn = plan_ops(KEYS, plan, lease=43)  # type: ignore[arg-type]
    assert txn is not None and txn[1][-1] == Put("/p/holders/u1", b"h2")
    pinned = plan_ops(KEYS, plan_acquire("h1", PINNED_VM, {"vol-a": None}, 5))
    assert pinned is not None and all("holders" not in o.key for o in pinned[1])


def test_an_ha_fence_without_a_lease_is_no_transaction_a_pinned_one_has_no_lease() -> None:
    assert plan_ops(KEYS, plan_acquire("h1", HA_VM, {"vol-a": None, "vol-b": None}, 5)) is None
    txn = plan_ops(KEYS, plan_acquire("h1", PINNED_VM, {"vol-a": None}, 5), lease=42)
    assert txn is not None and [o.lease for o in txn[1]] == [None]  # type: ignore[union-attr]


def test_a_release_compares_each_revision_then_deletes_after_the_guard() -> None:
    guard = [Compare("/p/manager/leader", "create", 3)]
    plan = plan_release("h1", HA_VM, {"vol-a": held("vol-a", rev=4), "vol-b": None})
    assert plan_ops(KEYS, plan, guard=guard) == (
        [*guard, Compare("/p/fences/vol-a", "mod", 4)],
        [Delete("/p/fences/vol-a"), Delete("/p/holders/u1")])
