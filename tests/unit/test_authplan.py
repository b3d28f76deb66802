"""The etcd users/roles plan: least privilege per host, repair steps."""

from __future__ import annotations

import pytest

from gridtool.auth.rules import (
    ROOT,
    Access,
    Current,
    Permission,
    Step,
    admin_user,
    host_of_user,
    host_role,
    host_user,
    manager_role,
    monitor_user,
    plan,
    pool_of_user,
    prefix_end,
    repair_steps,
    reporter_user,
)
from gridtool.registry.keys import DEFAULT_PREFIX, Keys

K = Keys()
P = plan(DEFAULT_PREFIX, ["hv1", "hv10", "hv2"], managers=["hv2"])


def test_names_per_prefix() -> None:
    assert host_user("hv1", DEFAULT_PREFIX) == "host-hv1"
    assert admin_user(DEFAULT_PREFIX) == "gridtool-admin"
    assert host_user("hv1", "/t-1/x/") == "host-hv1@t-1.x"
    assert host_of_user("host-hv1@t-1.x", "/t-1/x/") == "hv1"
    assert host_of_user("host-hv1", "/t-1/x/") is None
    assert host_of_user("host-hv1@t-1.x", DEFAULT_PREFIX) is None
    assert host_of_user("gridtool-admin", DEFAULT_PREFIX) is None
    with pytest.raises(ValueError):
        host_user("a/b", DEFAULT_PREFIX)


def test_prefix_end() -> None:
    assert prefix_end("/gridtool/v1/") == "/gridtool/v10"
    assert Permission.on_prefix("/a/", Access.READ).covers("/a/b/c")
    assert not Permission.on_prefix("/a/", Access.READ).covers("/a0")
    assert not Permission("/a", Access.READ).covers("/a/b")


def test_users_and_roles() -> None:
    assert {u.name for u in P.users} == {ROOT, "gridtool-admin", "gridtool-monitor",
                                         "host-hv1", "host-hv10", "host-hv2"}
    assert P.user("host-hv2").roles == (host_role("hv2", DEFAULT_PREFIX),
                                        manager_role(DEFAULT_PREFIX))
    assert P.user("host-hv1").roles == (host_role("hv1", DEFAULT_PREFIX),)


@pytest.mark.parametrize("key", [K.host("hv1"), K.guest("hv1", "u1"), K.intent("hv1", "i1"),
                                 K.violation("hv1", "u1"), K.dead_host("hv1"), K.fence("v1"),
                                 K.domain("u1"), K.clone("t", "u1"), K.machine("hv1")])
def test_host_writes_its_own_keys(key: str) -> None:
    assert P.permitted("host-hv1", key, write=True)


@pytest.mark.parametrize("key", [K.host("hv2"), K.host("hv10"), K.guest("hv2", "u1"),
                                 K.guest("hv10", "u1"), K.intent("hv2", "i1"),
                                 K.violation("hv2", "u"), K.dead_host("hv2"), K.machine("hv2"),
                                 K.machine("hv10"), K.manager_leader,
                                 K.manager_status, K.guest_settings("u1"), K.pool("p"),
                                 "/other/key"])
def test_host_cannot_write_others(key: str) -> None:
    assert not P.permitted("host-hv1", key, write=True)


def test_host_does_not_read_other_hosts_intents() -> None:
    assert not P.permitted("host-hv1", K.intent("hv2", "i"), write=False)
    assert not P.permitted("host-hv1", K.guest("hv2", "u"), write=False)


def test_manager_candidate_runs_the_election_but_keeps_host_limits() -> None:
    for key in (K.manager_leader, K.intent("hv1", "i"), K.guest_settings("u"), K.pool("p")):
        assert P.permitted("host-hv2", key, write=True)
    assert P.permitted("host-hv2", K.guest("hv1", "u"), write=False)
    for key in (K.guest("hv1", "u"), K.violation("hv1", "u"), K.machine("hv1"),
                K.dead_host("hv1")):
        assert not P.permitted("host-hv2", key, write=True)
    # revoking a fenced suspect's lease: etcd wants write access to every key under it
    for key in (K.host("hv1"), K.heartbeat("hv1"), K.fence("v")):
        assert P.permitted("host-hv2", key, write=True)
    assert not P.permitted("host-hv1", K.host("hv10"), write=True)  # no manager role
    assert P.permitted("host-hv1", K.heartbeat("hv1"), write=True)
    assert not P.permitted("host-hv1", K.heartbeat("hv10"), write=True)


