"""Prometheus metrics of the fleet, read from the registry at each scrape.

A custom collector (``prometheus_client``) turns one registry read into gauges; a
watch on the guests prefix feeds a histogram of event propagation latency (the agent's
report time to the moment the registry change reaches the exporter), and a watch on the
intents prefix one of clone phase durations (as the agents measured them).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from gridtool import supervise
from gridtool.errors import GridtoolError
from gridtool.registry.fleet import Registry
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError, GuestRecord, decode, effective_state
from gridtool.registry.store import Event, Store

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CLONE_PHASES = ("overlay", "define", "start")


class Histogram:
    """A histogram kept per label value, exported as one metric family."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                 label: str | None = None) -> None:
        self.name, self.doc, self.bounds, self.label = name, doc, buckets, label
        self._series: dict[str, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def add(self, seconds: float, value: str = "") -> None:
        index = next((i for i, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        with self._lock:
            counts, total = self._series.setdefault(value, ([0] * (len(self.bounds) + 1),
                                                            [0.0]))
            counts[index] += 1
            total[0] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc,
                                       labels=[self.label] if self.label else None)
        with self._lock:
            series = {k: (list(c), t[0]) for k, (c, t) in self._series.items()}
        if not self.label and not series:
            series[""] = ([0] * (len(self.bounds) + 1), 0.0)
        for value, (counts, total) in sorted(series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([value] if self.label else [], buckets, total)
        return family


class Propagation(Histogram):
    """Seconds from an agent's report to the exporter seeing it (a guests watch)."""

    def __init__(self) -> None:
        super().__init__("gridtool_event_propagation_seconds",
                         "Seconds from an agent's report of a guest change to the registry "
                         "watch")

    def observe(self, ev: Event) -> None:
        if ev.kind != "put":
            return
        try:
            delay = max(0.0, time.time() - decode(GuestRecord, ev.key, ev.value).updated_at)
        except DecodeError:
            return
        self.add(delay)


class ClonePhases(Histogram):
    """Seconds per clone phase, from finished clone intents (an intents watch)."""

    def __init__(self) -> None:
        super().__init__("gridtool_clone_phase_seconds",
                         "Seconds an agent spent on each phase of a clone", label="phase")
        self._seen: set[str] = set()

    def observe(self, ev: Event) -> None:
        from gridtool.registry.records import Intent
        from gridtool.registry.records import decode as decode_record

        if ev.kind != "put":
            return
        try:
            intent = decode_record(Intent, ev.key, ev.value)
        except DecodeError:
            return
        if intent.action != "clone" or intent.state != "done" or intent.id in self._seen:
            return
        self._seen.add(intent.id)
        timings = (intent.params.get("result") or {}).get("timings") or {}
        for phase in CLONE_PHASES:
            if isinstance(timings.get(phase), int | float):
                self.add(float(timings[phase]), phase)


class FleetCollector(Collector):
    """Gauges of hosts, guests, fences, violations and the manager, per scrape."""

    def __init__(self, store: Store, keys: Keys, *histograms: Histogram) -> None:
        self.store = store
        self.keys = keys
        self.registry = Registry(store, keys)
        self.histograms = histograms

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily
                                  | CounterMetricFamily]:
        up = GaugeMetricFamily("gridtool_registry_up", "1 if the registry answered this scrape")
        try:
            listing = self.registry.listing()
            fences = len(self.store.list(self.keys.fences)[0])
            violations = len(self.store.list(self.keys.violations)[0])
            leader = self.store.get(self.keys.manager_leader)
        except GridtoolError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        live = frozenset(h.name for h in listing.hosts)
        yield _gauge("gridtool_hosts_up", "Hosts whose agent holds its lease", len(live))
        states = Counter(effective_state(g, live) for g in listing.guests)
        guests = GaugeMetricFamily("gridtool_guests", "Guests by state (unknown: host lost)",
                                   labels=["state"])
        for state, count in sorted(states.items()):
            guests.add_metric([state], count)
        yield guests
        yield _gauge("gridtool_fences_held", "Fence keys in the registry", fences)
        yield _gauge("gridtool_fence_violations", "Fence violations recorded by agents",
                     violations)
        yield _gauge("gridtool_registry_corrupt_records", "Records that do not decode",
                     len(listing.errors))
        yield _gauge("gridtool_manager_leader", "1 if a manager leads", int(leader is not None))
        yield self._host_fences()
        yield from _pool_families(self.store, self.keys)
        for histogram in self.histograms:
            yield histogram.family()


    def _host_fences(self) -> GaugeMetricFamily:
        """Lost hosts by the state of the manager's fence (power, storage, waiting, failed)."""
        from gridtool.fencing.shell import read_host_fences

        family = GaugeMetricFamily("gridtool_lost_hosts", "Lost hosts by the state of the "
                                   "manager's fence (failed: their HA guests stay down)",
                                   labels=["fence"])
        try:
            records = read_host_fences(self.store, self.keys)[0]
        except GridtoolError:
            records = {}
        states = Counter(r.state for r in records.values())
        for state in ("failed", "power", "storage", "waiting"):
            family.add_metric([state], states[state])
        return family


def _pool_families(store: Store, keys: Keys) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Per pool: desired and actual size, ready workers, warm workers (not serving) by
    state, flex decisions by direction."""
    from gridtool.pools.shell import overview

    try:
        rows = overview(store, keys)
    except GridtoolError:
        return
    desired = GaugeMetricFamily("gridtool_pool_desired", "Workers the pool should have",
                                labels=["pool"])
    actual = GaugeMetricFamily("gridtool_pool_members", "Workers the pool has (recorded)",
                               labels=["pool"])
    ready = GaugeMetricFamily("gridtool_pool_ready", "Pool workers running, as the manager "
                              "last saw", labels=["pool"])
    warm = GaugeMetricFamily("gridtool_pool_warm", "Warm pool workers that are not serving "
                             "(asleep, or booting before their sleep), as the manager last "
                             "saw", labels=["pool", "state"])
    decisions = CounterMetricFamily("gridtool_pool_flex_decisions",
                                    "Flex policy verdicts by direction (up, down, hold)",
                                    labels=["pool", "direction"])
    for row in rows:
        desired.add_metric([row["name"]], row["target"])
        actual.add_metric([row["name"]], row["members"])
        ready.add_metric([row["name"]], row["ready"] or 0)
        warm.add_metric([row["name"], "asleep"], row["warm_asleep"] or 0)
        warm.add_metric([row["name"], "booting"], row["warm_booting"] or 0)
        for way, count in sorted(row["decisions"].items()):
            decisions.add_metric([row["name"], way], count)
    yield from (desired, actual, ready, warm, decisions)
    yield from _pool_numbers(store, keys, [row["name"] for row in rows])


# the numbers an outside policy engine reads (gridtool.pools.rules.engine_numbers)
_NUMBER_GAUGES = (
    ("arrival_rate", "gridtool_pool_arrival_rate", "Arrivals per second, measured"),
    ("smoothed_rate", "gridtool_pool_smoothed_arrival_rate",
     "Arrivals per second, the flex policy's estimate"),
    ("service_time", "gridtool_pool_service_time_seconds", "Mean service time"),
    ("intensity", "gridtool_pool_intensity_erlangs", "Offered load: rate x service time"),
    ("recommended", "gridtool_pool_recommended", "Workers the flex policy recommends"),
)


def _pool_numbers(store: Store, keys: Keys, names: list[str]) -> Iterator[GaugeMetricFamily]:
    """Per pool with a report or decision: the numbers of ``pool numbers`` and the time
    and direction of the last decision."""
    from gridtool.pools.shell import engine_numbers

    families = {key: GaugeMetricFamily(name, doc, labels=["pool"])
                for key, name, doc in _NUMBER_GAUGES}
    when = GaugeMetricFamily("gridtool_pool_last_decision_timestamp_seconds",
                             "When the last flex decision was made (Unix time)",
                             labels=["pool", "direction", "source"])
    for name in names:
        try:
            numbers = engine_numbers(store, keys, name)
        except GridtoolError:
            continue
        if not numbers:
            continue
        for key, family in families.items():
            family.add_metric([name], numbers[key])
        last = numbers["last_decision"]
        when.add_metric([name, last["direction"], last["from"]], last["at"])
    yield from (*families.values(), when)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def serve(store: Store, keys: Keys, port: int, addr: str = "127.0.0.1") -> tuple:
    """Start the exporter's HTTP server; returns (server, thread, watch) to stop it."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    propagation, clones = Propagation(), ClonePhases()
    watches = _Watches(store, [(keys.guests, propagation.observe),
                               (keys.all_intents, clones.observe)])
    registry = CollectorRegistry()
    registry.register(FleetCollector(store, keys, propagation, clones))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server, thread, watches


class _Watches:
    """Several watches that cancel together, started on a thread that retries while the
    registry is unreachable: the exporter serves (``gridtool_registry_up 0``) meanwhile."""

    def __init__(self, store: Store, specs: list) -> None:
        self.watches: list = []
        self._stop = threading.Event()
        self._thread = supervise.thread(self._start, "metrics watches", (store, specs))
        self._thread.start()

    def _start(self, store: Store, specs: list) -> None:
        for prefix, observe in specs:
            while not self._stop.is_set():
                try:
                    self.watches.append(store.watch_prefix(prefix, observe))
                    break
                except GridtoolError:
                    self._stop.wait(1.0)

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for watch in self.watches:
            watch.cancel()
