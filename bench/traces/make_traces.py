"""Regenerate the sample arrival traces in this directory (deterministic, stdlib only).

    python bench/traces/make_traces.py

Each trace is a ``start,end,rate`` CSV (see gridtool.pools.queuesim): one simulated hour with a
base rate of 10 arrivals/s, i.e. 10 erlangs at the benchmark's 1 s mean service time.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOUR = 3600
BASE = 10.0

Rows = list[tuple[float, float, float]]


def steady() -> Rows:
    """Constant base rate."""
    return [(0, HOUR, BASE)]


def spike() -> Rows:
    """A 5x step for ten minutes, from minute 10 to minute 20."""
    return [(0, 600, BASE), (600, 1200, 5 * BASE), (1200, HOUR, BASE)]


def diurnal() -> Rows:
    """A compressed day: 0.5x at night to 4x at the midday peak, in one-minute steps."""
    rows: Rows = []
    for minute in range(60):
        phase = (minute + 0.5) / 60
        rate = BASE * (0.5 + 3.5 * (1 - math.cos(2 * math.pi * phase)) / 2)
        rows.append((minute * 60, (minute + 1) * 60, round(rate, 2)))
    return rows


def bursty(seed: int = 7) -> Rows:
    """Base rate with 20-60 s bursts at 2-4x, every 2-6 minutes (seeded)."""
    rng = random.Random(seed)
    rows: Rows = []
    t = 0
    while t < HOUR:
        calm = rng.randrange(120, 361, 10)
        burst = rng.randrange(20, 61, 10)
        rows.append((t, min(t + calm, HOUR), BASE))
        t += calm
        if t < HOUR:
            rows.append((t, min(t + burst, HOUR), round(BASE * rng.uniform(2, 4), 1)))
            t += burst
    return rows


TRACES = {"steady": steady, "spike": spike, "diurnal": diurnal, "bursty": bursty}


def write(name: str, rows: Rows) -> Path:
    path = HERE / f"{name}.csv"
    lines = ["start,end,rate"] + [f"{a:g},{b:g},{r:g}" for a, b, r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    for name, make in TRACES.items():
        print(write(name, make()))


if __name__ == "__main__":
    main()
