"""etcd upkeep as data (flags, etcdctl command lines, snapshot status) and the refusals
of ``registry restore`` that need no etcd: one line on stderr, a distinct exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gridtool.cli.main import cli, main
from gridtool.lab.etcd import EtcdMember
from gridtool.registry.upkeep import (
    Member,
    member_env,
    member_flags,
    parse_status,
    restore_argv,
)


def test_lab_members_run_with_compaction_and_a_quota(tmp_path: Path) -> None:
    argv = EtcdMember("etcd0", 1, 2, str(tmp_path / "d"), str(tmp_path / "log")).argv(
        "etcd0=http://127.0.0.1:2", "tok")
    flags = member_flags()
    assert "--auto-compaction-mode" in flags and "--quota-backend-bytes" in flags
    assert " ".join(flags) in " ".join(argv)


def test_the_documented_settings_are_the_ones_used() -> None:
    """'gridtool registry --help' (and so the man page) names the flags and variables."""
    text = " ".join(CliRunner().invoke(cli, ["registry", "--help"]).output.split())
    assert " ".join(member_flags()) in text
    for name, value in member_env().items():
        assert f"{name}={value}" in text


def test_parse_status() -> None:
    assert parse_status('{"hash":1674744245,"revision":2,"totalKey":5,"totalSize":20480}') \
        .total_keys == 5
    for bad in ("", "{}", '{"hash": "x", "revision": 1, "totalKey": 1, "totalSize": 1}'):
        with pytest.raises(ValueError):
            parse_status(bad)


def test_restore_argv() -> None:
    member = Member("etcd1", "https://10.0.0.1:2380", "etcd1=https://10.0.0.1:2380", "t")
    argv = restore_argv("etcdctl", "s.db", member, "/var/lib/etcd/new")
    assert argv[:4] == ["etcdctl", "snapshot", "restore", "s.db"]
    pairs = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert pairs == {"--name": "etcd1", "--data-dir": "/var/lib/etcd/new",
                     "--initial-cluster": "etcd1=https://10.0.0.1:2380",
                     "--initial-cluster-token": "t",
                     "--initial-advertise-peer-urls": "https://10.0.0.1:2380"}


def _gridtool(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_restore_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_snapshot = tmp_path / "file.db"
    not_a_snapshot.write_text("not a snapshot")
    production = ("--name", "etcd0", "--peer-url", "http://127.0.0.1:1",
                  "--initial-cluster", "etcd0=http://127.0.0.1:1")
    cases = [
        ((), 2, "restore needs --lab"),
        (("--lab", "--data-dir", str(tmp_path / "new")), 2, "not both"),
        (("--data-dir", str(tmp_path), *production), 7, "exists"),  # never over a data dir
        (("--data-dir", str(tmp_path / "new"), *production), 1, "not a readable etcd snapshot"),
    ]
    for extra, code, words in cases:
        got = _gridtool(capsys, "registry", "restore", str(not_a_snapshot), *extra)
        assert got[0] == code and got[1] == "" and got[2].count("\n") == 1, (extra, got)
        assert words in got[2], (extra, got)
    assert not (tmp_path / "new").exists()
