"""``gridtool pool simulate`` through click's runner (pure: no registry needed)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridtool.cli.main import cli
from gridtool.errors import UsageError
from gridtool.pools.frontier import SWEEPS, plot_frontiers

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


def test_simulate_frontier_plot_and_json(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("start,end,rate\n0,60,5\n60,140,20\n140,200,5\n")
    svg = tmp_path / "frontiers.svg"
    result = CliRunner().invoke(cli, ["pool", "simulate", "--trace", str(short), "--trace",
                                      str(short), "--plot", str(svg), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert len(body["results"]) == 6 and len(body["frontiers"]) == 2
    front = body["frontiers"][0]
    sizes = [len(list(itertools.product(*grid.values()))) for grid in SWEEPS.values()]
    assert len(front["points"]) == sum(sizes) + 1  # the sweeps and the default
    assert sum(p["default"] for p in front["points"]) == 1
    assert front["clairvoyant_cost"] > 0 and set(front["frontiers"]) == set(SWEEPS)
    text = svg.read_text()
    assert text.startswith("<?xml") and text.count("trace short") == 2
    table = CliRunner().invoke(cli, ["pool", "simulate", "--trace", str(short), "--frontier"])
    assert table.exit_code == 0 and "exact minimum cost" in table.output
    assert "DEFAULT" in table.output


def test_frontier_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError, match="matplotlib"):
        plot_frontiers([], tmp_path / "x.svg")
