"""``run_intent``: send a guest intent to its host's agent and wait for the answer."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gridtool.cli.common.context import AppContext
from gridtool.registry.model import GuestRecord
from gridtool.registry.records import Intent


def intent_doc(intent: Intent) -> dict[str, Any]:
    """An intent as ``--json`` shows it (the record's own fields)."""
    return {**asdict(intent), "action": str(intent.action)}


def run_intent(app: AppContext, rec: GuestRecord, action: str, wait: bool,
               timeout: float, params: dict | None = None, quiet: bool = False) -> Intent:
    """Submit an intent to ``rec.host`` and follow it with a spinner (no output when
    ``quiet``, for --json); return it as submitted (no wait) or finished."""
    from gridtool.cli.common.output import console
    from gridtool.registry.intents import IntentClient

    client = IntentClient(app.store, app.config.keys)
    intent = client.submit(rec.host, action, rec.uuid, rec.name, params)
    err = console(stderr=True)
    if not wait:
        if not quiet:
            err.print(f"{action} {rec.name}: asked {rec.host} (intent {intent.id})")
        return intent

    def alive() -> bool:
        return app.store.get(app.config.keys.host(rec.host)) is not None

    def follow(on_state: Any) -> Intent:
        return client.wait(intent, timeout, on_state=on_state, host_alive=alive)

    if quiet:
        return follow(None)
    with err.status(f"{action} {rec.name} on {rec.host}: pending") as status:
        done = follow(lambda i: status.update(f"{action} {rec.name} on {rec.host}: {i.state}"))
    err.print(done.message)
    return done
