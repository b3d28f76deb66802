"""etcd server versions whose leases can expire early, pure: the timed self-fence path
assumes a lease never expires before its TTL, and these versions break that assumption.

etcd issues 15247 and 12528: a leader stalled in fdatasync or starved of CPU keeps
revoking leases after it has stepped down, so a host's lease (and its HA guests' fences)
can vanish while the host still believes it has seconds left; the manager may then start
a guest elsewhere before the host self-fences. Fixed by "ignoring old leader's leases
revoking request" in 3.4.31 and 3.5.13 (and every 3.6+).
"""

from __future__ import annotations

import re

#: The first fixed patch release per affected minor line.
FIXED_IN: dict[tuple[int, int], int] = {(3, 4): 31, (3, 5): 13}
#: The fixed releases, for logs: "3.4.31,3.5.13".
FIXED_VERSIONS = ",".join(f"{a}.{b}.{c}" for (a, b), c in FIXED_IN.items())
#: Where the bug is described (for messages).
REFERENCE = "etcd issues 15247/12528, fixed in 3.4.31 and 3.5.13"


def revokes_leases_early(version: str) -> bool:
    """True when etcd ``version`` (``3.4.23``, ``v3.5.9``) can revoke leases early;
    False for a fixed version or one that cannot be parsed (nothing to say)."""
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if match is None:
        return False
    major, minor, patch = (int(g) for g in match.groups())
    if (major, minor) in FIXED_IN:
        return patch < FIXED_IN[(major, minor)]
    return (major, minor) < (3, 4)  # older lines never got the fix
