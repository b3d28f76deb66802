"""How long ``registry init`` (first run and repair run) and ``host credentials`` take
against a real etcd, for a fleet of N hosts; and the cost of auth on a put.

The README states no time target. Judged: the first run turns auth on with a user per
host, and a repair run over a correct registry changes no user (``host credentials``
between them rotates one password through its file, which the repair run must find in
step). Exits 1 when a check fails.

    .venv/bin/python bench/auth_init.py [--hosts 50] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from benchlib import lab_etcd, print_table, summary_ms, write_json
from verdict import Verdict

from gridtool.auth import shell as security
from gridtool.auth.credfiles import password_path, read_password
from gridtool.config import Config
from gridtool.registry.etcdstore import EtcdStore


def _puts(cfg: Config, count: int) -> list[float]:
    store = EtcdStore(cfg)
    try:
        times = []
        for i in range(count):
            start = time.perf_counter()
            store.put(cfg.keys.host("hv1") if cfg.user else f"{cfg.prefix}x/{i}", b"{}")
            times.append(time.perf_counter() - start)
        return times
    finally:
        store.close()


def judge(hosts: int, first: list[security.UserResult], enabled: bool,
          repairs: list[list[security.UserResult]]) -> Verdict:
    """Auth on, a user per host, and repair runs that find nothing to repair."""
    verdict = Verdict("registry init")
    verdict.check("auth enabled by the first run", enabled, "==", True)
    verdict.check("host users created", sum(r.user.startswith("host-") and r.action == "created"
                                            for r in first), "==", hosts)
    verdict.check("repair runs", len(repairs), ">=", 1)
    verdict.check("users changed by a repair run", sum(r.action != "unchanged"
                                                       for run in repairs for r in run), "==", 0)
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    hosts = [f"hv{i}" for i in range(1, args.hosts + 1)]
    with lab_etcd() as (tmp, cluster):
        cfg = Config(endpoints=tuple(cluster.endpoints), timeout=10.0)
        plain = _puts(cfg, 200)
        creds = Path(tmp) / "credentials"
        start = time.perf_counter()
        created, enabled = security.init_registry(cfg, creds, hosts, "all")
        first = time.perf_counter() - start
        repairs, issues, repaired = [], [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            repaired.append(security.init_registry(cfg, creds)[0])
            repairs.append(time.perf_counter() - start)
            start = time.perf_counter()
            security.issue_host_credentials(cfg, creds, "hv1")
            issues.append(time.perf_counter() - start)
        user = "host-hv1"
        authed = _puts(replace(cfg, user=user,
                               password=read_password(password_path(creds, user))), 200)
    body = {"hosts": args.hosts, "init_first_s": round(first, 3),
            "init_repair_ms": summary_ms(repairs), "host_credentials_ms": summary_ms(issues),
            "put_plain_ms": summary_ms(plain), "put_auth_ms": summary_ms(authed)}
    print_table(f"registry init / host credentials, {args.hosts} hosts", [
        ("init (first run)", f"{first:.2f} s"),
        ("init (repair run, nothing to do)", f"{body['init_repair_ms']['p50_ms']:.0f} ms p50"),
        ("host credentials", f"{body['host_credentials_ms']['p50_ms']:.0f} ms p50"),
        ("put, no auth", f"{body['put_plain_ms']['p50_ms']:.2f} ms p50"),
        ("put, as host-hv1", f"{body['put_auth_ms']['p50_ms']:.2f} ms p50"),
    ], ["what", "time"])
    verdict = judge(args.hosts, created, enabled, repaired)
    verdict.print()
    write_json("auth_init", {**body, **verdict.to_dict()}, args.json_path)
    return verdict.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
