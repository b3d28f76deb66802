"""Regenerate the sample arrival traces in this directory (deterministic, stdlib only).

    python bench/traces/make_traces.py

Each trace is a ``start,end,rate`` CSV (see gridtool.pools.queuesim): one simulated hour with a
base rate of 10 arrivals/s, i.e. 10 erlangs at the benchmark's 1 s mean service time.

The sample traces (steady, spike, diurnal, bursty) are what the flex policy was tuned on.
The held-out traces in ``heldout/`` are shapes and seeds it was never tuned on (flash crowd,
sawtooth, high steady load, bursts from another seed); each file's first line records its
generator and seed. bench/frontier.py reports the policy on both sets.
"""

from __future__ import annotations

import math
import random
from itertools import pairwise
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


def flash_crowd(seed: int = 101) -> Rows:
    """A flash crowd: at a random minute, the rate jumps to 6-10x and decays back to the
    base with a time constant of 2-5 minutes, in 10 s steps (seeded)."""
    rng = random.Random(seed)
    onset = rng.randrange(600, 2401, 10)
    peak, tau = rng.uniform(6, 10), rng.uniform(120, 300)
    rows: Rows = [(0, onset, BASE)]
    for t in range(onset, HOUR, 10):
        rows.append((t, t + 10, round(BASE * (1 + (peak - 1) * math.exp(-(t - onset) / tau)), 2)))
    return rows


def sawtooth(seed: int = 202) -> Rows:
    """Linear ramps from 0.5x to 3-5x over 4-10 minutes, then a drop back, in 10 s steps
    (seeded)."""
    rng = random.Random(seed)
    rows: Rows = []
    t = 0
    while t < HOUR:
        length, top = rng.randrange(240, 601, 10), rng.uniform(3, 5)
        for step in range(0, min(length, HOUR - t), 10):
            share = step / length
            rows.append((t + step, t + step + 10, round(BASE * (0.5 + (top - 0.5) * share), 2)))
        t += length
    return rows


def high_steady(seed: int = 303) -> Rows:
    """A high steady load: 8-12x the base for the whole hour (about 100 erlangs; seeded)."""
    return [(0, HOUR, round(BASE * random.Random(seed).uniform(8, 12), 1))]


def bursty_other(seed: int = 404) -> Rows:
    """The bursty shape from another seed."""
    return bursty(seed)


def offgrid_bursts(seed: int = 505) -> Rows:
    """Bursts of 15-75 s at 1.8-3.5x on a base of 0.8-1.2x, each edge at any second (not
    on the 10 s grid), every 1.5-5 minutes (seeded; added after the fifth round's tuning)."""
    rng = random.Random(seed)
    rows: Rows = []
    t = 0
    while t < HOUR:
        calm, burst = rng.randrange(90, 301), rng.randrange(15, 76)
        level = round(BASE * rng.uniform(0.8, 1.2), 1)
        rows.append((t, min(t + calm, HOUR), level))
        t += calm
        if t < HOUR:
            rows.append((t, min(t + burst, HOUR), round(level * rng.uniform(1.8, 3.5), 1)))
            t += burst
    return rows


def ramp_bursts(seed: int = 606) -> Rows:
    """A slow ramp with bursts on top: the base rises from 0.6x to 2.5x over the hour in
    10 s steps; every 1.5-5 minutes a burst of 15-60 s at 1.8-3x the base, its edges at
    any second (seeded; made after issue 15's sixth round was tuned, never tuned on)."""
    rng = random.Random(seed)
    starts: list[tuple[int, int, float]] = []
    t = rng.randrange(90, 301)
    while t < HOUR:
        length = rng.randrange(15, 61)
        starts.append((t, min(t + length, HOUR), rng.uniform(1.8, 3.0)))
        t += length + rng.randrange(90, 301)
    cuts = sorted({0, HOUR, *range(0, HOUR, 10), *(a for a, _, _ in starts),
                   *(b for _, b, _ in starts)})
    rows: Rows = []
    for a, b in pairwise(cuts):
        base = BASE * (0.6 + 1.9 * (a // 10 * 10) / HOUR)
        factor = next((f for s, e, f in starts if s <= a < e), 1.0)
        rows.append((a, b, round(base * factor, 2)))
    return rows


TRACES = {"steady": steady, "spike": spike, "diurnal": diurnal, "bursty": bursty}
HELDOUT = {"flash_crowd": flash_crowd, "sawtooth": sawtooth, "high_steady": high_steady,
           "bursty_404": bursty_other, "offgrid_bursts": offgrid_bursts,
           "ramp_bursts": ramp_bursts}


def write(name: str, rows: Rows, directory: Path = HERE, note: str = "") -> Path:
    path = directory / f"{name}.csv"
    lines = ([f"# {note}"] if note else []) + ["start,end,rate"]
    lines += [f"{a:g},{b:g},{r:g}" for a, b, r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    for name, make in TRACES.items():
        print(write(name, make()))
    heldout = HERE / "heldout"
    heldout.mkdir(exist_ok=True)
    for name, make in HELDOUT.items():
        seed = make.__defaults__[0] if make.__defaults__ else None
        note = f"held out: bench/traces/make_traces.py {make.__name__}(seed={seed})"
        print(write(name, make(), heldout, note))


if __name__ == "__main__":
    main()
