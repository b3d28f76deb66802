"""Plain-text tables (pure): what rich prints for a borderless table of plain cells,
without rich. ``host list`` prints 2,000 rows; rich lays them out at about 1 ms each."""

from __future__ import annotations

from collections.abc import Sequence

#: Between two columns: rich's padding of one space on each side.
GAP = "  "


def plain_lines(columns: Sequence[str], rows: Sequence[Sequence[str]],
                width: int) -> list[str] | None:
    """The header and rows as rich lays out ``Table(box=None, pad_edge=False)`` of these
    cells in ``width`` columns: each cell left-aligned to its column's widest, joined by
    two spaces. None when rich would lay them out otherwise: a cell that is not
    printable ASCII (wide or control characters), or a table wider than ``width`` (rich
    folds it)."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            if not (cell.isascii() and cell.isprintable()):
                return None
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    if sum(widths) + len(GAP) * (len(widths) - 1) > width \
            or not all(c.isascii() and c.isprintable() for c in columns):
        return None
    pads = [w + len(GAP) for w in widths[:-1]]
    return ["".join([*(c.ljust(p) for c, p in zip(cells, pads, strict=False)),
                     cells[-1].ljust(widths[-1])])
            for cells in (columns, *rows)]
