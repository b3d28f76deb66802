"""Unit tests for gridtool.registry.sync: the pure reconcile plan."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.registry.model import Disk, GuestRecord
from gridtool.registry.sync import SyncPlan, plan_sync


def guest(uuid: str, **kw: object) -> GuestRecord:
    base = dict(uuid=uuid, name=f"g-{uuid}", host="node1", state="running", vcpus=1,
                memory_mib=1024, updated_at=100.0)
    base.update(kw)
    return GuestRecord(**base)  # type: ignore[arg-type]


def by_uuid(*records: GuestRecord) -> dict[str, GuestRecord]:
    return {r.uuid: r for r in records}


def test_nothing_to_do() -> None:
    plan = plan_sync({}, {})
    assert plan == SyncPlan((), ())
    assert plan.empty


def test_new_guest_is_put() -> None:
    new = guest("a")
    plan = plan_sync(by_uuid(new), {})
    assert plan.puts == (new,) and plan.deletes == ()
    assert not plan.empty


def test_changed_state_is_put() -> None:
    stored = guest("a", state="running")
    observed = guest("a", state="paused", updated_at=200.0)
    plan = plan_sync(by_uuid(observed), by_uuid(stored))
    assert plan.puts == (observed,)
    assert plan.puts[0].state == "paused"
    assert plan.deletes == ()


def test_changed_disks_or_memory_is_put() -> None:
    stored = guest("a")
    disk = Disk("vda", "/dev/etherd/e1.2", kind="block", shared=True, volume="aoe-e1.2")
    for observed in (guest("a", disks=(disk,)), guest("a", memory_mib=2048),
                     guest("a", autostart=True), guest("a", name="renamed")):
        assert plan_sync(by_uuid(observed), by_uuid(stored)).puts == (observed,)


def test_only_timestamp_changed_is_nothing() -> None:
    stored = guest("a", updated_at=100.0)
    observed = guest("a", updated_at=999.0)
    plan = plan_sync(by_uuid(observed), by_uuid(stored))
    assert plan == SyncPlan((), ())
    assert plan.empty


def test_vanished_guest_is_deleted() -> None:
    plan = plan_sync({}, by_uuid(guest("gone")))
    assert plan.puts == () and plan.deletes == ("gone",)
    assert not plan.empty


def test_mixed_plan_is_sorted() -> None:
    observed = by_uuid(guest("d"), guest("b", state="paused"), guest("a"), guest("c"))
    stored = by_uuid(guest("a", updated_at=1.0), guest("b"), guest("z"), guest("y"))
    plan = plan_sync(observed, stored)
    assert [r.uuid for r in plan.puts] == ["b", "c", "d"]
    assert plan.deletes == ("y", "z")


def test_ordering_independent_of_insertion_order() -> None:
    recs = [guest(u) for u in ("m", "a", "x", "c")]
    forward = plan_sync(by_uuid(*recs), by_uuid(guest("q"), guest("b")))
    backward = plan_sync(by_uuid(*reversed(recs)), by_uuid(guest("b"), guest("q")))
    assert forward == backward
    assert [r.uuid for r in forward.puts] == ["a", "c", "m", "x"]
    assert forward.deletes == ("b", "q")


def test_plan_puts_observed_record_not_stored() -> None:
    stored = guest("a", vcpus=1)
    observed = guest("a", vcpus=4, updated_at=500.0)
    (put,) = plan_sync(by_uuid(observed), by_uuid(stored)).puts
    assert put is observed


_uuids = st.sampled_from([f"u{i}" for i in range(8)])
_states = st.sampled_from(["running", "paused", "shutoff"])


@settings(max_examples=100, deadline=None)
@given(
    observed=st.dictionaries(_uuids, st.tuples(_states, st.floats(0, 1e9))),
    stored=st.dictionaries(_uuids, st.tuples(_states, st.floats(0, 1e9))),
)
def test_plan_properties(observed: dict, stored: dict) -> None:
    obs = {u: guest(u, state=s, updated_at=t) for u, (s, t) in observed.items()}
    sto = {u: guest(u, state=s, updated_at=t) for u, (s, t) in stored.items()}
    plan = plan_sync(obs, sto)
    assert list(plan.deletes) == sorted(set(sto) - set(obs))
    put_ids = [r.uuid for r in plan.puts]
    assert put_ids == sorted(put_ids)
    expected = sorted(u for u in obs if u not in sto or obs[u].state != sto[u].state)
    assert put_ids == expected
    # applying the plan makes the registry match libvirt (up to timestamps)
    after = {u: r for u, r in sto.items() if u not in plan.deletes}
    after.update({r.uuid: r for r in plan.puts})
    assert set(after) == set(obs)
    assert all(after[u].same_content(obs[u]) for u in obs)
    assert plan_sync(obs, after).empty
    assert plan.empty == (put_ids == [] and plan.deletes == ())

