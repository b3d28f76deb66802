"""``sg_persist`` (sg3-utils), pure: its command lines, its output, its exit codes.

On a host whose kernel initiator attached the LUN (``/dev/disk/by-path/...-iscsi-...``),
``sg_persist`` sends the same PR commands as :mod:`gridtool.storage.pr` through the
kernel's session, which every process on the host shares: the fence_scsi way.
The output formats are sg_persist's (``prin_work`` in sg3_utils' src/sg_persist.c), run
with ``--no-inquiry``; the exit codes are sg3_utils' ``SG_LIB_CAT_*``.
"""

from __future__ import annotations

import re

from gridtool.storage import pr

SG_PERSIST = "sg_persist"

#: sg3_utils exit codes -> the error they mean (others: PrError).
EXIT_ERRORS: dict[int, type[pr.PrError]] = {
    5: pr.Unsupported,          # SG_LIB_CAT_ILLEGAL_REQ
    6: pr.UnitAttention,        # SG_LIB_CAT_UNIT_ATTENTION
    9: pr.Unsupported,          # SG_LIB_CAT_INVALID_OP
    24: pr.ReservationConflict,  # SG_LIB_CAT_RES_CONFLICT (a status, not sense)
}
#: sg3_utils reports an OS error as 50 + errno (SG_LIB_OS_BASE_ERR).
OS_ERROR_BASE = 50
EXIT_MEANINGS = {1: "syntax error", 2: "device not ready", 3: "medium or hardware error",
                 5: "illegal request", 6: "unit attention", 9: "invalid operation code",
                 11: "aborted command", 15: "cannot open the device",
                 24: "RESERVATION CONFLICT", 33: "command timed out"}


def _hex(key: int) -> str:
    return f"0x{key:x}"


def _out(action: str, device: str, *params: str) -> list[str]:
    return [SG_PERSIST, "--no-inquiry", "--out", f"--{action}", *params, device]


def register(device: str, key: int) -> list[str]:
    """REGISTER AND IGNORE EXISTING KEY (idempotent, as fence_scsi's unfence)."""
    return _out("register-ignore", device, f"--param-sark={_hex(key)}")


def unregister(device: str, key: int) -> list[str]:
    return _out("register", device, f"--param-rk={_hex(key)}", "--param-sark=0x0")


def reserve(device: str, key: int, res_type: int = pr.FENCE_TYPE) -> list[str]:
    return _out("reserve", device, f"--param-rk={_hex(key)}", f"--prout-type={int(res_type)}")


def preempt(device: str, key: int, victim: int, res_type: int = pr.FENCE_TYPE) -> list[str]:
    if victim == 0:
        raise ValueError("preempting key 0 would preempt every registrant: refused")
    return _out("preempt", device, f"--param-rk={_hex(key)}", f"--param-sark={_hex(victim)}",
                f"--prout-type={int(res_type)}")


def read_keys(device: str) -> list[str]:
    return [SG_PERSIST, "--no-inquiry", "--in", "--read-keys", device]


def read_reservation(device: str) -> list[str]:
    return [SG_PERSIST, "--no-inquiry", "--in", "--read-reservation", device]


_GENERATION = re.compile(r"PR generation=0x([0-9a-fA-F]+)")
_KEY_LINE = re.compile(r"^\s+0x([0-9a-fA-F]+)\s*$", re.MULTILINE)
_HOLDER = re.compile(r"Key=0x([0-9a-fA-F]+)")
_TYPE = re.compile(r"type: (.+?)\s*$", re.MULTILINE)
_TYPES_BY_NAME = {name: int(t) for t, name in pr.TYPE_NAMES.items()}


def _generation(text: str, what: str) -> int:
    found = _GENERATION.search(text)
    if found is None:
        raise pr.PrError(f"sg_persist {what}: unexpected output {text.strip()[:80]!r}")
    return int(found.group(1), 16)


def parse_keys(text: str) -> pr.Keys:
    """``sg_persist --in --read-keys`` output."""
    generation = _generation(text, "--read-keys")
    if "there are NO registered reservation keys" in text:
        return pr.Keys(generation, ())
    return pr.Keys(generation, tuple(int(k, 16) for k in _KEY_LINE.findall(text)))


def parse_reservation(text: str) -> pr.Reservation:
    """``sg_persist --in --read-reservation`` output."""
    generation = _generation(text, "--read-reservation")
    holder = _HOLDER.search(text)
    if holder is None or "there is NO reservation held" in text:
        return pr.Reservation(generation)
    kind = _TYPE.search(text)
    name = kind.group(1) if kind else ""
    if name not in _TYPES_BY_NAME:
        raise pr.PrError(f"sg_persist --read-reservation: unknown type {name!r}")
    scope = 0 if "LU_SCOPE" in text else -1
    return pr.Reservation(generation, int(holder.group(1), 16), _TYPES_BY_NAME[name], scope)


def check(argv: list[str], returncode: int, stderr: str) -> None:
    """Raise the error sg_persist's exit code means (None for 0)."""
    if returncode == 0:
        return
    what = " ".join(a for a in argv[1:] if a.startswith("--") and a != "--no-inquiry")
    meaning = EXIT_MEANINGS.get(returncode, f"exit code {returncode}")
    if OS_ERROR_BASE <= returncode < OS_ERROR_BASE + 47:  # sg3_utils: 50 + errno
        meaning = f"cannot open the device (errno {returncode - OS_ERROR_BASE})"

    detail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    error = EXIT_ERRORS.get(returncode, pr.PrError)
    raise error(f"sg_persist {what} {argv[-1]}: {meaning}" + (f" ({detail})" if detail else ""))
