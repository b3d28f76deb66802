"""Which guests ``guest list`` shows (pure): the records that match its filters, one page
of them, and how many more there are, over a stream of records read a page at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gridtool.registry.model import DecodeError

T = TypeVar("T")

#: Rows of ``guest list`` without --json unless --limit says otherwise.
TABLE_LIMIT = 100


@dataclass
class Paging(Generic[T]):
    """The ``page``-th run of ``limit`` matches (``limit`` 0: every match); counts the
    matches as they pass and keeps the records that do not decode."""

    limit: int = 0
    page: int = 1
    matched: int = 0
    errors: list[DecodeError] = field(default_factory=list)

    def select(self, records: Iterable[T | DecodeError],
               keep: Callable[[T], bool]) -> Iterator[T]:
        """The records of this page that ``keep`` accepts; read to the end, so that
        ``matched`` and ``more`` count every match."""
        first = (self.page - 1) * self.limit
        for record in records:
            if isinstance(record, DecodeError):
                self.errors.append(record)
            elif keep(record):
                self.matched += 1
                if not self.limit or first < self.matched <= first + self.limit:
                    yield record

    @property
    def more(self) -> int:
        """Matches after this page."""
        return max(0, self.matched - self.page * self.limit) if self.limit else 0

    def footer(self) -> str | None:
        """The line under a table that does not show every match; None when it does."""
        if not self.more:
            return None
        return (f"{self.more} more guest(s) match: --page {self.page + 1} for the next "
                f"{min(self.more, self.limit)}, --limit 0 for all, or filter with --host, "
                "--state, --pool")
