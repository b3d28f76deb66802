"""The fencing shell's store side: read fence keys, run a plan as ONE transaction.

The only place that reads fence keys into :data:`~gridtool.fencing.rules.Observation` values
and the only place that turns a fencing plan into an etcd transaction. Every caller
(agent, hook, manager, migration, CLI, health) goes through it, so the compares a plan
stands for are written once. Only the :class:`~gridtool.registry.store.Store` protocol is used:
any store (etcd, in-memory) will do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gridtool.fencing.recovery import HostFence
from gridtool.fencing.rules import (
    AcquirePlan,
    Expect,
    Observation,
    ReleasePlan,
    ReleaseStep,
    observe,
)
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError
from gridtool.registry.records import decode
from gridtool.registry.store import Compare, Delete, Put, Store


def read_host_fences(store: Store, keys: Keys) -> tuple[dict[str, HostFence],
                                                        list[DecodeError]]:
    """The manager's fence records of lost hosts (``manager/fenced/<host>``), by host, and
    the records that do not decode (one range read)."""
    found, errors = {}, []
    for item in store.list(keys.host_fences)[0]:
        try:
            found[item.key.removeprefix(keys.host_fences)] = decode(HostFence, item.key,
                                                                     item.value)
        except DecodeError as exc:
            errors.append(exc)
    return found, errors


def read_fences(store: Store, keys: Keys, volumes: Iterable[str]) -> dict[str, Observation]:
    """Volume -> what its fence key holds now (``None``: absent); one get per volume."""
    observed: dict[str, Observation] = {}
    for volume in volumes:
        item = store.get(keys.fence(volume))
        observed[volume] = observe(volume, item.value if item else None,
                                   item.mod_revision if item else 0)
    return observed


def read_all_fences(store: Store, keys: Keys) -> tuple[dict[str, Observation], dict[str, int]]:
    """Every fence key in one range read: (volume -> observation, volume -> the lease the
    key is attached to, 0 for none)."""
    items, _ = store.list(keys.fences)
    observed: dict[str, Observation] = {}
    leases: dict[str, int] = {}
    for item in items:
        volume = item.key.removeprefix(keys.fences)
        observed[volume] = observe(volume, item.value, item.mod_revision)
        leases[volume] = item.lease
    return observed, leases


def plan_ops(keys: Keys, plan: AcquirePlan | ReleasePlan, lease: int | None = None,
             guard: Sequence[Compare] = ()) -> tuple[list[Compare], list[Put | Delete]] | None:
    """The transaction ``plan`` stands for: ``guard`` plus one compare per step, then the
    puts (HA fences with ``lease``) or deletes. None when an HA fence must be put and
    there is no ``lease``: such a fence would never die with its holder.

    A plan that puts an HA fence also puts ``holders/<uuid>`` (the plan's holder, no
    lease); a release deletes it. The fence dies with its holder's lease, in the same
    revision as the host's record; this key stays, so any manager, a leader elected
    after that loss too, knows the guest may run on the lost host (a host that died
    before it reported the start leaves only this sign) and fences it first."""
    compares = list(guard)
    ops: list[Put | Delete] = []
    for step in plan.steps:
        key = keys.fence(step.volume)
        if isinstance(step, ReleaseStep):
            compares.append(Compare(key, "mod", step.mod_revision))
            ops.append(Delete(key))
            continue
        if step.with_lease and not lease:
            return None
        compares.append(Compare(key, "create", 0) if step.expect is Expect.ABSENT
                        else Compare(key, "mod", step.mod_revision))
        ops.append(Put(key, step.value.encode(), lease if step.with_lease else None))
    if isinstance(plan, ReleasePlan) and plan.steps:
        ops.append(Delete(keys.holder(plan.guest)))
    elif isinstance(plan, AcquirePlan) and any(s.with_lease for s in plan.steps):
        ops.append(Put(keys.holder(plan.guest), plan.holder.encode()))
    return compares, ops


def read_holders(store: Store, keys: Keys) -> dict[str, tuple[str, int]]:
    """``holders/``: guest uuid -> (the host that last took its HA fence, the key's
    mod revision), one range read."""
    return {item.key.removeprefix(keys.holders): (item.value.decode(errors="replace"),
                                                  item.mod_revision)
            for item in store.list(keys.holders)[0]}


def run_plan(store: Store, keys: Keys, plan: AcquirePlan | ReleasePlan,
             lease: int | None = None, guard: Sequence[Compare] = ()) -> bool:
    """Run ``plan`` as ONE transaction (see :func:`plan_ops`); True when it committed."""
    txn = plan_ops(keys, plan, lease, guard)
    return txn is not None and store.txn(*txn)
