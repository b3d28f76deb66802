"""``gridtool-agent``: the per-host agent's command line."""

from __future__ import annotations

import faulthandler
import importlib
import importlib.metadata
import logging
import signal
import sys
from types import FrameType

import click

from gridtool import __version__, logsetup, supervise
from gridtool.config import AGENT_CONFIG, load
from gridtool.errors import GridtoolError, OperationFailed

#: The libraries the agent runs on, as (distribution shown, module imported).
RUNTIME = (("libvirt-python", "libvirt"), ("etcd-sdk-python", "pyetcd"),
           ("grpcio", "grpc"), ("protobuf", "google.protobuf"), ("tenacity", "tenacity"))

#: The signals that stop the agent cleanly (man page: SIGNALS). Every other signal keeps
#: its default action: SIGHUP, for one, ends the agent at once, as SIGKILL does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def runtime_versions() -> str:
    """``gridtool-agent VERSION (python X, libvirt-python Y, ...)``, importing every library
    the agent runs on: a broken install fails here (OperationFailed), not at its first
    start under systemd."""
    found = [f"python {sys.version.split()[0]}"]
    for dist, module in RUNTIME:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise OperationFailed(f"cannot import {module} ({dist}): {exc}") from None
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = getattr(mod, "__version__", "?")
        found.append(f"{dist} {version}")
    return f"gridtool-agent {__version__} ({', '.join(found)})"


def show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    try:
        click.echo(runtime_versions())
    except GridtoolError as exc:
        click.echo(f"gridtool-agent: {exc}", err=True)
        ctx.exit(exc.exit_code)
    ctx.exit(0)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=show_version,
              help="Show the version and the libraries the agent loads (libvirt, etcd "
                   "client, grpcio, protobuf), then exit.")
@click.option("--config", "config_file", metavar="FILE",
              help=f"Config file (default {AGENT_CONFIG}).")
@click.option("--host", help="This host's name in the registry.")
@click.option("--libvirt-uri", help="libvirt URI to watch, e.g. qemu:///system.")
@click.option("--endpoints", help="etcd endpoints, comma separated HOST:PORT.")
@click.option("--prefix", help="Registry key prefix (default /gridtool/v1/).")
@click.option("--ttl", type=int, help="Host lease TTL in seconds (default 10).")
@click.option("--resync-interval", type=float, help="Seconds between full resyncs (default 30).")
@click.option("--labels", help="Host labels, comma separated (e.g. dedicated or overflow).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(config_file: str | None, log_level: str, **flags: object) -> None:
    """Mirror this host's libvirt guests into the gridtool registry (etcd).

    \b
    Example:
      gridtool-agent --host hv1 --libvirt-uri qemu:///system \\
          --endpoints 10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379
    """
    logsetup.configure(log_level)
    faulthandler.enable()  # a crash in libvirt's C code names the Python frames (journal)
    from agents.agent import Agent
    from gridtool.registry.etcdstore import EtcdStore

    try:
        cfg = load(config_file, flags, default_file=AGENT_CONFIG).require("host", "libvirt_uri")
        agent = Agent(cfg, EtcdStore(cfg))
    except GridtoolError as exc:
        click.echo(f"gridtool-agent: {exc}", err=True)
        sys.exit(exc.exit_code)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("gridtool.agent").info("event=signal signal=%s", signum)
        agent.stop()

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    refused: list[GridtoolError] = []

    def run() -> None:
        try:
            agent.run()
        except GridtoolError as exc:  # the host name is another machine's: a planned end
            refused.append(exc)

    # The main loop handles what it expects; anything else ends the process in one line
    # (its watchdog then goes unpetted, as after a crash) for systemd to restart it.
    supervise.supervised(run, "main", logging.getLogger("gridtool.agent"))()
    if refused:
        click.echo(f"gridtool-agent: {refused[0]}", err=True)
        sys.exit(refused[0].exit_code)


if __name__ == "__main__":
    main()
