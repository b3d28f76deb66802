"""Hypothesis fuzzing of the pure input parsers: registry JSON, domain XML, config.

Each parser promises one error type with a one-line message for *any* bad input.
"""

from __future__ import annotations

import json
import string
import tempfile
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridtool import config
from gridtool.config import Config, load, read_file
from gridtool.domains.xml import DomainSpec, DomainXMLError, parse_domain
from gridtool.errors import ConfigError
from gridtool.registry.fleet import guest_view, listed_guest
from gridtool.registry.model import (
    GUEST_STATES,
    DecodeError,
    Disk,
    GuestRecord,
    HostRecord,
    as_dict,
    decode,
    encode,
    guest_data,
)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

KEY_ALPHABET = string.ascii_letters + string.digits + "/-_.:"
keys = st.text(KEY_ALPHABET, min_size=1, max_size=40).map(lambda s: "/gridtool/v1/" + s)


def one_line(msg: str) -> None:
    assert msg, "empty error message"
    assert "\n" not in msg and "\r" not in msg, msg


# -- registry JSON ------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(
    allow_nan=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)

texts = st.text(max_size=30)
disks = st.builds(
    Disk, target=texts, source=texts, kind=st.sampled_from(["file", "block", "network"]),
    protocol=st.none() | st.just("iscsi"), shareable=st.booleans(), shared=st.booleans(),
    volume=st.none() | texts)
finite = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(-(2**40), 2**40)
hosts = st.builds(
    HostRecord, name=texts, libvirt_uri=texts, hypervisor=texts, cpus=ints, memory_mib=ints,
    free_memory_mib=ints, agent_version=texts, reported_at=finite,
    labels=st.lists(texts, max_size=3).map(tuple), started_at=finite,
    storage=st.lists(texts, max_size=3).map(tuple), watchdog=st.booleans(),
    watchdog_timeout=finite, fencing=st.lists(texts, max_size=2).map(tuple))
guests = st.builds(
    GuestRecord, uuid=texts, name=texts, host=texts, state=st.sampled_from(GUEST_STATES),
    vcpus=ints, memory_mib=ints, updated_at=finite, disks=st.lists(disks, max_size=3).map(tuple),
    persistent=st.booleans(), autostart=st.booleans(), intruder=st.booleans())


def check_decode(cls: type, key: str, raw: bytes | str) -> Any:
    """Decode, allowing only DecodeError; return the record or None."""
    try:
        return decode(cls, key, raw)
    except DecodeError as exc:
        one_line(str(exc))
        assert key in str(exc)
        assert exc.key == key
        return None


def assert_well_typed(rec: HostRecord | GuestRecord) -> None:
    for f in fields(rec):
        value = getattr(rec, f.name)
        if f.name in ("labels", "storage", "fencing"):
            assert isinstance(value, tuple) and all(isinstance(x, str) for x in value)
        elif f.name == "disks":
            assert isinstance(value, tuple)
            for d in value:
                assert isinstance(d, Disk)
                assert isinstance(d.target, str) and isinstance(d.source, str)
        elif f.type == "bool":
            assert isinstance(value, bool), (f.name, value)
        elif f.type == "int":
            assert isinstance(value, int) and not isinstance(value, bool)
        elif f.type == "float":
            assert isinstance(value, int | float) and not isinstance(value, bool)
        elif f.type == "int | None":
            assert value is None or type(value) is int, (f.name, value)
        else:
            assert isinstance(value, str), (f.name, value)
    if isinstance(rec, GuestRecord):
        assert rec.state in GUEST_STATES


@FUZZ
@given(cls=st.sampled_from([HostRecord, GuestRecord]), key=keys, raw=st.binary(max_size=150))
def test_decode_arbitrary_bytes(cls: type, key: str, raw: bytes) -> None:
    rec = check_decode(cls, key, raw)
    assert rec is None or isinstance(rec, cls)


