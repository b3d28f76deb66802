"""``gridtool-agent``: the per-host agent's command line."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import click

from gridtool.config import AGENT_CONFIG, load
from gridtool.errors import GridtoolError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
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
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
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

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    except GridtoolError as exc:  # the host name is another machine's
        click.echo(f"gridtool-agent: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
