"""``run_intent``: send a guest intent to its host's agent and wait for the answer."""

from __future__ import annotations

from gridtool.cli.common.context import AppContext
from gridtool.registry.model import GuestRecord


def run_intent(app: AppContext, rec: GuestRecord, action: str, wait: bool,
               timeout: float, params: dict | None = None) -> None:
    """Submit an intent to ``rec.host`` and follow it with a spinner."""
    from gridtool.cli.common.output import console
    from gridtool.registry.intents import IntentClient

    client = IntentClient(app.store, app.config.keys)
    intent = client.submit(rec.host, action, rec.uuid, rec.name, params)
    err = console(stderr=True)
    if not wait:
        err.print(f"{action} {rec.name}: asked {rec.host} (intent {intent.id})")
        return

    def alive() -> bool:
        return app.store.get(app.config.keys.host(rec.host)) is not None

    with err.status(f"{action} {rec.name} on {rec.host}: pending") as status:
        done = client.wait(intent, timeout,
                           on_state=lambda i: status.update(
                               f"{action} {rec.name} on {rec.host}: {i.state}"),
                           host_alive=alive)
    err.print(done.message)