@FUZZ
@given(cls=st.sampled_from([HostRecord, GuestRecord]), key=keys, raw=st.text(max_size=100))
def test_decode_arbitrary_text(cls: type, key: str, raw: str) -> None:
    rec = check_decode(cls, key, raw)
    assert rec is None or isinstance(rec, cls)


@FUZZ
@given(cls=st.sampled_from([HostRecord, GuestRecord]), key=keys, value=json_values)
def test_decode_arbitrary_json(cls: type, key: str, value: Any) -> None:
    rec = check_decode(cls, key, json.dumps(value))
    # a random value is never a complete record
    assert rec is None


@FUZZ
@given(record=hosts | guests, key=keys, data=st.data())
def test_decode_mutated_record(record: HostRecord | GuestRecord, key: str,
                               data: st.DataObject) -> None:
    body: dict[str, Any] = {"v": 1, **asdict(record)}
    names = sorted(body)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        name = data.draw(st.sampled_from(names), label="field")
        if data.draw(st.booleans(), label="delete"):
            body.pop(name, None)
        else:
            body[name] = data.draw(json_values, label="value")
    cls = type(record)
    rec = check_decode(cls, key, json.dumps(body).encode())
    if rec is not None:
        assert isinstance(rec, cls)
        assert_well_typed(rec)


@FUZZ
@given(record=hosts | guests, key=keys)
def test_encode_decode_round_trip(record: HostRecord | GuestRecord, key: str) -> None:
    assert decode(type(record), key, encode(record)) == record


@FUZZ
@given(record=guests, key=keys, cut=st.integers(0, 10_000))
def test_decode_truncated_record(record: GuestRecord, key: str, cut: int) -> None:
    raw = encode(record)
    cut %= len(raw)
    assert check_decode(GuestRecord, key, raw[:cut]) is None


# -- domain XML ---------------------------------------------------------------

VALID_XML = """<domain type='kvm'>
  <name>web1</name>
  <uuid>0b0e6c8e-8f4e-4d2a-9a57-0d1f1f2c3b4a</uuid>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='MiB'>2048</currentMemory>
  <vcpu placement='static'>4</vcpu>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/etherd/e1.2'/><target dev='vdb'/><shareable/>
    </disk>
    <disk type='network' device='lun'>
      <source protocol='iscsi' name='iqn.2013-06.com.example:t1/1'/><target dev='sda'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>
  </devices>
</domain>"""

_XML_BITS = ["<", ">", "/", "'", '"', "=", "&", "&amp;", "<!--", "-->", "<![CDATA[", "]]>",
             "<domain>", "</domain>", "<name>", "</name>", "<memory unit='GiB'>", "</memory>",
             "<vcpu>", "</vcpu>", "unit=", "KiB", "-1", "0", "99", "x", " ", "\n", "<?xml?>",
             "<!DOCTYPE domain>", "<!ENTITY e 'x'>", "&e;", "\x00", "é", "\ufffe"]


def check_parse(xml: str) -> DomainSpec | None:
    try:
        spec = parse_domain(xml)
    except DomainXMLError as exc:
        one_line(str(exc))
        return None
    assert isinstance(spec, DomainSpec)
    assert spec.name and spec.name == spec.name.strip()
    assert isinstance(spec.vcpus, int) and spec.vcpus >= 0
    assert isinstance(spec.memory_mib, int) and spec.memory_mib >= 0
    assert all(isinstance(d, Disk) for d in spec.disks)
    return spec



@FUZZ
@given(xml=st.text(max_size=300))
def test_parse_domain_arbitrary_text(xml: str) -> None:
    check_parse(xml)


@FUZZ
@given(xml=st.lists(st.sampled_from(_XML_BITS) | st.text(max_size=5), max_size=40).map("".join))
def test_parse_domain_xmlish_tokens(xml: str) -> None:
    check_parse(xml)


