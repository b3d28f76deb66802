"""Plugin output: ``GRIDTOOL STATUS: text | perfdata`` then one detail line per finding
(:func:`render_text`), or one versioned JSON document (:func:`render_json`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from gridtool.health.ranges import Status
from gridtool.health.report import Finding, Perf, Report, clean, exit_code, finite_or_none, plural

JSON_VERSION = 1
PLUGIN_NAME = "GRIDTOOL"
STATUS_TEXT_MAX = 80
"""Longest status line before the perfdata (guidelines: keep it under 80 for pagers)."""


def _counts(findings: Sequence[Finding]) -> str:
    tally = Counter(f.severity for f in findings)
    parts = [f"{tally[Status.CRITICAL]} critical", plural(tally[Status.WARNING], "warning")]
    parts.append(f"{tally[Status.UNKNOWN]} unknown")
    return ", ".join(part for part in parts if not part.startswith("0 "))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def summary(report: Report) -> str:
    """The status line's text: the worst finding (after counts if several), or the OK overview."""
    if not report.findings:
        return clean(report.ok_text)
    if len(report.findings) == 1:
        return report.findings[0].message
    return f"{_counts(report.findings)}: {report.findings[0].message}"


def status_line(report: Report) -> str:
    """``GRIDTOOL STATUS: text | perfdata`` (text clipped to keep the line pager-sized)."""
    head = f"{PLUGIN_NAME} {report.status.name}: "
    line = head + _clip(summary(report), STATUS_TEXT_MAX - len(head))
    if report.perfdata:
        line += " | " + " ".join(str(p) for p in report.perfdata)
    return line


def detail_line(finding: Finding) -> str:
    """``SEVERITY CODE: message`` for the long output."""
    return f"{finding.severity.name} {finding.code}: {finding.message}"


def render_text(report: Report) -> str:
    """Nagios output: the status line, then one detail line per finding (no final newline)."""
    return "\n".join([status_line(report), *(detail_line(f) for f in report.findings)])


def _perf_json(perf: Perf) -> dict[str, Any]:
    return {
        "label": perf.label,
        "value": finite_or_none(perf.value),
        "uom": perf.uom,
        "warn": None if perf.warn is None else str(perf.warn),
        "crit": None if perf.crit is None else str(perf.crit),
        "min": finite_or_none(perf.minimum),
        "max": finite_or_none(perf.maximum),
    }


def _finding_json(finding: Finding) -> dict[str, str]:
    return {
        "code": finding.code,
        "severity": finding.severity.name,
        "kind": finding.kind,
        "subject": finding.subject,
        "message": finding.message,
    }


def render_json(report: Report) -> dict[str, Any]:
    """Versioned JSON-ready dict (strict JSON: no NaN/Infinity anywhere)."""
    return {
        "v": JSON_VERSION,
        "status": report.status.name,
        "exit_code": exit_code(report),
        "summary": summary(report),
        "findings": [_finding_json(f) for f in report.findings],
        "perfdata": [_perf_json(p) for p in report.perfdata],
        "ignored": dict(report.ignored),
    }
