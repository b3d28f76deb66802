"""Unit tests for gridtool.registry.model: records, effective state and the JSON codec."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, asdict, replace

import pytest

from gridtool.registry.model import (
    GUEST_STATES,
    SCHEMA_VERSION,
    DecodeError,
    Disk,
    GuestRecord,
    HostRecord,
    Listing,
    decode,
    effective_state,
    encode,
)

KEY = "/gridtool/v1/guests/node1/0b0e6c8e-8f4e-4d2a-9a57-0d1f1f2c3b4a"
HKEY = "/gridtool/v1/hosts/node1"

HOST = HostRecord(
    name="node1",
    libvirt_uri="qemu:///system",
    hypervisor="QEMU",
    cpus=16,
    memory_mib=65536,
    free_memory_mib=40960,
    agent_version="0.1.0",
    reported_at=1_700_000_000.25,
    labels=("rack=a", "ssd"),
    started_at=1_699_999_000.5,
    storage=("aoe", "iscsi"),
)

AOE = Disk(target="vda", source="/dev/etherd/e1.2", kind="block", shared=True,
           volume="aoe-e1.2")
ISCSI = Disk(target="vdb", source="iqn.2013-06.com.example:storage/1", kind="network",
             protocol="iscsi", shared=True, volume="iscsi-iqn.2013-06.com.example:storage-lun1")
LOCAL = Disk(target="vdc", source="/var/lib/libvirt/images/scratch.qcow2")

GUEST = GuestRecord(
    uuid="0b0e6c8e-8f4e-4d2a-9a57-0d1f1f2c3b4a",
    name="web1",
    host="node1",
    state="running",
    vcpus=2,
    memory_mib=2048,
    updated_at=1_700_000_001.75,
    disks=(AOE, ISCSI, LOCAL),
    persistent=True,
    autostart=True,
)


def guest_json(**changes: object) -> dict:
    body = {"v": SCHEMA_VERSION, **asdict(GUEST)}
    body.update(changes)
    return body


def host_json(**changes: object) -> dict:
    body = {"v": SCHEMA_VERSION, **asdict(HOST)}
    body.update(changes)
    return body


def dumps(body: object) -> bytes:
    return json.dumps(body).encode()


def decode_error(cls: type, raw: bytes | str, key: str = KEY) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(cls, key, raw)
    err = info.value
    text = str(err)
    assert "\n" not in text and "\r" not in text, text
    assert key in text
    assert err.key == key
    assert text == f"corrupt registry record {key}: {err.reason}"
    return err


# -- round trips --------------------------------------------------------------


def test_host_round_trip() -> None:
    assert decode(HostRecord, HKEY, encode(HOST)) == HOST


def test_guest_round_trip_with_disks() -> None:
    back = decode(GuestRecord, KEY, encode(GUEST))
    assert back == GUEST
    assert back.disks == (AOE, ISCSI, LOCAL)
    assert isinstance(back.disks, tuple)
    assert all(isinstance(d, Disk) for d in back.disks)


def test_round_trip_of_defaults() -> None:
    bare = GuestRecord(uuid="u", name="n", host="h", state="shutoff", vcpus=1,
                       memory_mib=512, updated_at=0.0)
    back = decode(GuestRecord, KEY, encode(bare))
    assert back == bare
    assert back.disks == () and back.persistent is True and back.autostart is False


def test_decode_accepts_str_as_well_as_bytes() -> None:
    assert decode(GuestRecord, KEY, encode(GUEST).decode()) == GUEST


def test_encode_is_compact_sorted_json_with_version() -> None:
    raw = encode(HOST)
    assert isinstance(raw, bytes)
    body = json.loads(raw)
    assert body["v"] == SCHEMA_VERSION == 1
    assert list(body) == sorted(body)
    assert b" " not in raw.replace(b"rack=a", b"")  # separators=(",", ":")
    assert body["labels"] == ["rack=a", "ssd"]
    assert encode(HOST) == raw  # deterministic


def test_encode_disks_as_objects() -> None:
    body = json.loads(encode(GUEST))
    assert body["disks"][0] == {
        "target": "vda", "source": "/dev/etherd/e1.2", "kind": "block", "protocol": None,
        "shareable": False, "shared": True, "volume": "aoe-e1.2",
    }


def test_decode_ignores_unknown_fields() -> None:
    body = guest_json(future_field={"x": 1})
    body["disks"][0]["future_disk_field"] = 3
    assert decode(GuestRecord, KEY, dumps(body)) == GUEST


def test_decode_accepts_int_timestamps() -> None:
    rec = decode(HostRecord, HKEY, dumps(host_json(reported_at=5, started_at=7)))
    assert rec.reported_at == 5 and rec.started_at == 7


def test_decoded_tuples_are_tuples() -> None:
    rec = decode(HostRecord, HKEY, encode(HOST))
    assert rec.labels == ("rack=a", "ssd") and isinstance(rec.labels, tuple)
    assert rec.storage == ("aoe", "iscsi") and isinstance(rec.storage, tuple)


def test_records_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        GUEST.state = "paused"  # type: ignore[misc]


# -- derived properties -------------------------------------------------------


def test_effective_state_live_host() -> None:
    assert effective_state(GUEST, {"node1", "node2"}) == "running"
    assert effective_state(GUEST, frozenset({"node1"})) == "running"


def test_effective_state_host_without_lease_is_unknown() -> None:
    assert effective_state(GUEST, {"node2"}) == "unknown"
    assert effective_state(GUEST, set()) == "unknown"
    paused = replace(GUEST, state="paused")
    assert effective_state(paused, frozenset()) == "unknown"


def test_fenced_when_any_disk_shared() -> None:
    assert GUEST.fenced is True
    assert replace(GUEST, disks=(LOCAL,)).fenced is False
    assert replace(GUEST, disks=()).fenced is False
    assert replace(GUEST, disks=(LOCAL, AOE)).fenced is True


def test_volumes_sorted_unique_shared_only() -> None:
    dup = replace(AOE, target="vdd")
    unnamed = Disk(target="vde", source="/x", shared=True, volume=None)
    not_shared_but_named = Disk(target="vdf", source="/y", volume="zzz-local")
    g = replace(GUEST, disks=(ISCSI, LOCAL, AOE, dup, unnamed, not_shared_but_named))
    assert g.volumes == ("aoe-e1.2", "iscsi-iqn.2013-06.com.example:storage-lun1")
    assert replace(GUEST, disks=(LOCAL,)).volumes == ()


def test_same_content_ignores_only_updated_at() -> None:
    later = replace(GUEST, updated_at=GUEST.updated_at + 30)
    assert GUEST.same_content(later)
    assert later.same_content(GUEST)
    assert not GUEST.same_content(replace(later, state="paused"))
    assert not GUEST.same_content(replace(GUEST, host="node2"))
    assert not GUEST.same_content(replace(GUEST, disks=(AOE,)))
    assert not GUEST.same_content(replace(GUEST, autostart=False))


def test_listing_defaults_are_independent() -> None:
    a, b = Listing(), Listing()
    a.hosts.append(HOST)
    assert b.hosts == [] and b.guests == [] and b.errors == []


# -- decode errors ------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"{'v': 1}", "[1,", b"\xff\xfe\xfa"])
def test_not_json(raw: bytes | str) -> None:
    err = decode_error(GuestRecord, raw)
    assert err.reason.startswith("not JSON (")


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"text"', b"null", b"true", b"[{\"v\": 1}]"])
def test_not_an_object(raw: bytes) -> None:
    assert decode_error(GuestRecord, raw).reason == "not a JSON object"


@pytest.mark.parametrize("version", [None, 0, 2, "1", [1], {"v": 1}])
def test_unknown_schema_version(version: object) -> None:
    body = guest_json(v=version)
    err = decode_error(GuestRecord, dumps(body))
    assert err.reason == f"unknown schema version {version!r}"


def test_missing_version() -> None:
    body = guest_json()
    del body["v"]
    assert decode_error(GuestRecord, dumps(body)).reason == "unknown schema version None"


@pytest.mark.parametrize(
    "field", ["uuid", "name", "host", "state", "vcpus", "memory_mib", "updated_at"])
def test_missing_guest_field(field: str) -> None:
    body = guest_json()
    del body[field]
    assert decode_error(GuestRecord, dumps(body)).reason == f"missing field {field!r}"


@pytest.mark.parametrize(
    "field", ["name", "libvirt_uri", "hypervisor", "cpus", "memory_mib", "free_memory_mib",
              "agent_version", "reported_at"])
def test_missing_host_field(field: str) -> None:
    body = host_json()
    del body[field]
    assert decode_error(HostRecord, dumps(body), HKEY).reason == f"missing field {field!r}"


@pytest.mark.parametrize("field", ["disks", "persistent", "autostart"])
def test_optional_guest_fields_default(field: str) -> None:
    body = guest_json()
    del body[field]
    rec = decode(GuestRecord, KEY, dumps(body))
    assert getattr(rec, field) == getattr(GuestRecord(
        uuid="u", name="n", host="h", state="running", vcpus=1, memory_mib=1,
        updated_at=0), field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uuid", 5), ("name", None), ("host", ["node1"]), ("state", 1),
        ("vcpus", "2"), ("vcpus", 2.0), ("vcpus", True), ("vcpus", None),
        ("memory_mib", 1.5), ("memory_mib", False), ("updated_at", "now"),
        ("updated_at", True), ("updated_at", None), ("persistent", 1),
        ("autostart", "yes"), ("autostart", None),
    ],
)
def test_wrong_guest_field_type(field: str, value: object) -> None:
    err = decode_error(GuestRecord, dumps(guest_json(**{field: value})))
    assert err.reason == f"field {field!r} has the wrong type"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpus", "16"), ("cpus", True), ("free_memory_mib", 1.0), ("reported_at", False),
        ("started_at", "0"), ("agent_version", 1), ("libvirt_uri", {}),
    ],
)
def test_wrong_host_field_type(field: str, value: object) -> None:
    err = decode_error(HostRecord, dumps(host_json(**{field: value})), HKEY)
    assert err.reason == f"field {field!r} has the wrong type"


@pytest.mark.parametrize("field", ["labels", "storage"])
@pytest.mark.parametrize("value", ["ssd", ["ssd", 1], [None], {"a": "b"}, None])
def test_bad_string_lists(field: str, value: object) -> None:
    err = decode_error(HostRecord, dumps(host_json(**{field: value})), HKEY)
    assert err.reason == f"field {field!r} must be a list of strings"


@pytest.mark.parametrize("value", [{}, "vda", None, 3])
def test_disks_not_a_list(value: object) -> None:
    err = decode_error(GuestRecord, dumps(guest_json(disks=value)))
    assert err.reason == "field 'disks' must be a list"


@pytest.mark.parametrize(
    "disk",
    [
        "vda", None, 1, [], {},
        {"target": "vda"},
        {"source": "/dev/etherd/e1.2"},
        {"target": 1, "source": "/x"},
        {"target": "vda", "source": None},
    ],
)
def test_bad_disk(disk: object) -> None:
    err = decode_error(GuestRecord, dumps(guest_json(disks=[asdict(LOCAL), disk])))
    assert err.reason == "a disk needs string fields 'target' and 'source'"


@pytest.mark.parametrize("state", ["RUNNING", "on", "", "migrating"])
def test_unknown_state(state: str) -> None:
    err = decode_error(GuestRecord, dumps(guest_json(state=state)))
    assert err.reason == f"unknown guest state {state!r}"


@pytest.mark.parametrize("state", GUEST_STATES)
def test_every_known_state_decodes(state: str) -> None:
    assert decode(GuestRecord, KEY, dumps(guest_json(state=state))).state == state


def test_error_message_is_one_line_even_for_multiline_values() -> None:
    err = decode_error(GuestRecord, dumps(guest_json(state="run\nning")))
    assert "'run\\nning'" in str(err)
    err = decode_error(GuestRecord, dumps(guest_json(v="1\n2")))
    assert "'1\\n2'" in str(err)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)
    err = DecodeError("k", "why")
    assert (str(err), err.key, err.reason) == ("corrupt registry record k: why", "k", "why")


def test_host_json_is_not_a_guest() -> None:
    err = decode_error(GuestRecord, encode(HOST))
    assert err.reason == "missing field 'uuid'"


def test_deeply_nested_json_is_a_decode_error() -> None:
    decode_error(GuestRecord, b"[" * 100_000)


@pytest.mark.parametrize(
    "extra",
    [{"shared": "no"}, {"volume": []}, {"shareable": 1}, {"kind": 5}, {"protocol": ["iscsi"]}],
)
def test_wrongly_typed_disk_fields_are_decode_errors(extra: dict) -> None:
    disk = {"target": "vda", "source": "/dev/etherd/e1.2", **extra}
    decode_error(GuestRecord, dumps(guest_json(disks=[disk])))


# -- guest_data: what guest list streams, the plain records taken as they are ----------

def _body(**changes: object) -> dict:
    body = {"v": 1, **json.loads(encode(GUEST))}
    body.update(changes)
    return body


def _disk(**changes: object) -> dict:
    return {**asdict(AOE), **changes}


@pytest.mark.parametrize("body", [
    _body(),  # what agents write: taken as it is
    _body(extra="dropped"),  # an unknown field is dropped
    _body(vcpus=True),  # a bool is not an int
    _body(updated_at=7),  # an int timestamp is one
    _body(state="bogus"),  # same shape as a good record, but no such state
    _body(state=1),
    _body(disks=[]),
    _body(disks=[_disk(extra=1)]),  # a disk's unknown field is dropped
    _body(disks=[{"target": "vda", "source": "/x"}]),  # a disk's defaults are filled in
    _body(disks=[_disk(shared=1)]),
    _body(disks=[_disk(volume=None), "not a disk"]),
    _body(disks=[_disk(target=None)]),
    _body(disks={"vda": 1}),
    {k: v for k, v in _body().items() if k != "disks"},  # disks default to none
    {k: v for k, v in _body().items() if k != "vcpus"},  # a required field is missing
], ids=lambda b: json.dumps(b)[:60])
def test_guest_data_is_what_decode_gives(body: dict) -> None:
    """Refused exactly when ``decode`` refuses, with its message; else the same data,
    fields in the record's order; twice over (the second time from the shape cache)."""
    from gridtool.registry.model import as_dict, guest_data

    raw = json.dumps(body).encode()
    for _ in range(2):
        try:
            expected = as_dict(decode(GuestRecord, "k", raw))
        except DecodeError as exc:
            with pytest.raises(DecodeError) as got:
                guest_data("k", raw)
            assert str(got.value) == str(exc)
            continue
        data = guest_data("k", raw)
        assert data == expected
        assert list(data) == list(expected)
        assert [list(d) for d in data["disks"]] == [list(d) for d in expected["disks"]]


