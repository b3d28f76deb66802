"""``gridtool pool feed`` against real brokers: a real redis-server and etcd, the real
manager, the feeder as a process of its own with the pool's reporter credentials.

The Redis test feeds a list, sees the load report land and the flex pool grow; then stops
the broker and sees the feeder fail and retry, no report written, the pool's size kept
over several manager rounds, and ``gridtool check`` say POOL_FEED_STALE. The RabbitMQ
test (marked ``slow``: Erlang boots in ~20 s here, more than CI's budget allows) reads a
real queue through the passive declare; run it alone with
``.venv/bin/python -m pytest -m slow tests/integration/test_pool_feed.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from gridtool.auth import shell as security
from gridtool.auth.credfiles import password_path, read_password, write_private
from gridtool.config import Config
from gridtool.ha.manager import Manager
from gridtool.lab.brokers import Broker, start_rabbitmq, start_redis
from gridtool.lab.procs import free_port, stop_pid
from gridtool.pools import shell as pools
from gridtool.pools.feed import FeedStatus
from gridtool.pools.flex import LoadSample
from gridtool.pools.rules import PoolStatus
from gridtool.registry.etcdstore import EtcdStore
from gridtool.registry.records import decode
from tests.harness.testbed import run_cli, wait_until

PERIOD = 0.5  # the feeder's; the manager's pool round runs every 0.3 s


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A redis-server of the test's own (a test may stop it)."""
    broker = start_redis(tmp_path_factory.mktemp("redis"))
    yield broker
    broker.stop()


def heartbeat(store: EtcdStore, cfg: Config, pool: str) -> FeedStatus | None:
    item = store.get(cfg.keys.pool_feed(pool))
    return None if item is None else decode(FeedStatus, item.key, item.value)


