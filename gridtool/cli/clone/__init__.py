"""``gridtool clone``: copy-on-write clones of a template."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from gridtool.cli.common.complete import HOSTS, POOLS, TEMPLATES
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import console, emit_json, json_option, table
from gridtool.errors import OperationFailed, UsageError

if TYPE_CHECKING:
    from gridtool.clone.shell import CloneResult


PHASES = ("overlay", "define", "start", "running", "ready")


class CloneProgress:
    """Rich progress on stderr: a spinner line per clone while it is made, one line
    per clone when it is settled (only those lines when stderr is not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console(stderr=True)
        self.live = self.console.is_terminal
        self.quiet = quiet
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> CloneProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.live:
            self.progress.stop()

    def __call__(self, item: CloneResult | str) -> None:
        from rich.markup import escape

        if isinstance(item, str):
            name, _, what = item.partition(": ")
            text = f"{escape(name)}: {escape(what)}"
            if name in self.tasks:
                self.progress.update(self.tasks[name], description=text)
            else:
                self.tasks[name] = self.progress.add_task(text, total=None)
            return
        if item.name in self.tasks:
            self.progress.remove_task(self.tasks.pop(item.name))
        if self.quiet:
            return
        if item.ok:
            secs = item.timings.get("running")
            when = f" in {secs:.2f}s" if secs is not None else ""
            line = f"[green]ok[/green]   {escape(item.name)} on {item.host}{when}"
        else:
            line = f"[red]FAIL[/red] {escape(item.name)}: {escape(item.error)}"
        self.progress.console.print(line, highlight=False)


@click.command("clone")
@click.argument("template_name", shell_complete=TEMPLATES, metavar="TEMPLATE")
@click.option("--count", default=1, show_default=True, help="How many clones to make.")
@click.option("--pool", shell_complete=POOLS, metavar="POOL",
              help="Record the clones as members of this pool.")
@click.option("--name-prefix", metavar="PREFIX",
              help="Clone names are PREFIX1, PREFIX2, ... skipping names in use "
                   "[default: TEMPLATE-].")
@click.option("--on", "on_host", shell_complete=HOSTS, metavar="HOST",
              help="Put every clone on this host.")
@click.option("--auto", is_flag=True,
              help="Let the allocator place each clone (the default).")
@click.option("--no-start", is_flag=True, help="Define the clones without starting them.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for every clone to be reported running.")
@json_option
@pass_app
def clone(app: AppContext, template_name: str, count: int, pool: str | None,
          name_prefix: str | None, on_host: str | None, auto: bool, no_start: bool,
          timeout: float, as_json: bool) -> None:
    """Clone a template: per clone a copy-on-write overlay on each golden image, a new
    name, UUID and MAC addresses, placement on a host, define and start, in parallel
    across hosts. A clone that fails leaves nothing behind; the others go on. Exit
    status 8 when any clone failed.

    \b
    Example:
      gridtool clone worker --count 8
      gridtool clone worker --count 2 --on hv2 --name-prefix hot- --json
    """
    from gridtool.clone.shell import clone_guests

    if on_host and auto:
        raise UsageError("--on and --auto exclude each other")
    began = time.monotonic()
    with CloneProgress(quiet=as_json) as progress:
        results = clone_guests(app.store, app.config, template_name, count, pool=pool,
                               name_prefix=name_prefix, on=on_host, start=not no_start,
                               timeout=timeout, progress=progress)
    seconds = time.monotonic() - began
    failed = [r for r in results if not r.ok]
    if as_json:
        emit_json(template=template_name, seconds=round(seconds, 3), ok=not failed,
                  clones=[r.to_dict() for r in results])
    else:
        _summary(results, seconds, not no_start)
    if failed:
        reasons = "; ".join(f"{r.name} ({r.error})" for r in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise OperationFailed(f"{len(failed)} of {len(results)} clones failed: "
                              f"{reasons}{more}")


def _summary(results: list[CloneResult], seconds: float, started: bool) -> None:
    def ms(r: CloneResult, phase: str) -> str:
        return f"{r.timings[phase] * 1000:.0f}" if phase in r.timings else "-"

    table(None, ["NAME", "HOST", "RESULT", *(f"{p.upper()} ms" for p in PHASES)],
          [(r.name, r.host or "-", "ok" if r.ok else f"failed: {r.error}",
            *(ms(r, p) for p in PHASES)) for r in results])
    good = sum(r.ok for r in results)
    state = "running" if started else "defined"
    console().print(f"{good} of {len(results)} clones {state} in {seconds:.2f}s",
                    highlight=False)
