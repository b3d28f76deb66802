"""Unit tests for gridtool.registry.keys: the registry key layout and name validation."""

from __future__ import annotations

import pytest

from gridtool.registry.keys import DEFAULT_PREFIX, Keys, validate_name


def test_default_layout() -> None:
    k = Keys()
    assert k.prefix == DEFAULT_PREFIX == "/gridtool/v1/"
    assert k.hosts == "/gridtool/v1/hosts/"
    assert k.host("node1") == "/gridtool/v1/hosts/node1"
    assert k.guests == "/gridtool/v1/guests/"
    assert k.host_guests("node1") == "/gridtool/v1/guests/node1/"
    assert k.guest("node1", "abcd-ef") == "/gridtool/v1/guests/node1/abcd-ef"
    assert k.fences == "/gridtool/v1/fences/"
    assert k.fence("aoe-e1.2") == "/gridtool/v1/fences/aoe-e1.2"
    assert k.intents("node1") == "/gridtool/v1/intents/node1/"
    assert k.pools == "/gridtool/v1/pools/"
    assert k.manager == "/gridtool/v1/manager/"


def test_custom_prefix() -> None:
    k = Keys("/lab/")
    assert k.host("n") == "/lab/hosts/n"
    assert k.guest("n", "u") == "/lab/guests/n/u"
    assert k.fence("v") == "/lab/fences/v"
    assert k.intents("n") == "/lab/intents/n/"
    assert Keys("/").hosts == "/hosts/"


def test_per_host_subtrees_are_prefix_disjoint() -> None:
    """node1's guests/intents prefix must not cover node10's keys (etcd role ranges)."""
    k = Keys()
    assert not k.guest("node10", "u").startswith(k.host_guests("node1"))
    assert not k.intents("node10").startswith(k.intents("node1"))
    assert k.guest("node1", "u").startswith(k.host_guests("node1"))
    assert k.host_guests("node1").startswith(k.guests)


def test_sections_do_not_overlap() -> None:
    k = Keys()
    tops = [k.hosts, k.guests, k.fences, k.pools, k.manager, k.intents("x")]
    for a in tops:
        assert a.startswith(k.prefix)
        for b in tops:
            if a != b:
                assert not a.startswith(b)


@pytest.mark.parametrize("prefix", ["", "gridtool/v1/", "/gridtool/v1", "gridtool", "/x/y"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="registry prefix must start and end with '/'") as info:
        Keys(prefix)
    assert repr(prefix) in str(info.value)


@pytest.mark.parametrize("name", ["node1", "host-a.example.org", "n_1", "ü", "a:b"])
def test_valid_names(name: str) -> None:
    assert validate_name("host", name) == name


@pytest.mark.parametrize(
    "name", ["", "a/b", "/", "a b", "tab\there", "new\nline", "nul\x00", "\x1b[31m", "x\u00a0y"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_name("pool", name)
    msg = str(info.value)
    assert msg.startswith(f"invalid pool name {name!r}:")
    assert "\n" not in msg
