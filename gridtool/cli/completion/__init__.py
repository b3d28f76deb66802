"""``gridtool completion bash|zsh|fish``: print click's shell completion script."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_GRIDTOOL_COMPLETE"


@click.command("completion")
@click.argument("shell", metavar="SHELL", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (commands, options, choices).

    The same script as '_GRIDTOOL_COMPLETE=bash_source gridtool'. Source it from the
    shell's startup file, or save it where the shell loads completions from.

    \b
    Example:
      gridtool completion bash > /etc/bash_completion.d/gridtool
      echo 'eval "$(gridtool completion zsh)"' >> ~/.zshrc
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # click knows every name in SHELLS; kept for a future click
        raise click.UsageError(f"no completion for {shell}")
    root = ctx.find_root()
    click.echo(cls(root.command, {}, root.info_name or "gridtool", COMPLETE_VAR).source())
