"""gridtool: run a fleet of Xen/KVM hypervisor hosts through libvirt and etcd."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def report(pool: str, *, arrivals: int, completions: int = 0,
           busy_seconds: float | None = None, mean_service_time: float | None = None,
           queue_depth: int = 0, interval: float = 10.0, config: str | None = None,
           **options: Any) -> object:
    """Report a pool's load over the last ``interval`` seconds (for its flex policy);
    returns the ``gridtool.pools.flex.LoadSample`` written.

    Reads the configuration as the CLI does (``config`` file, ``$GRIDTOOL_CONFIG``, the
    running lab's, ``/etc/gridtool/gridtool.conf``; ``GRIDTOOL_*`` variables). Call it
    once per interval from each worker or producer; reports add up. Example::

        gridtool.report("api", arrivals=420, completions=415, busy_seconds=380.0,
                        queue_depth=3, interval=10)
    """
    from gridtool.pools import shell as pools

    store, keys = pools.api_store(config)
    return pools.report(store, keys, pool, arrivals=arrivals, completions=completions,
                        busy_seconds=busy_seconds, mean_service_time=mean_service_time,
                        queue_depth=queue_depth, interval=interval, **options)


def numbers(pool: str, *, config: str | None = None) -> dict[str, Any]:
    """The numbers an outside policy engine reads (as ``gridtool pool numbers --json``):
    ``arrival_rate``, ``smoothed_rate`` (/s), ``service_time`` (s), ``intensity``
    (Erlangs), ``utilization``, ``recommended`` and ``last_decision``; ``{}`` before any
    report. The pool's reporter user may read them. Example::

        n = gridtool.numbers("api")
        gridtool.set_desired("api", my_policy(n["arrival_rate"], n["service_time"]))
    """
    from gridtool.pools import shell as pools

    store, keys = pools.api_store(config)
    return pools.engine_numbers(store, keys, pool)


def set_desired(pool: str, size: int, *, config: str | None = None) -> int:
    """Set a fixed pool's size (for an outside policy engine); returns the size.

    Raises ``gridtool.errors.UsageError`` outside the pool's ``[min, max]`` and
    ``NotFound`` for an unknown pool.
    """
    from gridtool.pools import shell as pools

    store, keys = pools.api_store(config)
    return pools.set_desired(store, keys, pool, size).desired