# -- listed_guest: what guest list --json writes ----------------------------------------

def test_listed_guest_splices_what_agents_write() -> None:
    """A record as agents write it, of a live host, is written as its own bytes less its
    "v", plus the view's two fields (never decoded into a new document)."""
    from gridtool.registry.fleet import guest_view, listed_guest

    raw = encode(GUEST)
    view, out = listed_guest("k", raw, frozenset({GUEST.host}))
    assert out == raw.replace(b'"v":1,', b"")[:-1] + \
        b',"reported_state":"running","fenced":true}'
    assert view == json.loads(out) == guest_view(GUEST, frozenset({GUEST.host}))


@pytest.mark.parametrize("raw", [
    encode(GUEST)[:-1] + b',"name":"web2"}',  # a key twice: the parser keeps the last
    encode(GUEST)[:-1] + b',"v":1}',
    encode(GUEST)[:-1] + b',"v":2}',
    encode(GUEST).replace(b'"name":"', b'"name":"\\"v\\":1,'),  # "v":1, in a string
    encode(GUEST).replace(b'"v":1,', b"") [:-1] + b',"v":1}',  # "v" last
    encode(GUEST).replace(b",", b", "),
    encode(GUEST) + b"\n",
], ids=str)
def test_listed_guest_is_the_view_of_what_decodes(raw: bytes) -> None:
    """Any other record is the view of what ``decode`` gives (or refused as it is)."""
    from gridtool.registry.fleet import guest_view, listed_guest

    live = frozenset({GUEST.host})
    try:
        expected = guest_view(decode(GuestRecord, "k", raw), live)
    except DecodeError as exc:
        with pytest.raises(DecodeError, match=str(exc.reason)):
            listed_guest("k", raw, live)
        return
    view, out = listed_guest("k", raw, live)
    assert view == json.loads(out) == expected
    names = [name for name, _ in json.loads(out, object_pairs_hook=lambda pairs: pairs)]
    assert len(names) == len(set(names))  # no key twice
