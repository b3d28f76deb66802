"""Output for people (rich tables) and scripts (one versioned JSON document on stdout)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from gridtool.cli.common.columns import plain_lines

JSON_VERSION = 1

#: ``--json`` of every command that has it: one option name, one help text.
json_option = click.option("--json", "as_json", is_flag=True,
                           help="One JSON document on stdout.")


def emit_json(**body: Any) -> None:
    """Print one JSON document: ``{"v": 1, ...body}`` (indented only for a terminal)."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps({"v": JSON_VERSION, **body}, indent=indent, default=str) + "\n")


def stream_json(field: str, items: Iterable[Any], tail: Callable[[], dict[str, Any]]) -> None:
    """Print one JSON document ``{"v": 1, field: [items...], **tail()}``, each item written
    as it comes (never the whole list in memory; orjson: 100,000 guests are written in a
    fraction of what the json module takes; an item that is ``bytes`` is its JSON
    already); ``tail`` is called after the last item (what the items' reading found:
    errors, counts)."""
    import orjson

    def encode(value: Any) -> bytes:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)

    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    write = buffer.write if buffer is not None else lambda b: sys.stdout.write(b.decode())
    # written 64 KiB at a time: with PYTHONUNBUFFERED (containers set it) each item
    # would be a write(2) of its own (100,000 guests: 0.2-0.4 s of system time)
    chunk = bytearray(b'{"v":%d,%s:[' % (JSON_VERSION, encode(field)))
    sep = b""
    for item in items:
        chunk += sep
        chunk += item if type(item) is bytes else encode(item)
        sep = b","
        if len(chunk) >= CHUNK:
            write(chunk)
            chunk = bytearray()
    rest = encode(tail())[1:]  # '"errors":[...]}', or '}' for nothing more
    write(chunk + b"]" + (b"}" if rest == b"}" else b"," + rest) + b"\n")
    if buffer is not None:
        buffer.flush()


#: Bytes ``stream_json`` gathers before it writes them.
CHUNK = 64 * 1024


def outcome(as_json: bool, message: str, **body: Any) -> None:
    """Report what a command changed: with --json one JSON document on stdout (``body``:
    what changed, names, intent ids), else ``message`` (if any) for people on stderr."""
    if as_json:
        emit_json(**body)
    elif message:
        click.echo(message, err=True)


def warn(message: str) -> None:
    sys.stderr.write(f"gridtool: warning: {message}\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          markup: bool = True) -> None:
    """Print a table to stdout: rich's, or (``markup=False``: the cells are plain text,
    brackets and all) the same lines written without rich when they fit the width
    (``columns.plain_lines``; no rich import off a terminal)."""
    cells = [[str(c) for c in row] for row in rows]
    if not markup:
        tty = sys.stdout.isatty()
        out = console() if tty else None
        lines = plain_lines(columns, cells, out.width if out else PIPE_WIDTH)
        if lines is not None:
            if title:
                _title(title)
            if out is not None:  # the header as rich styles it, the rows as they are
                out.print(lines[0], style="bold", markup=False, highlight=False)
                lines = lines[1:]
            sys.stdout.write("".join(line + "\n" for line in lines))
            return
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in cells:
        t.add_row(*(row if markup else [Text(c) for c in row]))
    if title:
        _title(title)
    console().print(t)


def _title(title: str) -> None:
    console().print(f"[bold]{title}[/bold]", highlight=False)


def section(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A titled table, or 'title: -' when it has no row."""
    if rows:
        table(title, columns, rows)
    else:
        console().print(f"[bold]{title}[/bold]: {NOTHING}", highlight=False)


def console(stderr: bool = False) -> Any:
    """A rich console; when output is not a terminal, wide enough not to fold rows."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPE_WIDTH)


#: The width of tables written to a pipe or a file: wide enough not to fold rows.
PIPE_WIDTH = 200


#: What a view shows for nothing: no value, an empty list, a time that never was.
NOTHING = "-"


def mib(value: int) -> str:
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value} MiB"


def age(epoch: float, now: float | None = None) -> str:
    """'3s ago', '5m ago'…"""
    secs = max(0.0, (time.time() if now is None else now) - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{secs:.0f}s ago"


def utc(epoch: float) -> str:
    """'2026-12-02 05:20:15 UTC'."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def when(epoch: float | None, now: float | None = None) -> str:
    """A past time for people: '12s ago (2026-12-02 05:20:15 UTC)'; '-' for none (0)."""
    return f"{age(epoch, now)} ({utc(epoch)})" if epoch else NOTHING


def seconds(value: float) -> str:
    """A duration: '10 s', '2.5 s'."""
    return f"{value:g} s"


def text(value: object) -> str:
    """A value for people: '-' for None, '' and empty lists; lists joined with ', ';
    booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(str(v) for v in value) or NOTHING
    return NOTHING if value is None or value == "" else str(value)


STATE_STYLE = {"running": "green", "paused": "yellow", "shutoff": "dim", "crashed": "red",
               "unknown": "bold red"}


def styled_state(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def guest_state(state: str, reported: str) -> str:
    """A guest's state as listings show it: 'unknown (host lost; last running)' when its
    host is gone."""
    if state == "unknown" and reported != "unknown":
        return styled_state("unknown") + f" (host lost; last {reported})"
    return styled_state(state)
