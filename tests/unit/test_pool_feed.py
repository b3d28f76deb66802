"""The queue feeder: broker URLs, readings -> load reports, missing data, the heartbeat, and
the loop's handling of a broker that fails (with an in-memory registry and a scripted
queue: pure logic; the real brokers are in tests/integration/test_pool_feed.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridtool.errors import BadReading, BrokerUnavailable, NotFound, QueueGone
from gridtool.pools import shell as pools
from gridtool.pools.feed import (
    STALE_PERIODS,
    BrokerURL,
    FeedStatus,
    Reading,
    failed,
    parse_url,
    stale,
    succeeded,
    to_sample,
)
from gridtool.pools.feeder import Feeder
from gridtool.registry.keys import Keys
from gridtool.registry.memstore import MemStore
from gridtool.registry.records import decode

# --- URLs -------------------------------------------------------------------------------


def test_redis_and_amqp_urls_parse_with_defaults_and_hide_the_password() -> None:
    assert parse_url("redis://127.0.0.1:6380/2") == BrokerURL("redis", "127.0.0.1", 6380, db=2)
    assert parse_url("redis://mq") == BrokerURL("redis", "mq", 6379)
    url = parse_url("amqp://feeder:s%40cret@mq1/prod")
    assert (url.host, url.port, url.vhost, url.user, url.password) == \
        ("mq1", 5672, "prod", "feeder", "s@cret")
    assert url.redacted() == "amqp://feeder@mq1:5672/prod"
    assert parse_url("amqp://mq/").vhost == "/"
    assert "secret" not in parse_url("redis://:secret@h/0").redacted()


@pytest.mark.parametrize(("url", "why"), [
    ("http://h/0", "scheme must be one of redis://, amqp://"),
    ("redis:///0", "has no host"),
    ("redis://h:99999/0", "malformed broker URL"),
    ("redis://h:port/0", "malformed broker URL"),
    ("redis://h/zero", "the path must be a database number"),
    ("redis://h/0?x=1", "no query or fragment"),
    ("jobs", "scheme must be one of"),
])
def test_malformed_urls_give_one_line_reasons(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_url(url)
    assert "\n" not in str(info.value)


# --- readings to reports ----------------------------------------------------------------


def test_a_stream_gives_arrivals_completions_and_busy_seconds() -> None:
    prev = Reading(100.0, depth=4, in_service=2, added=50)
    cur = Reading(110.0, depth=6, in_service=4, added=80)
    s = to_sample(prev, cur, "feed:jobs")
    assert s is not None
    # 30 arrived; 2 more wait and 2 more are in service, so 26 were finished
    assert (s.timestamp, s.interval, s.arrivals, s.completions, s.queue_depth) == \
        (110.0, 10.0, 30, 26, 6)
    assert s.busy_seconds == pytest.approx(30.0)  # 3 in service on average over 10 s
    assert s.service_time() == pytest.approx(30 / 26)
    assert s.source == "feed:jobs"


def test_a_depth_only_queue_gives_the_backlog_growth_as_arrivals() -> None:
    s = to_sample(Reading(0.0, depth=3), Reading(10.0, depth=10), "q")
    assert s is not None and (s.arrivals, s.completions, s.queue_depth) == (7, 0, 10)
    assert s.busy_seconds is None
    drained = to_sample(Reading(0.0, depth=10), Reading(10.0, depth=2), "q")
    assert drained is not None and (drained.arrivals, drained.queue_depth) == (0, 2)


@pytest.mark.parametrize(("prev", "cur"), [
    (Reading(10.0, 1, 0, 5), Reading(10.0, 1, 0, 6)),  # no time passed
    (Reading(10.0, 1, 0, 5), Reading(5.0, 1, 0, 6)),  # the clock went back
    (Reading(0.0, 1, 0, 500), Reading(10.0, 1, 0, 3)),  # stream deleted and made again
    (Reading(0.0, 1, 0, 10), Reading(10.0, 9, 0, 12)),  # more waiting than arrived: reset
])
def test_readings_that_cannot_give_a_report_give_none(prev: Reading, cur: Reading) -> None:
    assert to_sample(prev, cur, "q") is None


def test_negative_counts_are_refused() -> None:
    for bad in ({"depth": -1}, {"depth": 0, "in_service": -2}, {"depth": 0, "added": -5},
                {"depth": 0, "consumers": -1}):
        with pytest.raises(ValueError, match="negative count"):
            Reading(0.0, **bad)  # type: ignore[arg-type]


# --- the heartbeat ------------------------------------------------------------------------


STATUS = FeedStatus("web", "redis://h:6379/0", "jobs", 10.0, "m:1", started=1000.0)


def test_a_feed_is_stale_after_three_periods_without_a_good_reading() -> None:
    assert stale(STATUS, 1000.0 + STALE_PERIODS * 10) is None  # just started
    assert stale(STATUS, 1031.0) == pytest.approx(31.0)
    ok = succeeded(STATUS, Reading(1100.0, depth=3), reported=True)
    assert (ok.last_ok, ok.depth, ok.reports, ok.failures) == (1100.0, 3, 1, 0)
    down = failed(failed(ok, "redis: refused", 1101.0), "redis: refused", 1103.0)
    assert (down.failures, down.error, down.last_ok) == (2, "redis: refused", 1100.0)
    assert stale(down, 1129.0) is None and stale(down, 1131.0) == pytest.approx(31.0)
    assert succeeded(down, Reading(1132.0, depth=0), False).error == ""


# --- the loop (scripted queue, in-memory registry) ------------------------------------------


class Script:
    """A queue source that answers with the readings (or raises the errors) given."""

    def __init__(self, *answers: Reading | Exception) -> None:
        self.answers = list(answers)
        self.closed = False

    def read(self) -> Reading:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> tuple[MemStore, Keys]:
    store, keys = MemStore(lambda: 0.0), Keys("/t/")
    pools.create(store, keys, pools.new_spec("web", "w", 0, 10, policy="flex"))
    return store, keys


def feeder(registry: tuple[MemStore, Keys], *answers: Reading | Exception) -> Feeder:
    store, keys = registry
    return Feeder(store, keys, "web", Script(*answers), broker="redis://h:6379/0",
                  queue="jobs", period=10.0, clock=Clock())


def heartbeat(registry: tuple[MemStore, Keys]) -> FeedStatus:
    store, keys = registry
    item = store.get(keys.pool_feed("web"))
    assert item is not None
    return decode(FeedStatus, item.key, item.value)


def test_failures_write_no_report_back_off_and_restart_from_a_new_baseline(
        registry: tuple[MemStore, Keys]) -> None:
    store, keys = registry
    f = feeder(registry, Reading(1000.0, 2, 0, 10), Reading(1010.0, 4, 1, 30),
               BrokerUnavailable("redis: Connection refused"), QueueGone("stream gone"),
               BadReading("the broker reported a negative count (depth=-1)"),
               Reading(1060.0, 0, 0, 3), Reading(1070.0, 1, 1, 13))
    assert f.step() == 10.0 and pools.samples(store, keys, "web") == []  # the baseline
    f.step()
    (first,) = pools.samples(store, keys, "web")
    assert (first.arrivals, first.completions, first.queue_depth, first.source) == \
        (20, 17, 4, "feed:jobs")
    delays = [f.step() for _ in range(3)]  # three failed reads: no report, backoff
    assert len(pools.samples(store, keys, "web")) == 1
    assert all(0 <= d <= 10.0 for d in delays) and f.backoff.attempts == 3
    beat = heartbeat(registry)
    assert (beat.failures, beat.last_ok, beat.reports) == (3, 1010.0, 1)
    assert "negative count" in beat.error and isinstance(f.error, BadReading)
    f.step()  # back: a new baseline, even though its counter went down (stream made again)
    assert len(pools.samples(store, keys, "web")) == 1 and f.error is None
    f.step()
    assert len(pools.samples(store, keys, "web")) == 2 and f.backoff.attempts == 0
    assert heartbeat(registry).failures == 0


def test_the_pools_deletion_ends_the_feed_and_a_clean_stop_drops_the_heartbeat(
        registry: tuple[MemStore, Keys]) -> None:
    import threading

    store, keys = registry
    f = feeder(registry, Reading(1000.0, 0), BrokerUnavailable("down"))
    stop = threading.Event()
    f.step()
    assert heartbeat(registry).depth == 0
    store.delete(keys.pool("web"))
    with pytest.raises(NotFound):
        f.run(stop)
    assert store.get(keys.pool_feed("web")) is None and f.source.closed  # type: ignore[attr-defined]


def test_a_reading_through_a_registry_outage_only_loses_that_report(
        registry: tuple[MemStore, Keys], monkeypatch: pytest.MonkeyPatch) -> None:
    from gridtool.errors import RegistryUnavailable

    store, keys = registry
    f = feeder(registry, Reading(1000.0, 1), Reading(1010.0, 5), Reading(1020.0, 6))
    f.step()

    def down(*_: object, **__: object) -> None:
        raise RegistryUnavailable("etcd: no endpoint answered")

    with monkeypatch.context() as m:
        m.setattr(pools, "report", down)
        m.setattr(store, "put", down)
        f.step()
    assert pools.samples(store, keys, "web") == [] and f.status.reports == 0
    f.step()
    (only,) = pools.samples(store, keys, "web")
    assert only.arrivals == 1 and replace(f.status).reports == 1
