"""The check's parameters: thresholds (``--warn``/``--crit KEY=RANGE``, defaults as
multiples of the agent report period) and ignored codes (``--ignore CODE``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gridtool.health.ranges import CheckUsageError, Range, parse_range
from gridtool.health.report import IGNORABLE_CODES, UNIGNORABLE

AGENT_REPORT_PERIOD_S = 30.0
"""Agent resync/report period that the default thresholds are multiples of."""

ETCD_QUOTA_BYTES = 2 * 1024**3
"""etcd's default ``--quota-backend-bytes`` (2 GiB): the DB size NOSPACE is raised at."""


THRESHOLDS: Mapping[str, str] = {
    "report_age": "seconds since a live host last reported",
    "clock_skew": "host clock minus checker clock, in seconds (signed)",
    "intent_age": "seconds a pending intent has been waiting",
    "db_size": "an etcd member's DB size in percent of its quota (--etcd-quota)",
    "cert_days": "days until a certificate expires (alerts below the range's start)",
}
"""Metric names accepted by ``--warn KEY=RANGE`` / ``--crit KEY=RANGE``."""


def _period_defaults(period_s: float) -> dict[str, Any]:
    """Default thresholds as multiples of the agent report period."""
    return {
        "report_age_warn": Range(end=3 * period_s),
        "report_age_crit": Range(end=10 * period_s),
        "clock_skew_warn": Range(-period_s / 6, period_s / 6),
        "clock_skew_crit": Range(-period_s, period_s),
        "intent_age_warn": Range(end=10 * period_s),
        "intent_age_crit": Range(end=60 * period_s),
        "db_size_warn": Range(end=80.0),
        "db_size_crit": Range(end=95.0),
        "cert_days_warn": Range(start=30.0),
        "cert_days_crit": Range(start=7.0),
    }


_DEFAULTS = _period_defaults(AGENT_REPORT_PERIOD_S)


def _check_ignorable(codes: Iterable[str]) -> None:
    """Raise :class:`CheckUsageError` unless every code may be ignored."""
    for code in codes:
        if code in UNIGNORABLE:
            raise CheckUsageError(f"code {code} cannot be ignored")
        if code not in IGNORABLE_CODES:
            valid = ", ".join(sorted(IGNORABLE_CODES))
            raise CheckUsageError(f"unknown check code {code!r}; valid codes: {valid}")


@dataclass(frozen=True)
class CheckParams:
    """Thresholds and ignored codes. Defaults assume a 30 s agent report period."""

    report_age_warn: Range = _DEFAULTS["report_age_warn"]
    report_age_crit: Range = _DEFAULTS["report_age_crit"]
    clock_skew_warn: Range = _DEFAULTS["clock_skew_warn"]
    clock_skew_crit: Range = _DEFAULTS["clock_skew_crit"]
    intent_age_warn: Range = _DEFAULTS["intent_age_warn"]
    intent_age_crit: Range = _DEFAULTS["intent_age_crit"]
    db_size_warn: Range = _DEFAULTS["db_size_warn"]
    db_size_crit: Range = _DEFAULTS["db_size_crit"]
    cert_days_warn: Range = _DEFAULTS["cert_days_warn"]
    cert_days_crit: Range = _DEFAULTS["cert_days_crit"]
    etcd_quota_bytes: float = ETCD_QUOTA_BYTES
    ignore: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check_ignorable(self.ignore)
        if not (math.isfinite(self.etcd_quota_bytes) and self.etcd_quota_bytes > 0):
            raise CheckUsageError(f"invalid etcd quota {self.etcd_quota_bytes!r}: must be > 0")

    @classmethod
    def for_period(cls, report_period_s: float) -> CheckParams:
        """Defaults for another agent report period (stale = 3x, critical = 10x, ...)."""
        if not (math.isfinite(report_period_s) and report_period_s > 0):
            raise CheckUsageError(f"invalid report period {report_period_s!r}: must be > 0")
        return cls(**_period_defaults(report_period_s))


def _split_items(values: Iterable[str]) -> Iterator[str]:
    """Items of repeated and/or comma-separated option values, blanks dropped."""
    for value in values:
        yield from (item.strip() for item in value.split(",") if item.strip())


def parse_threshold(spec: str) -> tuple[str, Range]:
    """Parse ``KEY=RANGE`` (e.g. ``report_age=120``) into a threshold key and range."""
    key, sep, text = spec.partition("=")
    key = key.strip().lower()
    if not sep or key not in THRESHOLDS:
        keys = ", ".join(sorted(THRESHOLDS))
        raise CheckUsageError(f"invalid threshold {spec!r}: expected KEY=RANGE, KEY one of {keys}")
    return key, parse_range(text)


def apply_thresholds(
    params: CheckParams, warn: Iterable[str] = (), crit: Iterable[str] = ()
) -> CheckParams:
    """Return ``params`` with ``--warn``/``--crit`` ``KEY=RANGE[,KEY=RANGE]`` values applied."""
    changes: dict[str, Any] = {}  # CheckParams fields by name: Range values
    for level, values in (("warn", warn), ("crit", crit)):
        for item in _split_items(values):
            key, rng = parse_threshold(item)
            changes[f"{key}_{level}"] = rng
    return replace(params, **changes)


def parse_ignore(values: Iterable[str]) -> frozenset[str]:
    """Codes from repeated/comma-separated ``--ignore`` values (case-insensitive), validated."""
    codes = frozenset(item.upper() for item in _split_items(values))
    _check_ignorable(sorted(codes))
    return codes


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> float:
    """Bytes from ``8589934592``, ``512M``, ``8G`` or ``8GiB`` (binary units)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in ("K", "M", "G", "T") else (raw, "")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise CheckUsageError(f"invalid size {text!r}: expected bytes or N[K|M|G|T]")
    return value


def build_params(
    warn: Iterable[str] = (),
    crit: Iterable[str] = (),
    ignore: Iterable[str] = (),
    report_period_s: float = AGENT_REPORT_PERIOD_S,
    etcd_quota: str | None = None,
) -> CheckParams:
    """CheckParams from raw CLI values; raises :class:`CheckUsageError` on any bad value."""
    base = replace(CheckParams.for_period(report_period_s), ignore=parse_ignore(ignore))
    if etcd_quota is not None:
        base = replace(base, etcd_quota_bytes=parse_size(etcd_quota))
    return apply_thresholds(base, warn, crit)