def test_admin_has_the_whole_prefix_only() -> None:
    assert P.permitted("gridtool-admin", K.host("hv1"), write=True)
    assert P.permitted("gridtool-admin", K.manager_leader, write=True)
    assert not P.permitted("gridtool-admin", "/elsewhere/x", write=False)


def test_repair_from_nothing_then_idempotent() -> None:
    steps = repair_steps(P, Current({}, {}))
    assert Step("add_user", "host-hv1") in steps
    assert Step("add_role", ROOT) in steps
    assert not any(s.op == "grant_permission" and s.name == ROOT for s in steps)
    have = Current({r.name: frozenset(r.permissions) for r in P.roles},
                   {u.name: frozenset(u.roles) for u in P.users})
    assert repair_steps(P, have) == []


def test_repair_revokes_extra_permissions_and_roles() -> None:
    role = host_role("hv1", DEFAULT_PREFIX)
    extra = Permission.on_prefix(K.hosts, Access.READWRITE)
    have = Current({r.name: frozenset(r.permissions) | ({extra} if r.name == role else set())
                    for r in P.roles},
                   {u.name: frozenset(u.roles) | ({"other"} if u.name == "host-hv1" else set())
                    for u in P.users})
    assert repair_steps(P, have) == [Step("revoke_permission", role, extra),
                                     Step("revoke_role", "host-hv1", "other")]


R = plan(DEFAULT_PREFIX, ["hv1"], pools=["web", "web2"])


def test_monitor_reads_everything_and_writes_nothing() -> None:
    monitor = monitor_user(DEFAULT_PREFIX)
    for key in (K.host("hv1"), K.fence("v1"), K.pool("web"), K.violation("hv1", "u1"),
                K.manager_leader, K.hostconf("hv1")):
        assert R.permitted(monitor, key, write=False)
        assert not R.permitted(monitor, key, write=True)
    assert not R.permitted(monitor, "/other/key", write=False)


def test_reporter_writes_only_its_pools_reports_and_spec() -> None:
    web = reporter_user("web", DEFAULT_PREFIX)
    assert web == "pool-web" and pool_of_user(web, DEFAULT_PREFIX) == "web"
    assert R.permitted(web, K.pool("web"), write=True)
    assert R.permitted(web, K.pool_sample("web", "1-a"), write=True)
    assert R.permitted(web, K.pool_feed("web"), write=True)  # pool feed's heartbeat
    for key in (K.pool("web2"), K.pool_sample("web2", "1-a"), K.pool_status("web"),
                K.pool_feed("web2"),
                K.pool_member("web", "u1"), K.host("hv1"), K.guest("hv1", "u1"),
                K.fence("v1"), K.intent("hv1", "i1"), K.guest_settings("u1")):
        assert not R.permitted(web, key, write=True), key
    assert not R.permitted(web, K.host("hv1"), write=False)
    # the numbers of `pool numbers`: its own pool's status, read only
    assert R.permitted(web, K.pool_status("web"), write=False)
    assert not R.permitted(web, K.pool_status("web2"), write=False)


def test_pool_of_user_tells_reporters_apart() -> None:
    assert pool_of_user(reporter_user("web", "/t/"), "/t/") == "web"
    assert pool_of_user("pool-web", "/t/") is None
    assert pool_of_user("host-hv1", DEFAULT_PREFIX) is None
    assert pool_of_user("pool-", DEFAULT_PREFIX) is None
    with pytest.raises(ValueError):
        reporter_user("a/b", DEFAULT_PREFIX)
