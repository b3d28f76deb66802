"""The placement verdicts as the CLI shows them: a table row per host, why no host
can take a guest, and the fleet they are judged on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gridtool.cli.common.context import AppContext
from gridtool.cli.common.output import mib, table

if TYPE_CHECKING:
    from gridtool.placement.rules import GuestNeeds, HostVerdict, Placement
    from gridtool.placement.shell import FleetView


def fleet_of(app: AppContext) -> FleetView:
    """The fleet as the allocator judges it, read from the registry."""
    from gridtool.placement.shell import read_fleet

    return read_fleet(app.store, app.config.keys)


# --------------------------------------------------------------------------- verdicts


def needs_text(needs: GuestNeeds) -> str:
    parts = [mib(needs.memory_mib), f"{needs.vcpus} vCPU{'s' if needs.vcpus != 1 else ''}"]
    if needs.storage:
        parts.append("storage " + ",".join(sorted(needs.storage)))
    if needs.anti_affinity:
        parts.append(f"anti-affinity {needs.anti_affinity}")
    return ", ".join(parts)


def _verdict_word(v: HostVerdict, chosen: str | None, current: str | None) -> str:
    if v.host == current:
        return "current"
    if v.host == chosen:
        return "chosen"
    if not v.passed:
        return "fails " + ",".join(v.codes)
    return "passes (overflow)" if v.overflow else "passes"


def verdict_rows(placement: Placement, current: str | None) -> list[dict[str, Any]]:
    """One dict per host: its verdict word, score and failed filters."""
    return [{"host": v.host, "verdict": _verdict_word(v, placement.host, current),
             "passed": v.passed and v.host != current, "score": v.score,
             "overflow": v.overflow,
             "failures": [{"code": f.code, "reason": f.reason} for f in v.failures]}
            for v in placement.verdicts]


def why_not(rows: Sequence[dict[str, Any]], current: str | None) -> str:
    """Every other host and why it cannot take the guest, on one line."""
    reasons = [f"{r['host']}: " + "; ".join(f"{f['code']} ({f['reason']})"
                                           for f in r["failures"])
               for r in rows if r["host"] != current and r["failures"]]
    return "; ".join(reasons) if reasons else "no live host"


def no_host_reason(name: str, needs: GuestNeeds, placement: Placement,
                   current: str | None = None) -> str:
    """Why no host can take guest ``name``: what it needs and why each host fails."""
    return (f"no host can take {name} ({needs_text(needs)}): "
            f"{why_not(verdict_rows(placement, current), current)}")


def print_verdicts(title: str, rows: Sequence[dict[str, Any]]) -> None:
    table(title, ["HOST", "VERDICT", "SCORE", "WHY NOT"],
          [(r["host"], r["verdict"], "-" if r["score"] is None else f"{r['score']:.3f}",
            "; ".join(f"{f['code']}: {f['reason']}" for f in r["failures"]) or "-")
           for r in rows])
