"""The web view's pure parts: the registry mirror, the view model, guest filters and
pages, what --listen requires, the basic-auth file; and the app's answers to bad input
(starlette's TestClient: in-process, no server)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from gridtool.fencing.rules import Fence, FenceKind
from gridtool.registry.fleet import Registry
from gridtool.registry.hostconf import set_draining
from gridtool.registry.keys import Keys
from gridtool.registry.memstore import MemStore
from gridtool.registry.mirror import Mirror, RegistryState
from gridtool.registry.model import Disk, GuestRecord, HostRecord, encode
from gridtool.registry.records import GuestSettings
from gridtool.registry.records import encode as encode_record
from gridtool.registry.store import Event, Item
from gridtool.web.listen import Listen, parse_listen, parse_users, refusal
from gridtool.web.view import GuestQuery, Memo, QueryError, check_report, fleet, page_guests

K = Keys()
NOW = 1_800_000_000.0


def host(name: str, **kw: object) -> HostRecord:
    base = dict(name=name, libvirt_uri="test:///", hypervisor="test", cpus=4,
                memory_mib=4096, free_memory_mib=1024, agent_version="1", reported_at=NOW - 2)
    return HostRecord(**{**base, **kw})  # type: ignore[arg-type]


def guest(name: str, on: str, state: str = "running", volume: str | None = None,
          uuid: str | None = None) -> GuestRecord:
    disks = (Disk("vda", f"/dev/{volume}", "block", shared=True, volume=volume),) if volume \
        else (Disk("vda", "/img/a.qcow2"),)
    return GuestRecord(uuid or f"uuid-{name}", name, on, state, 1, 256, NOW, disks)


@pytest.fixture
def store() -> MemStore:
    """hv1 up, hv2 draining; hv3 lost (its record gone, its guest and fence left);
    vm-ha is HA (settings), vm-pin pinned, vm-local not fenced; vm-pool in pool p."""
    s = MemStore(time.monotonic)
    reg = Registry(s, K)
    for h in (host("hv1"), host("hv2")):
        reg.put_host(h, None)
    set_draining(s, K, "hv2", True)
    for g in (guest("vm-ha", "hv3", volume="aoe-1"), guest("vm-pin", "hv1", volume="aoe-2"),
              guest("vm-local", "hv2", "shutoff"), guest("vm-pool", "hv1")):
        reg.put_guest(g)
    s.put(K.guest_settings("uuid-vm-ha"), encode_record(GuestSettings("uuid-vm-ha", "vm-ha",
                                                                      ha=True)))
    for volume, holder, g, kind in (("aoe-1", "hv3", "vm-ha", FenceKind.HA),
                                    ("aoe-2", "hv1", "vm-pin", FenceKind.PINNED)):
        s.put(K.fence(volume), json.dumps(Fence(volume, holder, f"uuid-{g}", g, kind,
                                                NOW - 60).to_dict()).encode())
    s.put(K.pool_member("p", "uuid-vm-pool"), b'{"v":1}')
    return s


def test_the_fleet_view_names_each_host_up_draining_or_lost(store: MemStore) -> None:
    view = fleet(store, K, NOW)
    hosts = {h["name"]: h for h in view.hosts}
    assert [(h["name"], h["state"]) for h in view.hosts] == [
        ("hv1", "up"), ("hv2", "draining"), ("hv3", "lost")]
    assert (hosts["hv1"]["running_guests"], hosts["hv1"]["guests"]) == (2, 2)
    assert hosts["hv1"]["memory_used_pct"] == 75 and hosts["hv1"]["report_age"] == 2.0
    assert hosts["hv3"]["guests"] == 1 and not hosts["hv3"]["protected"]


def test_guests_carry_their_kind_pool_fences_and_the_state_to_show(store: MemStore) -> None:
    guests = {g["name"]: g for g in fleet(store, K, NOW).guests}
    assert guests["vm-ha"]["state"] == "unknown"  # its host is lost
    assert guests["vm-ha"]["reported_state"] == "running"
    assert {n: g["kind"] for n, g in guests.items()} == {
        "vm-ha": "ha", "vm-pin": "pinned", "vm-local": "none", "vm-pool": "none"}
    assert guests["vm-pool"]["pool"] == "p" and guests["vm-pin"]["pool"] is None
    assert [(f["volume"], f["holder"]) for f in guests["vm-pin"]["fences"]] == [("aoe-2", "hv1")]


def test_the_check_reports_the_lost_host(store: MemStore) -> None:
    check = check_report(store, K, 1)
    assert check["status"] != "OK"
    assert any(f["subject"] == "hv3" for f in check["findings"])


def test_a_corrupt_record_is_listed_not_raised(store: MemStore) -> None:
    store.put(K.guest("hv1", "bad"), b"{not json")
    view = fleet(store, K, NOW)
    assert [e["key"] for e in view.errors] == [K.guest("hv1", "bad")]
    assert len(view.guests) == 4


@pytest.mark.parametrize(("params", "names"), [
    ({}, ["vm-ha", "vm-local", "vm-pin", "vm-pool"]),
    ({"host": "hv1"}, ["vm-pin", "vm-pool"]),
    ({"state": "unknown"}, ["vm-ha"]),
    ({"kind": "fenced"}, ["vm-ha", "vm-pin"]),
    ({"kind": "none", "state": "running"}, ["vm-pool"]),
    ({"pool": "p"}, ["vm-pool"]),
    ({"q": "LOC"}, ["vm-local"]),
    ({"q": "uuid-vm-pin"}, ["vm-pin"]),
])
def test_guest_filters(store: MemStore, params: dict[str, str], names: list[str]) -> None:
    page = page_guests(fleet(store, K, NOW).guests, GuestQuery.parse(params))
    assert [g["name"] for g in page["guests"]] == names
    assert page["total"] == len(names)


def test_guest_pages() -> None:
    rows = [{"name": f"g{i:03}", "host": "h", "state": "running", "kind": "none",
             "pool": None, "uuid": str(i)} for i in range(250)]
    first = page_guests(rows, GuestQuery.parse({}))
    assert (len(first["guests"]), first["pages"], first["total"]) == (100, 3, 250)
    last = page_guests(rows, GuestQuery.parse({"page": "3"}))
    assert [g["name"] for g in last["guests"]] == [f"g{i:03}" for i in range(200, 250)]
    past = page_guests(rows, GuestQuery.parse({"page": "9", "per_page": "200"}))
    assert (past["page"], len(past["guests"])) == (2, 50)


@pytest.mark.parametrize(("params", "error"), [
    ({"state": "on"}, "unknown state 'on'"),
    ({"kind": "x"}, "unknown kind 'x'"),
    ({"page": "0"}, "page must be a whole number"),
    ({"per_page": "501"}, "per_page must be a whole number from 1 to 500"),
    ({"page": "-1"}, "page must be"),
    ({"sort": "name"}, "unknown parameter 'sort'"),
])
def test_bad_guest_queries_are_one_line_errors(params: dict[str, str], error: str) -> None:
    with pytest.raises(QueryError, match=error):
        GuestQuery.parse(params)


# -- the mirror -----------------------------------------------------------------------

def test_the_mirror_applies_every_event_of_one_revision() -> None:
    """A lease's expiry deletes the host record and its fences at one revision (and a
    transaction puts several keys at one): each event counts, not only the first."""
    changes: list[int] = []
    mirror = Mirror("/p/", changes.append)
    mirror.reset([Item("/p/a", b"1", 5, 5, 7), Item("/p/b", b"2", 6, 6, 7),
                  Item("/other", b"x", 6)], 6)
    mirror.apply([Event("put", "/p/a", b"old", 5)])  # already in the listing
    assert mirror.frozen().get("/p/a") == Item("/p/a", b"1", 5, 5, 7)
    mirror.apply([Event("delete", "/p/a", b"", 9), Event("delete", "/p/b", b"", 9),
                  Event("put", "/p/c", b"3", 9, lease=11, create_revision=9)])
    snap = mirror.frozen()
    assert [i.key for i in snap.list("/p/")[0]] == ["/p/c"]
    assert snap.get("/p/c") == Item("/p/c", b"3", 9, 9, 11)
    assert snap.get("/other") is None and snap.revision == 9
    assert changes == [1, 2]


def test_a_snapshot_is_one_moment_and_read_only() -> None:
    mirror = Mirror("/p/")
    mirror.reset([Item("/p/a", b"1", 2)], 2)
    before = mirror.frozen()
    assert mirror.frozen() is before
    mirror.apply([Event("put", "/p/b", b"2", 3)])
    assert [i.key for i in before.list("/p/")[0]] == ["/p/a"]
    assert [i.key for i in mirror.frozen().list("/p/")[0]] == ["/p/a", "/p/b"]
    with pytest.raises(PermissionError):
        before.put("/p/x", b"")
    with pytest.raises(PermissionError):
        before.txn([], [])


def test_the_mirror_wakes_pages_when_the_registry_goes_down_or_up_not_per_probe() -> None:
    changes: list[int] = []
    mirror = Mirror("/p/", changes.append)
    mirror.set_state(RegistryState(up=True, error="", since=1.0))
    mirror.set_state(RegistryState(up=True, error="", since=1.0))
    mirror.set_state(RegistryState(up=False, error="gone", since=2.0))
    assert changes == [1, 2]
    assert mirror.frozen().unanswered_for() == float("inf")


# -- listening --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "host", "port", "local"), [
    ("127.0.0.1:8080", "127.0.0.1", 8080, True), ("localhost:0", "localhost", 0, True),
    ("[::1]:80", "::1", 80, True), ("10.0.0.5:8443", "10.0.0.5", 8443, False),
    ("0.0.0.0:80", "0.0.0.0", 80, False), ("web.example:80", "web.example", 80, False),
])
def test_parse_listen(text: str, host: str, port: int, local: bool) -> None:
    where = parse_listen(text)
    assert (where.host, where.port, where.local) == (host, port, local)


@pytest.mark.parametrize("text", ["8080", ":80", "h:", "h:x", "h:70000", "::1:80"])
def test_bad_listen(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)


def test_only_loopback_may_listen_without_tls_and_auth() -> None:
    local, wide = Listen("127.0.0.1", 80), Listen("10.0.0.5", 443)
    assert refusal(local, tls=False, basic_auth=False, client_certs=False) is None
    assert "--tls-cert" in (refusal(wide, False, True, False) or "")
    assert "--basic-auth-file or --client-ca" in (refusal(wide, True, False, False) or "")
    assert refusal(wide, True, True, False) is None
    assert refusal(wide, True, False, True) is None


def test_the_cli_refuses_a_wide_listen_without_tls_in_one_line() -> None:
    from click.testing import CliRunner

    from gridtool.cli.main import cli
    from gridtool.errors import UsageError

    result = CliRunner().invoke(cli, ["web", "serve", "--listen", "0.0.0.0:8080"])
    # main() turns it into one line on stderr and exit code 2
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
    assert "not a loopback address" in str(result.exception)


def test_basic_auth_file() -> None:
    assert parse_users("# who\nann:s3cret:with:colons\n\nbob:pw\n") == {
        "ann": "s3cret:with:colons", "bob": "pw"}
    for bad in ("", "# only\n", "ann\n", ":pw\n", "ann:\n"):
        with pytest.raises(ValueError):
            parse_users(bad)


# -- the app, in process ---------------------------------------------------------------

def app_client(store: MemStore, users: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    from gridtool.web.server import Views, create_app

    mirror = Mirror(K.prefix)
    items, revision = store.list(K.prefix)
    mirror.reset(items, revision)
    mirror.set_state(RegistryState(up=True, error="", since=NOW))
    app = create_app(mirror, Views(mirror, K, 1), lambda: None, lambda: None, users)
    return TestClient(app)


def test_the_api_answers_pages_and_one_line_errors(store: MemStore) -> None:
    with app_client(store) as client:
        fleet_doc = client.get("/api/fleet").json()
        assert [h["name"] for h in fleet_doc["hosts"]] == ["hv1", "hv2", "hv3"]
        assert fleet_doc["registry"]["up"] and fleet_doc["guest_count"] == 4
        page = client.get("/api/guests", params={"host": "hv1", "per_page": "1"}).json()
        assert (page["total"], page["pages"], len(page["guests"])) == (2, 2, 1)
        bad = client.get("/api/guests", params={"state": "<b>"})
        assert bad.status_code == 400 and bad.json() == {"error": "unknown state '<b>'"}
        index = client.get("/")
        assert "script-src" not in index.headers["content-security-policy"]  # default-src
        assert "default-src 'self'" in index.headers["content-security-policy"]
        assert client.get("/static/app.js").status_code == 200


def test_basic_auth_guards_every_route(store: MemStore) -> None:
    with app_client(store, {"ann": "pw"}) as client:
        for path in ("/", "/api/fleet", "/api/guests", "/events", "/static/app.js"):
            assert client.get(path).status_code == 401
        assert client.get("/api/fleet", auth=("ann", "nope")).status_code == 401
        assert client.get("/api/fleet", auth=("ann", "pw")).status_code == 200


def test_the_record_json_the_view_reads_is_the_agents() -> None:
    """The view decodes what agents write (a guard against a field renamed on one side)."""
    s = MemStore(time.monotonic)
    s.put(K.host("hv1"), encode(host("hv1")))
    assert fleet(s, K, NOW).hosts[0]["agent_version"] == "1"


def test_a_kept_build_follows_every_change(store: MemStore) -> None:
    """With one Memo across builds (the server's), a row changes when its record, its
    host's liveness, its settings or its fence change; and a deleted guest goes."""
    memo = Memo()
    first = {g["name"]: g for g in fleet(store, K, NOW, memo).guests}
    assert first["vm-pin"]["state"] == "running" and first["vm-local"]["kind"] == "none"
    store.delete(K.host("hv1"))
    store.put(K.fence("aoe-2"), json.dumps(Fence("aoe-2", "hv2", "uuid-vm-pin", "vm-pin",
                                                 FenceKind.PINNED, NOW).to_dict()).encode())
    store.put(K.guest_settings("uuid-vm-ha"), encode_record(GuestSettings("uuid-vm-ha",
                                                                          "vm-ha")))
    store.delete(K.guest("hv2", "uuid-vm-local"))
    again = {g["name"]: g for g in fleet(store, K, NOW, memo).guests}
    assert again["vm-pin"]["state"] == "unknown"
    assert [f["holder"] for f in again["vm-pin"]["fences"]] == ["hv2"]
    assert again["vm-ha"]["kind"] == "pinned"
    assert "vm-local" not in again
    assert again["vm-pool"] is not first["vm-pool"] and again["vm-pool"]["state"] == "unknown"
    kept = {g["name"]: g for g in fleet(store, K, NOW, memo).guests}
    assert kept["vm-pool"] is again["vm-pool"]  # nothing changed: the same row


def test_the_check_runs_on_its_own_thread_and_wakes_the_pages(store: MemStore) -> None:
    from gridtool.web.server import Views

    woken = threading.Event()
    mirror = Mirror(K.prefix, lambda version: woken.set())
    items, revision = store.list(K.prefix)
    mirror.reset(items, revision)
    woken.clear()
    views = Views(mirror, K, 1)
    assert views.current()[1].check["status"] == "PENDING"
    mirror.set_state(RegistryState(up=True, error="", since=NOW))
    views.start()
    try:
        deadline = time.monotonic() + 30
        while views.current()[1].check["status"] == "PENDING":
            assert time.monotonic() < deadline
            woken.clear()
            woken.wait(1)  # the check's touch() wakes it
        assert any(f["subject"] == "hv3" for f in views.current()[1].check["findings"])
    finally:
        views.stop()
