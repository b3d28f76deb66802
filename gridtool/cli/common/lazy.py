"""A click group whose commands are imported when one is used, not when the CLI starts:
``gridtool host list`` imports the host listing's module, not every command's (each
command's imports cost start-up time in every other command)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyGroup(click.Group):
    """A group with commands named by where they live (``name -> "module:attribute"``),
    imported on first use: to run one, or to list them (``--help``, man pages)."""

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def resolve_command(self, ctx: click.Context, args: list[str],
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.list_commands(ctx):
            # a name that is not a command: click suggests the closest among the loaded
            # ones ("Did you mean 'list'?"), so load them all (only on this error)
            for name in self.lazy:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)


def lazy_group(lazy: Mapping[str, str], **kwargs: Any) -> Any:
    """``@lazy_group({...})``: ``click.group`` making a LazyGroup with these commands."""
    return click.group(cls=LazyGroup, lazy=lazy, **kwargs)
