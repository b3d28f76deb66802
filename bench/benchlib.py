"""Shared bits of the benchmarks: percentiles, a printed table, JSON results.

Every benchmark imports this module first: it puts the repository root on ``sys.path``
so that ``python bench/x.py`` can import the test harness (``tests.harness``), which
the installed package does not ship."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (pct in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max/mean of seconds, in milliseconds."""
    return {"p50_ms": percentile(values, 50) * 1000, "p99_ms": percentile(values, 99) * 1000,
            "max_ms": max(values) * 1000, "mean_ms": sum(values) / len(values) * 1000,
            "count": len(values)}


def print_table(title: str, rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def phase_split(marks: dict[str, float], fenced: str = "fenced") -> dict[str, float]:
    """Where a failover's time went, from its marks (seconds after the fault): detection
    (``suspected``, else ``detected``), the fence after it (mark ``fenced``), the restart
    after the fence (or after detection without one: ``running_elsewhere``)."""
    detect = marks.get("suspected", marks.get("detected"))
    if detect is None or "running_elsewhere" not in marks:
        return {}
    fence_at = marks.get(fenced)
    phases = {"phase_detect_s": detect}
    if fence_at is not None:
        phases["phase_fence_s"] = fence_at - detect
    phases["phase_restart_s"] = marks["running_elsewhere"] - (detect if fence_at is None
                                                              else fence_at)
    return phases


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_json(name: str, body: dict[str, Any], path: str | None = None) -> Path:
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"python": platform.python_version(), "cpus": _cpus()}, **body}
    target.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {target}")
    return target


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


@contextlib.contextmanager
def lab_etcd(members: int = 1, prefix: str = "gridtool-bench-") -> Iterator[tuple[Path, Any]]:
    """A temporary directory and a real etcd cluster started in it (stopped, and the
    directory removed, on exit): ``with lab_etcd() as (tmp, cluster): ...``."""
    import tempfile

    from gridtool.lab.etcd import EtcdCluster

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cluster = EtcdCluster.create(Path(tmp), members)
        cluster.start()
        try:
            yield Path(tmp), cluster
        finally:
            cluster.stop()


def on_qemu_lab(name: str, run: Any, args: Any, members: int = 1) -> int:
    """``run(base, cluster, args)`` with a real etcd of ``members`` members, or exit code 2
    (and why) when QEMU cannot run on this machine: the entry point of the real-QEMU
    benchmarks."""
    from gridtool.lab import qemu

    why = qemu.unavailable()
    if why:
        print(f"{name}: QEMU cannot run here: {why}", file=sys.stderr)
        return 2
    with lab_etcd(members, prefix=f"gt-{name.replace('_', '-')}-") as (base, cluster):
        return run(base, cluster, args)
