"""Shared bits of the benchmarks: percentiles, a printed table, JSON results, the phases
of HA failovers read from a log of the manager and the agents.

Every benchmark imports this module first: it puts the repository root on ``sys.path``
so that ``python bench/x.py`` can import the test harness (``tests.harness``), which
the installed package does not ship."""

from __future__ import annotations

import contextlib
import json
import platform
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
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


# -- the phases of HA failovers, from a log (``fleet_scale.py --log``) ---------------------
# One clock: the log lines' wall time (every process on this machine), from the moment the
# manager saw the host's lease gone: restarts written, intents picked up, fences taken,
# libvirt's starts, outcomes written and seen; the first and the last guest of each.

LINE = re.compile(r"^(\S+ \S+) (\d+) \S+ event=(\S+)(.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")
#: (event, what it marks), in the order a restart goes through them
PHASES = (("ha_restart", "restart written (manager)"),
          ("intent_start", "intent picked up, running written"),
          ("fence_acquired", "fence taken (agent)"),
          ("guest_created", "libvirt start done"),
          ("intent_done", "outcome written"),
          ("guest_running", "running record seen (a watch)"),
          ("restart_done", "outcome seen by the manager"))


@dataclass(frozen=True)
class LogEvent:
    """One ``event=`` line: when, which process, the event and its fields."""

    at: float  # epoch seconds
    pid: str
    name: str
    fields: dict[str, str]


@dataclass(frozen=True)
class Failover:
    """One host's failover as its log lines tell it."""

    host: str
    lost_at: float  # the manager saw the lease gone
    guests: int
    #: phase -> (count, first, last), seconds after ``lost_at``
    phases: dict[str, tuple[int, float, float]]
    per_process: dict[str, int]  # agent process -> intents it carried out
    destinations: int = 0  # distinct hosts the restarts were addressed to


def parse_log(lines: Iterable[str]) -> list[LogEvent]:
    """The ``event=`` lines of a log (``%(asctime)s PID LOGGER event=... k=v``)."""
    events = []
    for line in lines:
        m = LINE.match(line.strip())
        if m:
            at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append(LogEvent(at, m[2], m[3], dict(FIELD.findall(m[4]))))
    return events


def failovers(events: list[LogEvent]) -> list[Failover]:
    """One per host the manager saw lost and restarted guests of."""
    found = []
    for host in sorted({e.fields["host"] for e in events if e.name == "host_lost"}):
        lost = min(e.at for e in events if e.name == "host_lost" and e.fields["host"] == host)
        restarts = [e for e in events if e.name == "ha_restart" and e.fields.get("from") == host]
        guests = {e.fields["guest"] for e in restarts}
        if not guests:
            continue
        mine = [e for e in events if e.at >= lost and e.fields.get("guest") in guests]
        phases = {}
        for name, what in PHASES:
            times = sorted(e.at - lost for e in mine if e.name == name)
            if times:
                phases[what] = (len(times), times[0], times[-1])
        per = Counter(e.pid for e in mine if e.name == "intent_start")
        found.append(Failover(host, lost, len(guests), phases, dict(per),
                               len({e.fields.get("on") for e in restarts})))
    return found


def print_failovers(found: list[Failover]) -> None:
    """Each failover's phases, one line each."""
    for f in found:
        print(f"\nfailover of {f.host}: {f.guests} HA guest(s); seconds after the manager "
              "saw its lease gone")
        for what, (n, first, last) in f.phases.items():
            print(f"  {what:38s} n={n:3d}  first {first:7.3f}  last {last:7.3f}")
        print(f"  intents per agent process: {sorted(f.per_process.values(), reverse=True)}; "
              f"restarts sent to {f.destinations} distinct host(s)")
