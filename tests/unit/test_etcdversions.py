"""Which etcd versions can revoke leases early (etcd issues 15247/12528)."""

from __future__ import annotations

import pytest

from gridtool.fencing.etcdversions import revokes_leases_early


@pytest.mark.parametrize("version", ["3.4.23", "v3.4.30", "3.5.0", "3.5.12", "3.3.25",
                                     "3.2.32", "3.4.23-debian"])
def test_affected(version: str) -> None:
    assert revokes_leases_early(version)


@pytest.mark.parametrize("version", ["3.4.31", "3.4.37", "3.5.13", "v3.5.21", "3.6.0",
                                     "3.6.5", "4.0.0", "", "unknown", "3.5"])
def test_fixed_or_unknown(version: str) -> None:
    assert not revokes_leases_early(version)
