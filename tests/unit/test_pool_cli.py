"""``gridtool pool simulate`` through click's runner (pure: no registry needed)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gridtool.cli.main import cli
from gridtool.errors import UsageError

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"


def test_simulate_all_policies_json() -> None:
    result = CliRunner().invoke(cli, ["pool", "simulate", "--trace", str(TRACES / "spike.csv"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    by_policy = {r["policy"]: r for r in body["results"]}
    assert set(by_policy) == {"erlang", "classic", "hpa"}
    # The erlang policy violates the SLA far less than the classic 0.90 rule on a spike.
    assert by_policy["erlang"]["sla_violation_seconds"] < \
        by_policy["classic"]["sla_violation_seconds"] / 2


def test_bad_trace_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("nonsense\n1,2\n")
    result = CliRunner().invoke(cli, ["pool", "simulate", "--trace", str(bad)])
    # main() turns it into one line on stderr and exit code 2
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
    assert "cannot load trace" in str(result.exception)
