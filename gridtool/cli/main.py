"""The ``gridtool`` entry point: global options, command groups, one-line errors."""

from __future__ import annotations

import os
import sys

import click

from gridtool import __version__
from gridtool.cli.common.context import AppContext
from gridtool.cli.common.lazy import lazy_group
from gridtool.errors import EXIT_INTERRUPTED, EXIT_SUCCESS, Aborted, GridtoolError, UsageError
from gridtool.health.ranges import Status

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


#: Every top-level command: one package per command under ``gridtool/cli/``, imported
#: when the command runs (start-up imports only what one command needs).
COMMANDS = {name: f"gridtool.cli.{name}:{name}" for name in (
    "rebalance", "host", "guest", "fence", "manager", "registry", "lab", "check", "pool",
    "metrics", "completion", "template", "clone", "intent", "web")}


@lazy_group(COMMANDS, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="gridtool")
@click.option("--config", "config_file", metavar="FILE", envvar="GRIDTOOL_CONFIG",
              help="Config file (default: your own running lab's, else "
              "/etc/gridtool/gridtool.conf).")
@click.option("--endpoints", metavar="HOST:PORT,...", help="etcd endpoints, comma separated.")
@click.option("--prefix", metavar="PREFIX", help="Registry key prefix (default /gridtool/v1/).")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="Give up on an unreachable registry after this long (default 5).")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, **overrides: object) -> None:
    """gridtool: run a fleet of Xen/KVM hypervisor hosts through libvirt and etcd.

    \b
    Examples:
      gridtool lab up --hosts 3        # a local lab: etcd + 3 simulated hosts
      gridtool host list
      gridtool guest list --state running --json
    """
    app = AppContext(config_file, {k: v for k, v in overrides.items() if v is not None})
    ctx.obj = app
    ctx.call_on_close(app.close)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure is one line on stderr and a documented exit code."""
    try:
        cli.main(args=argv, prog_name="gridtool", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C into Abort: raised from the KeyboardInterrupt, or (at a
        # prompt) with it as the context; a declined prompt or closed stdin has neither
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            sys.stderr.write("gridtool: interrupted\n")
            sys.exit(EXIT_INTERRUPTED)
        sys.stderr.write("gridtool: aborted\n")
        sys.exit(Aborted.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "gridtool"
        sys.stderr.write(f"gridtool: {exc.format_message()} (see '{where} --help')\n")
        # gridtool check is a Nagios plugin: bad arguments are its UNKNOWN
        sys.exit(Status.UNKNOWN.value if where.startswith("gridtool check")
                 else UsageError.exit_code)
    except click.ClickException as exc:
        sys.stderr.write(f"gridtool: {exc.format_message()}\n")
        sys.exit(exc.exit_code)
    except GridtoolError as exc:
        sys.stderr.write(f"gridtool: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("gridtool: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # the last line of defence: no traceback for users
        if os.environ.get("GRIDTOOL_DEBUG"):
            raise
        sys.stderr.write(f"gridtool: internal error: {type(exc).__name__}: {exc} "
                         "(set GRIDTOOL_DEBUG=1 for a traceback)\n")
        sys.exit(GridtoolError.exit_code)
    sys.exit(EXIT_SUCCESS)
