"""Plain tables (``columns.plain_lines``) are the lines rich prints, without rich."""

from __future__ import annotations

import io
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from gridtool.cli.common.columns import plain_lines

cells = st.text(string.printable.strip() + " ", max_size=12)


def rich_lines(columns: list[str], rows: list[list[str]], width: int) -> list[str]:
    """What ``output.table`` printed with rich for plain cells."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*[Text(c) for c in row])
    out = io.StringIO()
    Console(file=out, width=width).print(t)
    return out.getvalue().splitlines()


@settings(max_examples=60, deadline=None)
@given(data=st.data(), ncols=st.integers(1, 6), width=st.integers(20, 200))
def test_plain_lines_are_what_rich_prints(data: st.DataObject, ncols: int,
                                          width: int) -> None:
    """Where ``plain_lines`` lays a table out, rich lays it out the same (header and
    rows); where it does not (too wide), rich folds it."""
    columns = data.draw(st.lists(st.text(string.ascii_uppercase, min_size=1, max_size=10),
                                 min_size=ncols, max_size=ncols), label="columns")
    rows = data.draw(st.lists(st.lists(cells, min_size=ncols, max_size=ncols), max_size=6),
                     label="rows")
    lines = plain_lines(columns, rows, width)
    if lines is None:
        assert sum(max(len(c) for c in col) for col in zip(columns, *rows, strict=True)) \
            + 2 * (ncols - 1) > width
        return
    assert lines == rich_lines(columns, rows, width)


def test_what_rich_lays_out_otherwise_is_left_to_rich() -> None:
    assert plain_lines(["NAME"], [["naïve"]], 80) is None  # not ASCII
    assert plain_lines(["NAME"], [["a\tb"]], 80) is None  # a control character
    assert plain_lines(["NAME", "X"], [["a" * 80, "b"]], 80) is None  # too wide: folded
    assert plain_lines(["NAME", "X"], [["[bold]a", "b"]], 80) == ["NAME     X", "[bold]a  b"]
