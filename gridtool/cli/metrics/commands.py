"""``gridtool metrics serve``: a Prometheus exporter of the fleet."""

from __future__ import annotations

import click

from gridtool.cli.common.context import AppContext, pass_app


@click.command("serve")
@click.option("--port", default=9477, show_default=True, help="TCP port to listen on.")
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to bind.")
@pass_app
def serve(app: AppContext, port: int, addr: str) -> None:
    """Serve /metrics (Prometheus text format) until SIGTERM or Ctrl-C.

    Metrics: gridtool_hosts_up, gridtool_guests{state}, gridtool_fences_held,
    gridtool_fence_violations, gridtool_manager_leader, gridtool_registry_up,
    gridtool_registry_corrupt_records, gridtool_lost_hosts{fence} (lost hosts by the
    manager's fence: power, storage, waiting, failed),
    gridtool_event_propagation_seconds (histogram).

    \b
    Example:
      gridtool metrics serve --addr 0.0.0.0 --port 9477
    """
    import signal
    import threading

    from gridtool.health.metrics import serve as start

    server, _thread, watch = start(app.store, app.config.keys, port, addr)
    click.echo(f"serving metrics on http://{addr}:{port}/metrics", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    watch.cancel()
    server.shutdown()
