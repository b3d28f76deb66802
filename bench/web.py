"""The web view at scale: 200 hosts x 50 guests (10,000 guests, each with a fence) in a
real etcd, ``gridtool web serve`` as a subprocess, and

- first load over HTTP: the page, ``/api/fleet`` and the first guest page, right after a
  registry change (so the server builds its view afresh), 5 rounds;
- first load in Debian's headless Chromium: navigation until the tables are drawn;
- a filtered page (``state=shutoff&host=...&page=2``);
- live latency: a guest record put in etcd until an open event stream says so and the
  guest's page shows it, 10 rounds.

Targets: first load <= 1 s (HTTP, max of the rounds; and in the browser), a change
visible <= 1 s (p95). Exits 1 when a target fails.

    .venv/bin/python bench/web.py [--hosts 200] [--guests-per-host 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from benchlib import lab_etcd, percentile, print_table, summary_ms, write_json
from registry_scale import populate
from verdict import Verdict

from gridtool.config import Config
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.fleet import Registry
from gridtool.registry.model import GuestRecord

TARGET_LOAD_S = 1.0
TARGET_LIVE_S = 1.0
CHROMIUM = "/usr/bin/chromium"


def get(url: str) -> tuple[bytes, float]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return body, time.perf_counter() - start


def first_load(base: str) -> tuple[float, int]:
    """Seconds for what the page fetches first, and the bytes it got."""
    start = time.perf_counter()
    sizes = [len(get(base + path)[0]) for path in ("", "static/app.js", "api/fleet",
                                                    "api/guests")]
    return time.perf_counter() - start, sum(sizes)


def browser_load(base: str, profile: Path) -> float:
    """Seconds from navigation until Chromium has drawn the host and guest tables (the
    second of two loads: a browser that runs already, as a user's does)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            seconds = 0.0
            for _ in range(2):
                page.goto("about:blank")
                start = time.perf_counter()
                page.goto(base)
                page.wait_for_selector("#guest-table tbody tr")
                page.wait_for_selector("#host-table tbody tr")
                seconds = time.perf_counter() - start
            return seconds
        finally:
            browser.close()


class Stream:
    """An open ``/events`` stream; ``wait_past(version)`` waits for a later event."""

    def __init__(self, url: str) -> None:
        self.version = -1
        self._cond = threading.Condition()
        self._response = urllib.request.urlopen(url, timeout=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed under it
            self._follow()

    def _follow(self) -> None:
        for raw in self._response:
            line = raw.decode().strip()
            if line.startswith("data: "):
                with self._cond:
                    self.version = json.loads(line[6:])["version"]
                    self._cond.notify_all()

    def wait_past(self, version: int, timeout: float = 10.0) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: self.version > version, timeout):
                raise TimeoutError("no event")
            return self.version

    def close(self) -> None:
        self._response.close()


def live_latency(base: str, registry: Registry, rounds: int) -> list[float]:
    """Seconds from a put to the guest's page showing the new record."""
    stream = Stream(base + "events")
    times = []
    try:
        for i in range(rounds):
            seen = stream.version
            name = f"live-{i}"
            start = time.perf_counter()
            registry.put_guest(GuestRecord(f"00000000-0000-4000-8000-{i:012d}", name, "sim000",
                                           "running", 1, 64, time.time()))
            while True:
                seen = stream.wait_past(seen)
                body = json.loads(get(f"{base}api/guests?q={name}")[0])
                if body["total"] == 1:
                    break
            times.append(time.perf_counter() - start)
    finally:
        stream.close()
    return times


def serve(cfg: Config) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gridtool")), "--endpoints",
         ",".join(cfg.endpoints), "--prefix", cfg.prefix, "web", "serve", "--listen",
         "127.0.0.1:0"], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "GRIDTOOL_LAB_DIR": "/nonexistent"})
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def wait_listed(base: str, guests: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while json.loads(get(base + "api/fleet")[0])["guest_count"] < guests:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not list every guest")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--guests-per-host", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    total = args.hosts * args.guests_per_host
    with lab_etcd() as (tmp, cluster):
        cfg = Config(endpoints=tuple(cluster.endpoints), prefix="/bench-web/", timeout=10.0)
        store = EtcdStore(cfg)
        registry = Registry(store, cfg.keys)
        populate(registry, store, args.hosts, args.guests_per_host)
        proc, base = serve(cfg)
        try:
            wait_listed(base, total)
            loads, size = [], 0
            for i in range(args.rounds):
                registry.put_guest(GuestRecord(f"10000000-0000-4000-8000-{i:012d}", f"churn-{i}",
                                               "sim001", "running", 1, 64, time.time()))
                wait_listed(base, total + i + 1)  # the change reached the server...
                registry.put_guest(GuestRecord(f"10000000-0000-4000-8000-{i:012d}", f"churn-{i}",
                                               "sim001", "paused", 1, 64, time.time()))
                seconds, size = first_load(base)  # ... and the next one makes a fresh view
                loads.append(seconds)
            _, filtered = get(f"{base}api/guests?state=shutoff&host=sim007&page=2&per_page=5")
            browser = browser_load(base, Path(tmp) / "profile") if Path(CHROMIUM).exists() \
                else float("nan")
            live = live_latency(base, registry, 2 * args.rounds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            store.close()
    body = {"hosts": args.hosts, "guests": total, "load_average": os.getloadavg()[0],
            "first_load_ms": summary_ms(loads),
            "first_load_bytes": size, "filtered_page_ms": round(filtered * 1000, 1),
            "browser_first_load_ms": round(browser * 1000, 1),
            "live_ms": summary_ms(live)}
    print_table(f"web view, {args.hosts} hosts, {total} guests, load {os.getloadavg()[0]:.1f}", [
        ("first load over HTTP (page, script, fleet, guests)",
         f"{body['first_load_ms']['p50_ms']:.0f} ms p50, {max(loads) * 1000:.0f} ms max, "
         f"{size / 1e6:.2f} MB"),
        ("first load in Chromium (tables drawn)", f"{browser * 1000:.0f} ms"),
        ("a filtered guest page", f"{filtered * 1000:.1f} ms"),
        ("a change, put to shown", f"{body['live_ms']['p50_ms']:.0f} ms p50, "
                                   f"{percentile(live, 95) * 1000:.0f} ms p95"),
    ], ["what", "time"])
    verdict = Verdict("web view")
    verdict.check("first load over HTTP (max)", max(loads), "<=", TARGET_LOAD_S, "s")
    verdict.check("first load in Chromium", browser, "<=", TARGET_LOAD_S, "s")
    verdict.check("change visible (p95)", percentile(live, 95), "<=", TARGET_LIVE_S, "s")
    verdict.print()
    write_json("web", {**body, **verdict.to_dict()}, args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
