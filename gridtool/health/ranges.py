"""The Nagios plugin vocabulary: service statuses (the exit codes, combined worst-first) and
the threshold range language (``[@][start:]end``) that grades a value to a status."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum


class Status(IntEnum):
    """Nagios service state; the value is the plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """Severity order: OK < UNKNOWN < WARNING < CRITICAL (not the exit code's)."""
        return _RANK[self]


_RANK = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    """Worst of ``statuses`` (OK < UNKNOWN < WARNING < CRITICAL); OK when empty."""
    return max(statuses, key=lambda status: status.rank, default=Status.OK)


class CheckUsageError(ValueError):
    """Invalid check argument; ``str()`` is a one-line message (report it as UNKNOWN)."""


def fmt_number(value: float) -> str:
    """Render a finite number in plain decimal (class ``[-0-9.]``), shortest exact form."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class Range:
    """Nagios range: alert when the value is outside [start, end], or inside if ``inside``."""

    start: float = 0.0
    end: float = math.inf
    inside: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.start) or math.isnan(self.end) or self.start > self.end:
            raise ValueError(f"bad range bounds {self.start!r}..{self.end!r}")
        if self.start == math.inf or self.end == -math.inf:
            raise ValueError(f"bad range bounds {self.start!r}..{self.end!r}")

    def alerts(self, value: float) -> bool:
        """True when ``value`` raises an alert (NaN always alerts for an outside range)."""
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def __str__(self) -> str:
        at = "@" if self.inside else ""
        start = "~" if self.start == -math.inf else fmt_number(self.start)
        if self.end == math.inf:
            return f"{at}{start}:"
        if self.start == 0:
            return f"{at}{fmt_number(self.end)}"
        return f"{at}{start}:{fmt_number(self.end)}"


_NUM = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE_RE = re.compile(rf"(?P<at>@?)(?:(?P<start>~|{_NUM})?(?P<colon>:))?(?P<end>{_NUM})?")
_RANGE_HINT = "expected [@][start:]end as in 10, 10:, ~:10, 10:20, @10:20"


def parse_range(text: str) -> Range:
    """Parse Nagios range syntax; raise :class:`CheckUsageError` with a one-line message."""
    match = _RANGE_RE.fullmatch(text.strip())
    if match is None or not re.search(r"[0-9~]", text):
        raise CheckUsageError(f"invalid range {text!r}: {_RANGE_HINT}")
    raw_start, raw_end = match["start"], match["end"]
    start = -math.inf if raw_start == "~" else float(raw_start or 0)
    end = float(raw_end) if raw_end is not None else math.inf
    if start > end:
        raise CheckUsageError(f"invalid range {text!r}: start is greater than end")
    return Range(start, end, inside=bool(match["at"]))


def grade(value: float, warn: Range | None, crit: Range | None) -> Status:
    """Nagios get_status: CRITICAL if ``crit`` alerts, else WARNING if ``warn`` alerts."""
    if crit is not None and crit.alerts(value):
        return Status.CRITICAL
    if warn is not None and warn.alerts(value):
        return Status.WARNING
    return Status.OK
