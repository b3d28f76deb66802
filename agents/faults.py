"""Test-only fault points of the agent (the ``fault_points`` setting): off by default, and
never for a real host. Each makes one rare interleaving happen on demand, so that a test
can show the agent copes with it:

* ``self-fence-destroy-fails=N``: the self-fence's libvirt destroy of each guest fails the
  first N times (as a destroy that libvirt times out on does); the guest must still be
  seen dead, by a retry on a later guard tick.
* ``delay-before-create=S``: a start waits S seconds after taking the guest's fences,
  just before the lease clock's last check and ``create()`` (a slow start racing the
  self-fence deadline).
* ``self-fence-slow-destroy=S``: the self-fence's libvirt destroy of each guest takes S
  seconds more (as libvirt's destroy of a QEMU that ignores SIGTERM does, on a driver
  with no pid to SIGKILL first, such as the test driver): every guest must still be
  dead in time, so the destroys must run at once, not one after the other.
* ``delay-before-remove=S``: a ``remove_clone`` waits S seconds before it destroys the
  clone (a slow removal: the pool round must not wait for it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

from gridtool.errors import ConfigError


@dataclass(frozen=True)
class Faults:
    """The parsed ``fault_points`` (all off: ``Faults()``)."""

    self_fence_destroy_fails: int = 0
    delay_before_create: float = 0.0
    self_fence_slow_destroy: float = 0.0
    delay_before_remove: float = 0.0

    @classmethod
    def parse(cls, items: Iterable[str]) -> Faults:
        """``NAME=VALUE`` items; ConfigError naming a bad or unknown one."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for item in items:
            name, _, raw = item.partition("=")
            field = name.strip().replace("-", "_")
            if field not in known:
                raise ConfigError(f"setting 'fault_points': unknown fault point {name!r} "
                                  "(self-fence-destroy-fails=N, delay-before-create=S, "
                                  "self-fence-slow-destroy=S, delay-before-remove=S)")
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"setting 'fault_points': {item!r} needs a number >= 0")
            values[field] = value
        return cls(int(values.get("self_fence_destroy_fails", 0)),
                   values.get("delay_before_create", 0.0),
                   values.get("self_fence_slow_destroy", 0.0),
                   values.get("delay_before_remove", 0.0))

    @property
    def any(self) -> bool:
        """Some fault point is on (the agent says so at start)."""
        return self != Faults()


#: Every fault point off (the default).
NO_FAULTS = Faults()
