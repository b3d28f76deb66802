"""The test harness: what the tests and benchmarks use to drive the lab (test beds of
simulated and QEMU hosts, the chaos harness, the double-run checker, network cuts, a
server that never answers, a TLS etcd).

Not part of the installed package: ``gridtool`` never imports it. Importable as
``tests.harness`` with the repository root on ``sys.path`` (pytest's ``pythonpath``
setting; ``bench/benchlib.py`` for the benchmarks)."""

from pathlib import Path

#: The repository root (what must be on ``sys.path`` for ``import tests.harness``).
ROOT = Path(__file__).resolve().parents[2]
