"""Fence keys as the CLI shows them: one row per held fence (``fence list``, ``host show``,
``guest show`` and their JSON share the shape)."""

from __future__ import annotations

from typing import Any

from gridtool.registry.keys import Keys
from gridtool.registry.store import Store


def read_fence_rows(store: Store, keys: Keys) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every fence in one range read: (rows of ``volume, guest, guest_name, holder, token,
    since, kind, leased``; volume -> error for the records that do not decode)."""
    from gridtool.fencing.rules import Observed, Unreadable
    from gridtool.fencing.shell import read_all_fences

    observed, leases = read_all_fences(store, keys)
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