def feed_once(cfg: Config, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    return run_cli(cfg, capsys, "pool", "feed", "q", "--once", "--period", "0.1", *args)


def launch_feeder(cfg: Config, capsys: pytest.CaptureFixture, tmp_path: Path, pool: str,
                  log: IO[str], *args: str) -> subprocess.Popen[bytes]:
    """``pool feed POOL ARGS`` as a process of its own, as the pool's reporter user."""
    creds = tmp_path / "creds"
    root = read_password(security.credentials_dir(cfg, None) / "root.password")
    write_private(password_path(creds, "root"), root or "")
    code, out, err = run_cli(cfg, capsys, "registry", "user", "add", "reporter", "--pool",
                             pool, "--credentials-dir", str(creds), "--json")
    assert code == 0, err
    return subprocess.Popen(
        [sys.executable, "-m", "gridtool", "--config", json.loads(out)["config"],
         "--endpoints", ",".join(cfg.endpoints), "--prefix", cfg.prefix, "pool", "feed",
         pool, *args], stdout=log, stderr=subprocess.STDOUT)


def test_a_redis_list_feeds_the_pool_and_a_dead_broker_holds_its_size(
        redis_server: Broker, store: EtcdStore, cfg: Config, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    import redis

    pools.create(store, cfg.keys, pools.new_spec("q", "w", 1, 6, policy="flex",
                                                 target_wait=0.5))
    client = redis.Redis(port=redis_server.port)
    # bad input first, in-process: one line each, its own exit code
    code, _, err = feed_once(cfg, capsys, "--from", "redis://127.0.0.1:port/0", "--queue", "a")
    assert (code, err.count("\n")) == (2, 1) and "malformed broker URL" in err
    client.xgroup_create("s", "g", id="0", mkstream=True)
    code, _, err = feed_once(cfg, capsys, "--from", redis_server.url, "--queue", "s",
                             "--group", "nope")
    assert (code, err.count("\n")) == (11, 1) and "no consumer group 'nope'" in err
    code, _, err = feed_once(cfg, capsys, "--from", f"redis://127.0.0.1:{free_port()}/0",
                             "--queue", "jobs")
    assert (code, err.count("\n")) == (10, 1) and "Connection refused" in err
    code, out, _ = feed_once(cfg, capsys, "--from", redis_server.url, "--queue", "s", "--json")
    assert code == 0 and json.loads(out)["feed"]["reports"] == 1

    # the feeder as its own process, as the pool's reporter user
    log = (tmp_path / "feed.log").open("w")
    launched = time.time()
    feeder = launch_feeder(cfg, capsys, tmp_path, "q", log, "--from", redis_server.url,
                           "--queue", "jobs", "--period", str(PERIOD))
    stop = threading.Event()
    manager = Manager(cfg, store, "m1", period=0.2, pool_period=0.3)
    thread = threading.Thread(target=manager.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: (heartbeat(store, cfg, "q") or _BEAT).started > launched,
                   timeout=30, what="the feeder's first reading")
        client.rpush("jobs", *range(400))  # a burst: 400 jobs and nobody taking them
        wait_until(lambda: any(s.source == "feed:jobs" and s.arrivals == 400
                               for s in pools.samples(store, cfg.keys, "q")),
                   timeout=10, what="the burst's load report")
        wait_until(lambda: (pools.status(store, cfg.keys, "q") or _NONE).desired == 6,
                   timeout=10, what="the flex policy to grow the pool to its max")

        redis_server.stop()  # the broker goes away
        wait_until(lambda: (heartbeat(store, cfg, "q") or _BEAT).failures >= 2, timeout=10,
                   what="the feeder to fail twice")
        reports = len([s for s in pools.samples(store, cfg.keys, "q")
                       if s.source == "feed:jobs"])
        before = pools.status(store, cfg.keys, "q")
        assert before is not None
        wait_until(lambda: (pools.status(store, cfg.keys, "q") or _NONE).updated >
                   before.updated + 6 * 0.3, timeout=10, what="six more manager rounds")
        after = pools.status(store, cfg.keys, "q")
        assert after is not None and after.desired == 6  # no scale-down on missing data
        assert after.decisions.get("down", 0) == before.decisions.get("down", 0)
        assert len([s for s in pools.samples(store, cfg.keys, "q")
                    if s.source == "feed:jobs"]) == reports  # no report written
        beat = heartbeat(store, cfg, "q")
        assert beat is not None and "Connection refused" in beat.error

        def stale() -> str:
            code, out, _ = run_cli(cfg, capsys, "check", "--json")
            found = [f for f in json.loads(out)["findings"] if f["code"] == "POOL_FEED_STALE"]
            return found[0]["message"] if found and code else ""

        message = wait_until(stale, timeout=10, what="the POOL_FEED_STALE finding")
        assert "queue jobs" in str(message) and "size held" in str(message)
        assert feeder.poll() is None  # still retrying
    finally:
        stop.set()
        thread.join(30)
        stop_pid(feeder.pid, "pool")
        feeder.wait(10)
        log.close()
    assert heartbeat(store, cfg, "q") is None, "a clean stop drops its heartbeat"
    text = (tmp_path / "feed.log").read_text()
    assert "event=pool_feed_failed pool=q" in text and "password" not in text


def test_a_burst_is_reported_and_decided_within_a_reading_not_a_period_later(
        redis_server: Broker, store: EtcdStore, cfg: Config, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """Readings every 0.3 s, reports every 8 s, the manager's pool rounds every 60 s: a
    burst pushed right after a period report is reported at once (a surge) and the
    leading manager decides on it at once, within ~2 s, not at the next period."""
    import redis

    pools.create(store, cfg.keys, pools.new_spec("b", "w", 1, 20, policy="flex",
                                                 target_wait=0.5))
    client = redis.Redis(port=redis_server.port)
    with (tmp_path / "feed.log").open("w") as log:
        feeder = launch_feeder(cfg, capsys, tmp_path, "b", log, "--from", redis_server.url,
                               "--queue", "burst", "--period", "8", "--probe", "0.3")
        stop = threading.Event()
        manager = Manager(cfg, store, "m1", pool_period=60.0)  # one round at the start
        thread = threading.Thread(target=manager.run, args=(stop,))
        thread.start()
        try:
            def reports() -> list[LoadSample]:
                return [s for s in pools.samples(store, cfg.keys, "b")
                        if s.source == "feed:burst"]

            wait_until(reports, timeout=30, what="the feeder's first period report")
            (period,) = reports()
            wait_until(lambda: (pools.status(store, cfg.keys, "b") or _NONE).samples_until
                       >= period.timestamp, timeout=10,
                       what="the manager's round on the period report")
            first = pools.status(store, cfg.keys, "b") or _NONE
            pushed = time.time()
            client.rpush("burst", *range(200))  # nobody takes them
            def round_after_first() -> PoolStatus | None:
                status = pools.status(store, cfg.keys, "b") or _NONE
                return status if status.updated > first.updated else None

            status = wait_until(round_after_first, timeout=10,
                                what="the pool's round on the burst")
            decided = time.time() - pushed
            assert isinstance(status, PoolStatus)
            # the burst, then (nothing more arrives) possibly already its end, reported
            # at once as a drop: a change report with no arrivals
            surge, *ended = [s for s in reports() if s.surge]
            assert not period.surge and all(s.arrivals == 0 for s in ended), reports()
            assert surge.arrivals == 200 and surge.interval < 8
            assert surge.timestamp - pushed < 1.0  # at the next reading
            assert decided < 2.5, f"decided {decided:.1f} s after the burst"
            assert status.decision["direction"] == "up" and status.desired == 20
            assert status.updated < period.timestamp + 8  # before the next period report
            # nothing more arrives: the burst's end is reported at once too (a drop), and
            # its round keeps the pool, since the 200 jobs still wait (the backlog term)
            drops = wait_until(lambda: [s for s in reports() if s.surge and not s.arrivals],
                               timeout=5, what="the burst's end reported at once")
            assert isinstance(drops, list) and drops[0].timestamp < period.timestamp + 8

            def round_on_the_drop() -> PoolStatus | None:
                status = pools.status(store, cfg.keys, "b") or _NONE
                return status if status.updated > drops[0].timestamp else None

            held = wait_until(round_on_the_drop, timeout=5, what="the round on the drop")
            assert isinstance(held, PoolStatus) and held.desired == 20, held
        finally:
            stop.set()
            thread.join(30)
            stop_pid(feeder.pid, "pool")
            feeder.wait(10)
    assert "event=pool_feed_surge pool=b queue=burst" in (tmp_path / "feed.log").read_text()


def test_a_surge_reported_during_a_pool_round_starts_the_next_round_when_it_ends(
        store: EtcdStore, cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A surge report that comes in while a pool round runs (here held until the report
    is seen) has the next round start as soon as that one ends, not a manager period
    (30 s here) later."""
    from gridtool.pools.keeper import PoolKeeper

    pools.create(store, cfg.keys, pools.new_spec("s", "w", 1, 20, policy="flex",
                                                 target_wait=0.5))
    held, release, rounds = threading.Event(), threading.Event(), []
    tend = PoolKeeper.tend

    def held_tend(keeper: PoolKeeper, spec: object) -> object:
        rounds.append(time.time())
        if len(rounds) == 1:  # the first round waits for the test's surge report
            held.set()
            release.wait(30)
        return tend(keeper, spec)  # type: ignore[arg-type]

    monkeypatch.setattr(PoolKeeper, "tend", held_tend)
    stop = threading.Event()
    manager = Manager(cfg, store, "m1", period=30.0, pool_period=60.0)
    thread = threading.Thread(target=manager.run, args=(stop,))
    thread.start()
    try:
        wait_until(held.is_set, timeout=10, what="the first pool round")
        pools.report(store, cfg.keys, "s", arrivals=500, interval=1.0, queue_depth=400,
                     surge=True)
        wait_until(manager.pools._surge.is_set, timeout=5, what="the surge seen by the keeper")
        released = time.time()
        release.set()
        wait_until(lambda: len(rounds) == 2, timeout=5, what="a round on the surge")
        assert rounds[1] - released < 2.0
        wait_until(lambda: (pools.status(store, cfg.keys, "s") or _NONE).desired > 1,
                   timeout=5, what="the scale-up on the surge")
    finally:
        release.set()
        stop.set()
        thread.join(10)


def test_a_period_report_is_decided_on_at_once_not_at_the_rounds_own_phase(
        store: EtcdStore, cfg: Config) -> None:
    """Pool rounds every 60 s: a reporter's period report (no surge) is decided on at
    once, as every recent reporter has reported since the last round (with several,
    once the last of them has: ``test_poolplan.py``), not up to a period later."""
    pools.create(store, cfg.keys, pools.new_spec("r", "w", 1, 20, policy="flex",
                                                 target_wait=0.5))
    stop = threading.Event()
    manager = Manager(cfg, store, "m1", period=0.2, pool_period=60.0)
    thread = threading.Thread(target=manager.run, args=(stop,))
    thread.start()

    def decided_after(t: float) -> dict:
        status = pools.status(store, cfg.keys, "r") or _NONE
        return status.decision if status.updated > t and status.decision else {}

    try:
        wait_until(lambda: pools.status(store, cfg.keys, "r"), timeout=10,
                   what="the manager's first round")
        reported = time.time()
        pools.report(store, cfg.keys, "r", arrivals=50, completions=50, busy_seconds=20.0,
                     interval=10.0, source="a")
        first = wait_until(lambda: decided_after(reported), timeout=3,
                           what="a round on a's report")
        assert first["arrival_rate"] == pytest.approx(5.0, rel=0.05), first
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.slow
def test_a_rabbitmq_queue_is_read_by_passive_declare(tmp_path: Path, store: EtcdStore,
                                                     cfg: Config,
                                                     capsys: pytest.CaptureFixture) -> None:
    import pika

    broker = start_rabbitmq(tmp_path / "rabbit")
    try:
        pools.create(store, cfg.keys, pools.new_spec("q", "w", 0, 6, policy="flex"))
        code, _, err = feed_once(cfg, capsys, "--from", broker.url, "--queue", "jobs")
        assert (code, err.count("\n")) == (11, 1) and "'jobs' does not exist" in err
        conn = pika.BlockingConnection(pika.ConnectionParameters(port=broker.port))
        try:
            channel = conn.channel()
            channel.queue_declare("jobs")
            for _ in range(5):
                channel.basic_publish("", "jobs", b"job")
            wait_until(lambda: channel.queue_declare("jobs", passive=True)
                       .method.message_count == 5, what="5 messages ready")
        finally:
            conn.close()
        code, out, _ = feed_once(cfg, capsys, "--from", broker.url, "--queue", "jobs",
                                 "--json")
        assert code == 0 and json.loads(out)["feed"]["depth"] == 5
    finally:
        broker.stop()
    code, _, err = feed_once(cfg, capsys, "--from", broker.url, "--queue", "jobs")
    assert (code, err.count("\n")) == (10, 1)


_NONE = PoolStatus("", 0.0, -1, 0, 0)
_BEAT = FeedStatus("", "", "", 1.0, "", 0.0)
