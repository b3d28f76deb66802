"""The verdicts of ``gridtool check``: the stable finding codes, a :class:`Finding`, a
perfdata item (:class:`Perf`) and the :class:`Report` that :func:`exit_code` turns into
the plugin's exit code."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gridtool.health.ranges import Range, Status, fmt_number, worst

CODES: Mapping[str, str] = {
    "ETCD_ENDPOINT_DOWN": "an etcd endpoint is unreachable or unhealthy",
    "ETCD_NO_QUORUM": "too few healthy etcd members for quorum, or no raft leader",
    "ETCD_ALARM": "an etcd member raised an alarm (NOSPACE: the DB hit its quota and etcd "
                  "refuses writes; CORRUPT); always CRITICAL",
    "ETCD_DB_SIZE": "an etcd member's DB file is large against its quota (--etcd-quota; "
                    "db_size thresholds, in percent)",
    "ETCD_EARLY_REVOCATION": "HA guests rely on leases of an etcd version that can revoke "
                             "them early (etcd issues 15247/12528)",
    "HOST_LEASE_LOST": "a registered host has no live lease; its guests are unknown",
    "HOST_UNHEALTHY": "a live host's hypervisor does not answer its agent (on Xen: "
                      "xenstored or libxl down): its guest list cannot be trusted "
                      "(always CRITICAL)",
    "HOST_STALE": "a live host has not reported within the report_age thresholds",
    "CLOCK_SKEW": "a host clock differs from the checker's beyond clock_skew",
    "AGENT_VERSION_SKEW": "a live host runs another agent version than the fleet majority",
    "GUEST_DOUBLE_RUN": "a guest is running on two or more hosts (always CRITICAL)",
    "FENCE_MISSING": "a fenced guest is running without holding its volume fence",
    "FENCE_VIOLATION": "an agent found a fenced guest running without its fence (it paused "
                       "or destroyed it): look, then 'gridtool fence clear-violations'",
    "FENCE_ORPHAN": "a fence is held for a guest that is not running",
    "SETTINGS_ORPHAN": "a guest's settings record (settings/<uuid>) was left behind: no "
                       "host reports the guest and no clone record, pool member or "
                       "unfinished intent names it (e.g. a clone removed while its host "
                       "was down)",
    "HOST_HA_UNPROTECTED": "a live host runs HA guests with no working watchdog and no way "
                           "to fence it: a hung agent there lets them run twice",
    "HOST_FENCE_FAILED": "the manager's fence of a lost host failed or hung (power agent, "
                         "storage preempt): its HA guests stay down (always CRITICAL)",
    "INTENT_STALE": "a pending intent is older than the intent_age thresholds",
    "INTENT_FAILED": "an intent failed and is still recorded",
    "POOL_UNDERSIZE": "a worker pool runs fewer members than desired",
    "POOL_FEED_STALE": "a pool's queue feeder (pool feed) has not read its queue for 3 "
                       "periods (broker unreachable, queue gone, feeder dead): the pool "
                       "holds its size",
    "MANAGER_NO_LEADER": "no manager holds the leader election",
    "REGISTRY_CORRUPT": "a registry record could not be decoded",
    "CERT_EXPIRY": "a TLS certificate in use (ca_cert, cert, the certificates beside "
                   "ca_cert) expires within the cert_days thresholds, or cannot be read",
}
"""Stable finding codes produced by :func:`evaluate`, with their meaning."""

SPECIAL_CODES: Mapping[str, str] = {
    "ETCD_UNREACHABLE": "no etcd endpoint could be reached (CRITICAL)",
    "CHECK_ERROR": "the check itself failed or was misused (UNKNOWN)",
}
"""Codes of the reports built without a snapshot."""

UNIGNORABLE = frozenset({"GUEST_DOUBLE_RUN", *SPECIAL_CODES})
"""Codes ``--ignore`` refuses: a double run risks disk corruption; specials have no snapshot."""
IGNORABLE_CODES = frozenset(CODES) - UNIGNORABLE


def plural(count: int, word: str) -> str:
    """``1 host``, ``2 hosts``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def clean(text: str) -> str:
    """One safe line: non-printables become spaces, '|' (perfdata separator) becomes '/'."""
    return "".join(ch if ch.isprintable() else " " for ch in text).replace("|", "/")


@dataclass(frozen=True)
class Finding:
    """One verdict: stable ``code``, severity, subject (``kind`` + name), one-line message."""

    code: str
    severity: Status
    kind: str
    subject: str
    message: str

    def __post_init__(self) -> None:
        for name in ("kind", "subject", "message"):
            object.__setattr__(self, name, clean(getattr(self, name)))


UOMS = frozenset({"", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c"})


@dataclass(frozen=True)
class Perf:
    """One perfdata item; a None or non-finite value is rendered as ``U``."""

    label: str
    value: float | None
    uom: str = ""
    warn: Range | None = None
    crit: Range | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.uom not in UOMS:
            raise ValueError(f"bad perfdata UOM {self.uom!r}")
        if not self.label or clean(self.label) != self.label or set("='") & set(self.label):
            raise ValueError(f"bad perfdata label {self.label!r}")

    def __str__(self) -> str:
        value = _num_or(self.value, "U")
        if value != "U":
            value += self.uom
        fields = [value, _str_or(self.warn), _str_or(self.crit)]
        fields += [_num_or(self.minimum, ""), _num_or(self.maximum, "")]
        return f"'{self.label}'=" + ";".join(fields).rstrip(";")


def _num_or(value: float | None, missing: str) -> str:
    finite = finite_or_none(value)
    return missing if finite is None else fmt_number(finite)


def _str_or(rng: Range | None) -> str:
    return "" if rng is None else str(rng)


def finite_or_none(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (perfdata's ``U``, JSON's null)."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class Report:
    """Findings (worst first, ignored codes removed), perfdata, and ignored-code counts."""

    findings: tuple[Finding, ...]
    perfdata: tuple[Perf, ...] = ()
    ignored: tuple[tuple[str, int], ...] = ()
    ok_text: str = "all checks passed"

    @property
    def status(self) -> Status:
        """Worst finding severity; OK without findings."""
        return worst(f.severity for f in self.findings)


def exit_code(report: Report) -> int:
    """Plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    return int(report.status)
