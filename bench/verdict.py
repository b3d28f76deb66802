"""Benchmark verdicts: every target a named bound on a measured number, judged once.

A benchmark builds a :class:`Verdict`, adds one :meth:`Verdict.check` per target it states
(the README's "target" column), prints it, writes it into its JSON and exits with
:meth:`Verdict.exit_code`: 0 when every target holds, 1 when one fails. A measurement that
is missing or not a number (``None``, NaN) fails its target, and a verdict without a
single check fails too: a benchmark cannot pass by measuring nothing. Pure: no I/O but
:meth:`Verdict.print`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Number = float | int | bool | None

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt}


def word(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


@dataclass(frozen=True)
class Check:
    """One target: ``measured op bound`` (``worst failover s <= 10``)."""

    name: str
    measured: Number
    op: str
    bound: float | int | bool
    unit: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown comparison {self.op!r} (one of {', '.join(OPS)})")

    @property
    def ok(self) -> bool:
        value = self.measured
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return OPS[self.op](value, self.bound)

    def row(self) -> tuple[str, str, str, str]:
        """(target, measured, needed, PASS/FAIL) for the printed table."""
        needed = f"{self.op} {_show(self.bound, self.unit)}"
        return self.name, _show(self.measured, self.unit), needed, word(self.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.name, "measured": self.measured, "op": self.op,
                "bound": self.bound, "unit": self.unit, "pass": self.ok}


def _show(value: Number, unit: str) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".rstrip()


@dataclass
class Verdict:
    """The targets of one benchmark run."""

    title: str
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, measured: Number, op: str, bound: float | int | bool,
              unit: str = "") -> bool:
        """Add a target; True when it holds."""
        added = Check(name, measured, op, bound, unit)
        self.checks.append(added)
        return added.ok

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        """For the benchmark's JSON: ``{"pass": ..., "targets": [...]}``."""
        return {"pass": self.ok, "targets": [c.to_dict() for c in self.checks]}

    def print(self) -> None:
        """The targets as a table, then one line: the verdict (and what failed)."""
        from benchlib import print_table

        print_table(f"targets: {self.title}", [c.row() for c in self.checks],
                    ["target", "measured", "needed", "verdict"])
        failed = ", ".join(c.name for c in self.failed) or ("no target checked"
                                                             if not self.checks else "")
        print(f"\n{self.title}: {word(self.ok)}" + (f" ({failed})" if failed else ""))
