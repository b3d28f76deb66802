"""Fence keys as the CLI shows them: one row per held fence (``fence list``, ``host show``,
``guest show`` and their JSON share the shape)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gridtool.registry.keys import Keys
from gridtool.registry.store import Store


def read_fence_rows(store: Store, keys: Keys, volumes: Iterable[str] | None = None,
                    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every fence in one range read, or the fences of ``volumes`` one key each: (rows of
    ``volume, guest, guest_name, holder, token, since, kind, leased``; volume -> error for
    the records that do not decode)."""
    from gridtool.fencing.rules import Observed, Unreadable, observe

    items = store.list(keys.fences)[0] if volumes is None else [
        item for v in sorted(set(volumes)) if (item := store.get(keys.fence(v))) is not None]
    observed = {(v := i.key.removeprefix(keys.fences)): observe(v, i.value, i.mod_revision)
                for i in items}
    leases = {i.key.removeprefix(keys.fences): i.lease for i in items}
    rows, errors = [], {}
    for volume, obs in observed.items():
        if isinstance(obs, Unreadable):
            errors[volume] = f"corrupt registry record {keys.fence(volume)}: {obs.error}"
        elif isinstance(obs, Observed):
            f = obs.fence
            rows.append({"volume": f.volume, "guest": f.guest, "guest_name": f.guest_name,
                         "holder": f.holder, "token": obs.mod_revision, "since": f.since,
                         "kind": f.kind.value, "leased": bool(leases[volume])})
    return rows, errors