@FUZZ
@given(data=st.data())
def test_parse_domain_mutated_valid_xml(data: st.DataObject) -> None:
    xml = VALID_XML
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["delete", "insert", "replace"]), label="op")
        start = data.draw(st.integers(0, len(xml)), label="start")
        end = min(len(xml), start + data.draw(st.integers(0, 40), label="length"))
        piece = data.draw(st.sampled_from(_XML_BITS) | st.text(max_size=6), label="piece")
        if op == "delete":
            xml = xml[:start] + xml[end:]
        elif op == "insert":
            xml = xml[:start] + piece + xml[start:]
        else:
            xml = xml[:start] + piece + xml[end:]
    check_parse(xml)


@FUZZ
@given(
    name=st.text(max_size=12),
    mem=st.text(max_size=12),
    unit=st.text(max_size=6) | st.sampled_from(["KiB", "MiB", "GiB", "b", "GB", "TiB"]),
    vcpu=st.text(max_size=6),
)
def test_parse_domain_field_values(name: str, mem: str, unit: str, vcpu: str) -> None:
    from xml.sax.saxutils import escape, quoteattr

    xml = (f"<domain><name>{escape(name)}</name><vcpu>{escape(vcpu)}</vcpu>"
           f"<memory unit={quoteattr(unit)}>{escape(mem)}</memory></domain>")
    spec = check_parse(xml)
    if spec is not None:
        # XML parsers turn \r and \r\n into \n
        assert spec.name == name.replace("\r\n", "\n").replace("\r", "\n").strip()
        assert spec.vcpus == (int(vcpu) if vcpu.strip() else 1)


@FUZZ
@given(data=st.data())
def test_parse_domain_valid_is_stable_under_whitespace(data: st.DataObject) -> None:
    pad = data.draw(st.text(" \t\n", max_size=5))
    spec = check_parse(pad + VALID_XML + pad)
    assert spec is not None
    assert (spec.name, spec.vcpus, spec.memory_mib) == ("web1", 4, 2048)
    assert [d.target for d in spec.disks] == ["vda", "vdb", "sda"]


# -- configuration ------------------------------------------------------------

SETTINGS = sorted(config._SECTIONS)
SECTIONS = ["registry", "agent", "storage", "Registry", "misc", "DEFAULT"]
# A lab dir that does not exist: no lab.json, so no running lab is found.
_NO_LAB = Path(tempfile.gettempdir()) / f"gridtool-fuzz-no-lab-{uuid.uuid4().hex}"
ENV = {"GRIDTOOL_LAB_DIR": str(_NO_LAB)}
ABSENT = _NO_LAB / "absent.conf"

ini_names = st.sampled_from(SETTINGS) | st.text(string.ascii_letters + "_ ", max_size=10)
ini_values = st.text(max_size=20) | st.sampled_from(
    ["10", "1", "0", "-3", "2.5", "nan", "h:1", "h:99999", "/p/", "p", "a b", "", "%(x)s"])
ini_lines = st.one_of(
    st.builds(lambda s: f"[{s}]", st.sampled_from(SECTIONS) | st.text(max_size=8)),
    st.builds(lambda n, sep, v: f"{n}{sep}{v}", ini_names, st.sampled_from([" = ", "=", ": "]),
              ini_values),
    st.sampled_from(["", "# comment", "; comment", "  continued", "\t", "[", "]", "="]),
    st.text(max_size=20),
)
ini_texts = st.lists(ini_lines, max_size=12).map("\n".join)


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(text=ini_texts)
def test_read_file_arbitrary_ini(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.conf"
    path.write_text(text, encoding="utf-8")
    try:
        values = read_file(path)
    except ConfigError as exc:
        one_line(str(exc))
        assert str(exc).startswith(f"config file {path}: ")
        return
    assert set(values) <= set(SETTINGS)
    assert all(isinstance(v, str) for v in values.values())
    # what the file accepted, load either accepts or rejects naming a setting
    try:
        cfg = load(str(path), env=ENV, default_file=ABSENT)
    except ConfigError as exc:
        one_line(str(exc))
        assert "setting '" in str(exc)
        return
    assert cfg.source == str(path)


_STR_LIKE = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "0", "1", "2", "-1", "2.5", "1e3", "nan", "inf", "h:2379",
                     "h:0", "a:1 b:2", "/x/", "/", "x/", "a/b", "n 1"]),
)
_VALUES = st.one_of(
    _STR_LIKE,
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.text(max_size=10), max_size=3),
    st.lists(st.text(max_size=10), max_size=3).map(tuple),
)
_NUMERIC = {f.name for f in fields(Config) if f.type in ("int", "float")}




