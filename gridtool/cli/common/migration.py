"""Running migrations from the CLI: rich progress per phase, and the runner that carries
out planned moves one after another (``guest migrate``, ``host drain``, ``rebalance``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from gridtool.cli.common.context import AppContext
from gridtool.cli.common.output import console
from gridtool.errors import GridtoolError

if TYPE_CHECKING:
    from gridtool.placement.shell import FleetView, MigrationResult, Migrator, PhaseEvent


SHUTDOWN = click.option("--timeout", default=60.0, show_default=True,
                        help="Seconds to wait for a clean shutdown before destroying a guest.")
BANDWIDTH = click.option("--bandwidth", type=click.IntRange(min=1), metavar="MIB",
                         help="Cap each live migration's transfer at MIB MiB/s (libvirt's "
                              "migration bandwidth), to spare a shared link; default: no cap.")


class MigrationProgress:
    """Rich progress on stderr: a spinner for the phase under way and one line per finished
    phase; with ``total``, a bar over several migrations."""

    def __init__(self, total: int | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console(stderr=True)
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        self.progress = Progress(*columns, console=self.console, transient=True)
        self.total = total
        self.task: Any = None
        self.label = ""

    def __enter__(self) -> MigrationProgress:
        if self.console.is_terminal:  # elsewhere: only the finished lines, no live display
            self.progress.start()
        self.task = self.progress.add_task("", total=self.total)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.console.is_terminal:
            self.progress.stop()

    def begin(self, name: str, source: str, target: str) -> None:
        self.label = f"{name} {source} -> {target}"
        self.progress.update(self.task, description=f"migrate {self.label}")
        if self.total is not None:
            self.print(f"[bold]{name}[/bold]: {source} -> {target}")

    def event(self, ev: PhaseEvent) -> None:
        from rich.markup import escape

        if ev.finished:
            mark = "[green]ok[/green]  " if ev.state == "done" else "[red]FAIL[/red]"
            self.print(f"  {mark} {ev.phase:<8} {ev.host:<12} {ev.seconds:6.2f}s  "
                       f"{escape(ev.message)}")
        else:
            self.progress.update(self.task, description=f"migrate {self.label}: {ev.phase} "
                                 f"on {ev.host} ({ev.state}) {escape(ev.message)}".rstrip())

    def done(self, result: MigrationResult | None = None, error: str = "") -> None:
        from rich.markup import escape

        if result is not None:
            style = "green" if result.ok else "red"
            self.print(f"  [{style}]{result.state.value}[/{style}] "
                       f"({result.seconds:.2f}s): {escape(result.message)}")
            for warning in result.warnings:
                self.print(f"  [yellow]warning[/yellow]: {escape(warning)}")
        elif error:
            self.print(f"  [red]refused[/red]: {escape(error)}")
        if self.total is not None:
            self.progress.advance(self.task)

    def print(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)


def migrator_for(app: AppContext, timeout: float, progress: MigrationProgress | None,
                 bandwidth_mib: int | None = None) -> Migrator:
    from gridtool.placement.shell import Migrator

    return Migrator(app.store, app.config.keys, shutdown_timeout=timeout,
                    on_event=progress.event if progress is not None else None,
                    bandwidth_mib=bandwidth_mib)


def run_moves(app: AppContext, fleet: FleetView, moves: Sequence[Any], timeout: float,
              stop_on_failure: bool, bandwidth_mib: int | None = None) -> list[dict[str, Any]]:
    """Carry out planned moves one after another with progress; one dict per move."""
    from gridtool.placement.shell import choose_mode

    done: list[dict[str, Any]] = []
    with MigrationProgress(total=len(moves)) as progress:
        migrator = migrator_for(app, timeout, progress, bandwidth_mib)
        for move in moves:
            progress.begin(move.guest, move.source, move.target)
            entry: dict[str, Any] = {"guest": move.guest, "from": move.source,
                                     "to": move.target}
            try:
                rec = fleet.record(move.source, move.guest)
                mode = choose_mode(fleet.records[move.source], fleet.records[move.target],
                                   None)
                result = migrator.migrate(rec, move.target, mode)
            except GridtoolError as exc:
                progress.done(error=str(exc))
                entry.update(state="refused", ok=False, message=str(exc))
            else:
                progress.done(result)
                entry.update(result.to_dict())
            done.append(entry)
            if stop_on_failure and not entry["ok"]:
                break
    return done
