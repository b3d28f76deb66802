"""Unit tests for the findings of issue 14 item 9 at and around their thresholds (etcd DB
size, certificate expiry, alarms, fence violations), their -w/-c overrides, and the
collection of certificates and violations (real PEM files, the in-memory store)."""

from __future__ import annotations

import datetime
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gridtool.health.checks import DAY_S, evaluate
from gridtool.health.collect import cert_files, collect, read_cert
from gridtool.health.params import ETCD_QUOTA_BYTES, build_params, parse_size
from gridtool.health.ranges import CheckUsageError, Status
from gridtool.health.snapshot import (
    AlarmObs,
    CertObs,
    EndpointStatus,
    Snapshot,
    ViolationObs,
)
from gridtool.registry.keys import Keys
from gridtool.registry.memstore import MemStore
from gridtool.registry.records import Violation, encode

NOW = 1_700_000_000.0
QUOTA = 100 * 2**20  # a 100 MiB quota: 1 % is 1 MiB


def snap(**changes: object) -> Snapshot:
    base = Snapshot(now=NOW, endpoints=(EndpointStatus("e1:2379", True, is_leader=True),),
                    member_count=1, manager_leader="h1")
    return replace(base, **changes)


def codes(s: Snapshot, *, warn: tuple[str, ...] = (), crit: tuple[str, ...] = (),
          quota: str | None = str(QUOTA)) -> dict[str, Status]:
    report = evaluate(s, build_params(warn, crit, etcd_quota=quota))
    return {f.code: f.severity for f in report.findings}


def db(percent: float) -> Snapshot:
    return snap(endpoints=(EndpointStatus("e1:2379", True, is_leader=True,
                                          db_size=round(QUOTA * percent / 100)),))


@pytest.mark.parametrize(("percent", "status"), [
    (0.0, None), (79.99, None), (80.0, None), (80.01, Status.WARNING), (95.0, Status.WARNING),
    (95.01, Status.CRITICAL), (120.0, Status.CRITICAL)])
def test_db_size_against_the_quota_at_and_around_the_defaults(percent: float,
                                                              status: Status | None) -> None:
    assert codes(db(percent)).get("ETCD_DB_SIZE") == status


def test_db_size_thresholds_and_quota_are_overridable() -> None:
    assert codes(db(60), warn=("db_size=50",)) == {"ETCD_DB_SIZE": Status.WARNING}
    assert codes(db(60), crit=("db_size=59",)) == {"ETCD_DB_SIZE": Status.CRITICAL}
    assert codes(db(60), warn=("db_size=60",)) == {}
    # the default quota is etcd's 2 GiB: 100 MiB of DB is 5 % of it
    assert codes(db(99), quota=None) == {}
    assert build_params().etcd_quota_bytes == ETCD_QUOTA_BYTES


def test_db_size_of_an_unhealthy_or_silent_endpoint_is_not_judged() -> None:
    down = EndpointStatus("e2:2379", False, db_size=QUOTA)
    assert "ETCD_DB_SIZE" not in codes(snap(endpoints=(*snap().endpoints, down)))


def test_db_size_perfdata_is_a_percentage_with_thresholds() -> None:
    report = evaluate(db(42.5), build_params(etcd_quota=str(QUOTA)))
    (perf,) = [p for p in report.perfdata if p.label == "etcd_db_size"]
    assert str(perf) == "'etcd_db_size'=42.5%;80;95;0;100"


def cert_in(days: float) -> Snapshot:
    return snap(certs=(CertObs("/tls/host-hv1.crt", "CN=host-hv1", NOW + days * DAY_S),))


@pytest.mark.parametrize(("days", "status"), [
    (400.0, None), (30.0, None), (29.99, Status.WARNING), (7.0, Status.WARNING),
    (6.99, Status.CRITICAL), (0.0, Status.CRITICAL), (-3.0, Status.CRITICAL)])
def test_certificate_expiry_at_and_around_the_defaults(days: float,
                                                       status: Status | None) -> None:
    assert codes(cert_in(days)).get("CERT_EXPIRY") == status


def test_certificate_thresholds_are_overridable_and_expired_ones_say_so() -> None:
    assert codes(cert_in(40), warn=("cert_days=45:",)) == {"CERT_EXPIRY": Status.WARNING}
    assert codes(cert_in(20), warn=("cert_days=10:",)) == {}
    report = evaluate(cert_in(-3))
    assert "expired 3 days ago" in report.findings[0].message


