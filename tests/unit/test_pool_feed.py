"""The queue feeder: broker URLs, readings -> load reports, missing data, the heartbeat, and
the loop's handling of a broker that fails (with an in-memory registry and a scripted
queue: pure logic; the real brokers are in tests/integration/test_pool_feed.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridtool.errors import BadReading, BrokerUnavailable, NotFound, QueueGone
from gridtool.pools import shell as pools
from gridtool.pools.feed import (
    DROP,
    PERIOD,
    STALE_PERIODS,
    SURGE,
    BrokerURL,
    FeedStatus,
    Reading,
    failed,
    parse_url,
    report_kind,
    reports,
    stale,
    succeeded,
    surge,
    to_sample,
)
from gridtool.pools.feed import drop as dropped
from gridtool.pools.feeder import Feeder
from gridtool.pools.flex import LoadSample
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


# --- when to report --------------------------------------------------------------------


CALM = LoadSample(1010.0, 10.0, arrivals=100)  # the last report: 10/s over 10 s


def test_a_surge_is_arrivals_beyond_the_last_reports_rate_by_its_noise() -> None:
    # 1 s after a report of 10/s: noise sd sqrt(10 x 1.1) = 3.3, 4 sd = 13.3 jobs
    assert not surge(CALM, 10, 1.0) and not surge(CALM, 23, 1.0)
    assert surge(CALM, 24, 1.0) and surge(CALM, 28, 1.0)  # a burst at 2.8x, 1 s in
    # the longer since the report, the more noise: 9 s in, 4 sd = 53 jobs beyond 90
    assert not surge(CALM, 140, 9.0) and surge(CALM, 144, 9.0)
    # at least SURGE_JOBS beyond it: an idle queue does not report one job
    idle = LoadSample(1010.0, 10.0, arrivals=0)
    assert not surge(idle, 5, 1.0) and surge(idle, 6, 1.0)
    assert not surge(CALM, 1000, 0.0)


def test_report_kind_period_first_then_a_surge() -> None:
    burst = LoadSample(1011.0, 1.0, arrivals=28)
    assert report_kind(CALM, burst, period_over=True) == PERIOD
    assert report_kind(CALM, burst, period_over=False) == SURGE
    assert report_kind(CALM, replace(burst, arrivals=12), period_over=False) == ""
    assert report_kind(None, burst, period_over=False) == ""  # no report to predict from


def test_a_step_mid_period_is_seen_in_the_latest_reading_not_diluted_by_the_calm() -> None:
    # a report of 10/s at 1010; calm until 1015, then 30/s: at 1016 the 6 s since the
    # report hold 80 jobs, within 4 sd (sqrt(60 x 1.6) = 9.8: 39 beyond 60); the latest
    # second alone holds 30, beyond 5 sd of its own noise (10 + 5 x 3.3 = 26.6)
    since_report = LoadSample(1016.0, 6.0, arrivals=80)
    latest = LoadSample(1016.0, 1.0, arrivals=30)
    assert report_kind(CALM, since_report, period_over=False) == ""
    assert report_kind(CALM, since_report, period_over=False, latest=latest) == SURGE
    # at 4 sd the latest second would have fired on noise more often: it takes 5
    assert report_kind(CALM, since_report, False, replace(latest, arrivals=26)) == ""


def test_a_drop_is_reported_at_once_and_marked_as_a_change() -> None:
    # the last report said 30/s; 3 s later only 30 jobs came (10/s): 90 expected, noise
    # sd sqrt(90 x 1.3) = 10.8, 4 sd = 43 jobs: 60 short is a drop (the burst is over)
    burst = LoadSample(1010.0, 10.0, arrivals=300)
    since = LoadSample(1013.0, 3.0, arrivals=30)
    assert dropped(burst, 30, 3.0) and not dropped(burst, 50, 3.0)
    assert not dropped(CALM, 0, 0.0) and not dropped(LoadSample(1010.0, 10.0, 4), 0, 1.0)
    assert report_kind(burst, since, period_over=False) == DROP
    assert report_kind(burst, replace(since, arrivals=50), period_over=False) == ""
    assert report_kind(burst, since, period_over=True) == PERIOD
    # written from the last report on, marked as a change: the manager decides at once and
    # the aggregate's rate starts anew there
    prev, cur = Reading(1010.0, 0, added=1000), Reading(1013.0, 0, added=1030)
    (report,) = reports(prev, Reading(1012.0, 0, added=1020), cur, DROP, "feed:q")
    assert report.surge and report.interval == 3.0 and report.arrival_rate == 10.0


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


def feeder(registry: tuple[MemStore, Keys], *answers: Reading | Exception,
           probe: float = 0.0) -> Feeder:
    store, keys = registry
    return Feeder(store, keys, "web", Script(*answers), broker="redis://h:6379/0",
                  queue="jobs", period=10.0, probe=probe, clock=Clock())


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


def test_a_surge_is_reported_at_once_and_the_period_report_keeps_its_time(
        registry: tuple[MemStore, Keys]) -> None:
    store, keys = registry
    # a stream at 10/s, read every second; 30 jobs in the second after 1010
    calm = [Reading(1000.0 + t, 0, 0, 10 * t) for t in range(11)]
    f = feeder(registry, *calm, Reading(1011.0, 20, 0, 130), Reading(1012.0, 40, 0, 160),
               Reading(1020.0, 0, 0, 400), probe=1.0)
    clock = f.clock
    waits = []
    for reading in calm[:10]:
        clock.now = reading.at  # type: ignore[attr-defined]
        waits.append(f.step())
    assert waits == [1.0] * 10 and pools.samples(store, keys, "web") == []
    assert store.get(keys.pool_feed("web")) is not None  # the baseline's heartbeat
    clock.now = 1010.0  # type: ignore[attr-defined]
    f.step()
    (period,) = pools.samples(store, keys, "web")
    assert (period.arrivals, period.interval, period.surge) == (100, 10.0, False)
    clock.now = 1011.0  # type: ignore[attr-defined]
    f.step()
    reports = pools.samples(store, keys, "web")
    assert [(s.arrivals, s.interval, s.surge) for s in reports][-1] == (30, 1.0, True)
    clock.now = 1012.0  # type: ignore[attr-defined]
    assert f.step() == 1.0 and len(pools.samples(store, keys, "web")) == 2  # as predicted
    clock.now = 1020.0  # type: ignore[attr-defined]
    f.step()  # the period's report, at its time, from the surge's report on
    last = pools.samples(store, keys, "web")[-1]
    assert (last.arrivals, last.interval, last.surge) == (270, 9.0, False)
    assert heartbeat(registry).reports == 3
