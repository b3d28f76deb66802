"""The CLI's lazily imported commands: the same tree as every package declares, and one
command's run imports that command's module alone (issue 20: start-up cost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from gridtool.cli.common.lazy import LazyGroup
from gridtool.cli.main import cli

CLI = Path(__file__).resolve().parents[2] / "gridtool" / "cli"


def test_the_top_level_lists_every_command_package() -> None:
    """Every package under gridtool/cli/ (but common) is a top-level command, by name."""
    packages = {p.name for p in CLI.iterdir() if (p / "__init__.py").exists()} - {"common"}
    ctx = click.Context(cli)
    assert set(cli.list_commands(ctx)) == packages
    for name in packages:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name


@pytest.mark.parametrize("group", ["guest", "host"])
def test_lazy_groups_name_each_command_as_it_names_itself(group: str) -> None:
    ctx = click.Context(cli)
    lazy = cli.get_command(ctx, group)
    assert isinstance(lazy, LazyGroup) and lazy.lazy
    for name in lazy.list_commands(ctx):
        command = lazy.get_command(ctx, name)
        assert command is not None and command.name == name, name


def test_an_unknown_command_is_none_and_a_bad_entry_is_refused() -> None:
    group = LazyGroup("g", lazy={"x": "gridtool.errors:GridtoolError"})
    ctx = click.Context(group)
    assert group.get_command(ctx, "nope") is None
    with pytest.raises(TypeError, match="not a click command"):
        group.get_command(ctx, "x")


@pytest.mark.parametrize(("argv", "suggestion"), [(["guest", "lisst"], "Did you mean 'list'?"),
                                                  (["hots"], "Did you mean 'host'?")])
def test_a_mistyped_command_is_still_given_the_closest_name(
        argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gridtool.cli.main import main

    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2
    assert suggestion in capsys.readouterr().err


def test_one_command_imports_its_own_module_alone() -> None:
    """Resolving ``host list`` (what running it does) imports no other command's module,
    nor the registry client, rich or libvirt: those come when the command runs."""
    code = ("import sys, json, click\n"
            "from gridtool.cli.main import cli\n"
            "ctx = click.Context(cli)\n"
            "cli.get_command(ctx, 'host').get_command(ctx, 'list')\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                           capture_output=True, text=True).stdout))
    commands = {m for m in loaded if m.startswith("gridtool.cli.")
                and not m.startswith("gridtool.cli.common")}
    assert commands == {"gridtool.cli.main", "gridtool.cli.host", "gridtool.cli.host.show"}
    assert not loaded & {"grpc", "pyetcd", "rich", "libvirt", "paramiko", "yaml"}