@FUZZ
@given(name=st.sampled_from([s for s in SETTINGS if s != "password_file"]), value=_VALUES)
def test_load_arbitrary_override(name: str, value: Any) -> None:
    try:
        cfg = load(overrides={name: value}, env=ENV, default_file=ABSENT)
    except ConfigError as exc:
        one_line(str(exc))
        # the message names the setting (user without password names both)
        assert f"'{name}'" in str(exc), str(exc)
        return
    assert isinstance(cfg, Config)
    assert cfg.ttl >= 2 and isinstance(cfg.ttl, int)
    assert cfg.timeout > 0 and cfg.resync_interval > 0
    assert cfg.prefix.startswith("/") and cfg.prefix.endswith("/")
    assert all(isinstance(x, str) for x in cfg.endpoints + cfg.labels + cfg.shared_pools)
    if cfg.user:
        assert cfg.password


@FUZZ
@given(name=st.sampled_from([s for s in SETTINGS if s != "password_file"]),
       value=st.text(max_size=20))
def test_load_arbitrary_env(name: str, value: str) -> None:
    env = {**ENV, f"GRIDTOOL_{name.upper()}": value}
    try:
        load(env=env, default_file=ABSENT)
    except ConfigError as exc:
        one_line(str(exc))
        assert f"'{name}'" in str(exc), str(exc)


@FUZZ
@given(record=guests, key=keys, data=st.data())
def test_guest_data_is_the_decoded_record(record: GuestRecord, key: str,
                                          data: st.DataObject) -> None:
    """What ``guest list`` streams (``guest_data``) is what ``decode`` gives, refused
    exactly when ``decode`` refuses."""
    body: dict[str, Any] = {"v": 1, **asdict(record)}
    for _ in range(data.draw(st.integers(0, 2), label="mutations")):
        name = data.draw(st.sampled_from(sorted(body)), label="field")
        if data.draw(st.booleans(), label="delete"):  # a default fills in, or it fails
            body.pop(name)
        else:
            body[name] = data.draw(json_values, label="value")
    raw = json.dumps(body).encode()
    try:
        expected = as_dict(decode(GuestRecord, key, raw))
    except DecodeError as exc:
        with pytest.raises(DecodeError) as got:
            guest_data(key, raw)
        assert str(got.value) == str(exc)
        return
    assert guest_data(key, raw) == expected


@FUZZ
@given(record=guests, key=keys, live=st.booleans(), compact=st.booleans(), data=st.data())
def test_listed_guest_is_the_view(record: GuestRecord, key: str, live: bool, compact: bool,
                                  data: st.DataObject) -> None:
    """What ``guest list --json`` writes for a record (``listed_guest``: its own bytes
    spliced when it is complete and compact) parses to the view of the decoded record,
    refused exactly when ``decode`` refuses: whatever the names and strings hold
    (quotes, ``":``, ``"v":1,``), however it was written (key order, spaces)."""
    body: dict[str, Any] = {**asdict(record), "v": 1}
    if data.draw(st.booleans(), label="mutate"):
        name = data.draw(st.sampled_from(sorted(body)), label="field")
        body[name] = data.draw(json_values | st.just('x":1,"v":1,'), label="value")
    separators = (",", ":") if compact else (", ", ": ")
    raw = json.dumps(body, sort_keys=data.draw(st.booleans(), label="sorted"),
                     separators=separators).encode()
    hosts = frozenset({record.host} if live else ())
    try:
        expected = guest_view(decode(GuestRecord, key, raw), hosts)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as got:
            listed_guest(key, raw, hosts)
        assert str(got.value) == str(exc)
        return
    view, encoded = listed_guest(key, raw, hosts)
    assert view == expected
    assert json.loads(encoded) == expected
