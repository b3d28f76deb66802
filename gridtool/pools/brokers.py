"""The brokers ``gridtool pool feed`` reads: thin adapters behind :class:`QueueSource`.

Each adapter reads one queue's numbers into a :class:`gridtool.pools.feed.Reading` and
maps its client's failures onto three errors: :class:`BrokerUnavailable` (no answer),
:class:`QueueGone` (the queue or its consumer group is not there) and
:class:`BadReading` (impossible numbers). They reconnect by themselves on the next read.

- Redis (``redis`` on PyPI): a *list* gives its length (``LLEN``) only; an absent key is an
  empty list (Redis deletes empty lists, so a list cannot "vanish"). A *stream* read by a
  consumer group gives everything: ``XINFO STREAM`` entries-added (arrivals), and
  ``XINFO GROUPS`` lag (waiting) and pending (taken, not acknowledged). An absent stream
  or group is :class:`QueueGone`.
- RabbitMQ (``pika``): a passive ``queue.declare`` answers with the queue's ready message
  count and consumer count, and closes the channel with 404 when the queue is gone.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol

from gridtool.errors import BadReading, BrokerUnavailable, QueueGone, UsageError
from gridtool.pools.feed import BrokerURL, Reading

#: Seconds to wait for a broker to connect or answer.
TIMEOUT = 5.0


class QueueSource(Protocol):
    """One queue on one broker."""

    def read(self) -> Reading:
        """The queue's numbers now."""
        ...

    def close(self) -> None:
        ...


def open_source(url: BrokerURL, queue: str, group: str | None = None) -> QueueSource:
    """The adapter for ``url``'s broker (nothing is connected until the first read)."""
    if url.scheme == "redis":
        return RedisQueue(url, queue, group)
    if group is not None:
        raise UsageError("--group applies to Redis streams only")
    return AmqpQueue(url, queue)


def _reading(**numbers: Any) -> Reading:
    try:
        return Reading(at=time.time(), **numbers)
    except ValueError as exc:
        raise BadReading(str(exc)) from None


class RedisQueue:
    """A Redis list or stream (a stream through its consumer group: ``group``, or its
    only one)."""

    def __init__(self, url: BrokerURL, queue: str, group: str | None = None) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.queue, self.group = queue, group
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        # no retries inside the client (redis-py's default: 3, with backoff up to 10 s):
        # the feeder retries on its own schedule and must see a failure at once
        self._client = redis.Redis(host=url.host, port=url.port, db=url.db,
                                   username=url.user, password=url.password,
                                   socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                   retry=Retry(NoBackoff(), 0), decode_responses=True)

    def read(self) -> Reading:
        import redis

        try:
            kind = str(self._client.type(self.queue))
            if kind == "none" and self.group is None:
                return _reading(depth=0)
            if kind == "list":
                return _reading(depth=int(self._client.llen(self.queue)))
            if kind == "stream":
                return self._stream()
            if kind == "none":
                raise QueueGone(f"stream {self.queue!r} does not exist")
            raise QueueGone(f"{self.queue!r} is a Redis {kind}, not a list or stream")
        except self._errors as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None
        except redis.ResponseError as exc:  # the key changed type or vanished mid-read
            raise QueueGone(f"redis: {exc}") from None

    def _stream(self) -> Reading:
        info = self._client.xinfo_stream(self.queue)
        groups = {g["name"]: g for g in self._client.xinfo_groups(self.queue)}
        if self.group is None and len(groups) == 1:
            group = next(iter(groups.values()))
        elif self.group in groups:
            group = groups[self.group]
        else:
            which = f"consumer group {self.group!r}" if self.group else \
                f"one consumer group (it has {len(groups)}: use --group)"
            raise QueueGone(f"stream {self.queue!r} has no {which}")
        added = int(info["entries-added"])
        lag = group.get("lag")
        if lag is None:  # Redis cannot tell after deletions: what was added and not read
            lag = added - int(group.get("entries-read") or 0)
        return _reading(depth=int(lag), in_service=int(group["pending"]), added=added,
                        consumers=int(group["consumers"]))

    def close(self) -> None:
        self._client.close()


class AmqpQueue:
    """A RabbitMQ queue, read with a passive declare (its ready messages and consumers)."""

    def __init__(self, url: BrokerURL, queue: str) -> None:
        import pika

        self.queue = queue
        credentials = pika.PlainCredentials(url.user or "guest", url.password or "guest")
        self._params = pika.ConnectionParameters(
            host=url.host, port=url.port, virtual_host=url.vhost, credentials=credentials,
            socket_timeout=TIMEOUT, blocked_connection_timeout=TIMEOUT,
            connection_attempts=1)
        self._conn: Any = None
        self._channel: Any = None

    def read(self) -> Reading:
        import pika
        import pika.exceptions as px

        try:
            if self._conn is None or not self._conn.is_open:
                self._conn = pika.BlockingConnection(self._params)
                self._channel = None
            if self._channel is None or not self._channel.is_open:
                self._channel = self._conn.channel()
            ok = self._channel.queue_declare(self.queue, passive=True).method
        except px.ChannelClosedByBroker as exc:
            self._channel = None
            if exc.reply_code == 404:
                raise QueueGone(f"amqp: queue {self.queue!r} does not exist") from None
            raise BrokerUnavailable(f"amqp: {exc.reply_code} {exc.reply_text}") from None
        except (px.AMQPError, OSError) as exc:
            self.close()
            raise BrokerUnavailable(f"amqp: {type(exc).__name__} {exc}".strip()) from None
        return _reading(depth=int(ok.message_count), consumers=int(ok.consumer_count))

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()