def test_an_unreadable_certificate_is_a_warning() -> None:
    s = snap(certs=(CertObs("/tls/gone.crt", error="No such file or directory"),))
    report = evaluate(s)
    assert [(f.code, f.severity) for f in report.findings] == [("CERT_EXPIRY", Status.WARNING)]
    assert "gone.crt unreadable: No such file" in report.findings[0].message


def test_each_alarm_once_per_member_and_only_nospace_gets_the_recipe() -> None:
    s = snap(alarms=(AlarmObs("a1", "NOSPACE"), AlarmObs("a1", "NOSPACE"),
                     AlarmObs("b2", "CORRUPT")))
    findings = evaluate(s).findings
    assert [(f.code, f.subject, f.severity) for f in findings] == [
        ("ETCD_ALARM", "a1", Status.CRITICAL), ("ETCD_ALARM", "b2", Status.CRITICAL)]
    assert "defragment" in findings[0].message and "defragment" not in findings[1].message


def test_every_violation_is_a_finding_until_cleared() -> None:
    s = snap(violations=(ViolationObs("h2", "web1", "vol1", "h1", "paused", NOW),
                         ViolationObs("h3", "web1", "vol1", "", "", NOW)))
    findings = evaluate(s).findings
    assert {f.subject for f in findings} == {"h2/web1", "h3/web1"}
    assert all(f.code == "FENCE_VIOLATION" and f.severity is Status.CRITICAL for f in findings)
    assert any("held by nobody; no action" in f.message for f in findings)
    assert codes(s, warn=()) and evaluate(s, build_params(
        ignore=["FENCE_VIOLATION"])).findings == ()


@pytest.mark.parametrize(("text", "size"), [
    ("1048576", 2**20), ("512M", 512 * 2**20), ("8G", 8 * 2**30), ("8GiB", 8 * 2**30),
    ("1.5k", 1536), ("2T", 2 * 2**40)])
def test_parse_size(text: str, size: float) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "lots", "8X", "nan", "inf"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(CheckUsageError, match="invalid size"):
        parse_size(text)


def _write_cert(path: Path, cn: str, days: float) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_certificates_beside_ca_cert_are_collected_and_read(tmp_path: Path) -> None:
    _write_cert(tmp_path / "ca.crt", "gridtool CA", 1650)
    _write_cert(tmp_path / "host-hv1.crt", "host-hv1", 5)
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    client = tmp_path / "elsewhere.pem"
    _write_cert(client, "gridtool-admin", 20)
    paths = cert_files(str(tmp_path / "ca.crt"), str(client))
    assert [p.name for p in paths] == ["ca.crt", "elsewhere.pem", "host-hv1.crt", "junk.crt"]
    certs = {Path(c.path).name: c for c in map(read_cert, paths)}
    assert certs["host-hv1.crt"].subject == "CN=host-hv1"
    assert certs["junk.crt"].error.startswith("not a PEM certificate")
    assert read_cert(tmp_path / "missing.crt").error
    s = snap(certs=tuple(certs.values()), now=datetime.datetime.now(datetime.UTC).timestamp())
    found = {Path(f.subject).name: f.severity for f in evaluate(s).findings}
    assert found == {"host-hv1.crt": Status.CRITICAL, "elsewhere.pem": Status.WARNING,
                     "junk.crt": Status.WARNING}


def test_violations_are_collected_from_the_registry() -> None:
    store, keys = MemStore(lambda: 0.0), Keys("/t/")
    store.put(keys.violation("hv2", "u1"), encode(Violation(
        "hv2", "u1", "web1", "vol1", "hv1", "paused", NOW, "ran without its fence")))
    store.put(keys.violation("hv3", "u2"), b"{not json")
    got = collect(store, keys, 1)
    assert got.violations == (ViolationObs("hv2", "web1", "vol1", "hv1", "paused", NOW),)
    assert [c.key for c in got.corrupt] == [keys.violation("hv3", "u2")]
    assert got.alarms == ()


def test_check_cli_takes_short_threshold_flags_and_rejects_a_bad_quota() -> None:
    from gridtool.cli.main import cli

    result = CliRunner().invoke(cli, ["--endpoints", "127.0.0.1:1", "check", "-w",
                                      "db_size=50", "--etcd-quota", "lots"])
    assert result.exit_code == 3
    assert "CHECK_ERROR" in result.output and "invalid size 'lots'" in result.output
