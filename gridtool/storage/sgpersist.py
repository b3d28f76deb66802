"""Persistent reservations through ``sg_persist`` on a kernel-attached LUN (a block or sg
device path); implements :class:`gridtool.storage.pr.Reservations`. The command lines,
output parsing and exit codes are in :mod:`gridtool.storage.sgcli`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from gridtool.storage import pr, sgcli

#: Runs an argv, returns (exit code, stdout, stderr); a test may pass its own.
Runner = Callable[[list[str]], tuple[int, str, str]]
TIMEOUT = 10.0


def run(argv: list[str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise pr.PrError("sg_persist is not installed (apt-get install sg3-utils)") from None
    except subprocess.TimeoutExpired:
        raise pr.PrError(f"{' '.join(argv)}: no answer within {TIMEOUT:.0f} s") from None
    return done.returncode, done.stdout, done.stderr


class SgPersistLun:
    """The LUN at ``device`` through the kernel's session to it."""

    def __init__(self, device: str, runner: Runner = run) -> None:
        self.device = device
        self._run = runner

    def _call(self, argv: list[str]) -> str:
        def once() -> str:
            code, out, err = self._run(argv)
            sgcli.check(argv, code, err)
            return out

        return pr.once_more_after_attention(" ".join(argv), once)

    def register(self, key: int) -> None:
        self._call(sgcli.register(self.device, key))

    def unregister(self, key: int) -> None:
        self._call(sgcli.unregister(self.device, key))

    def reserve(self, key: int, res_type: int = pr.FENCE_TYPE) -> None:
        self._call(sgcli.reserve(self.device, key, res_type))

    def preempt(self, key: int, victim: int, res_type: int = pr.FENCE_TYPE) -> None:
        self._call(sgcli.preempt(self.device, key, victim, res_type))

    def read_keys(self) -> pr.Keys:
        return sgcli.parse_keys(self._call(sgcli.read_keys(self.device)))

    def read_reservation(self) -> pr.Reservation:
        return sgcli.parse_reservation(self._call(sgcli.read_reservation(self.device)))
