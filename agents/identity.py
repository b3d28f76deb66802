"""The agent's machine identity, and the check it passes before it registers its host
name: the facts from the registry, the decision from ``gridtool.registry.identity``."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from gridtool.errors import ConfigError, Conflict
from gridtool.fencing.rules import FenceKind, Observed
from gridtool.fencing.shell import read_all_fences
from gridtool.registry.identity import MachineIdentity, may_register
from gridtool.registry.keys import Keys
from gridtool.registry.model import DecodeError, HostRecord
from gridtool.registry.model import decode as decode_record
from gridtool.registry.records import HostClaim, decode, encode
from gridtool.registry.store import Compare, Item, Put, Store

log = logging.getLogger("gridtool.agent")

#: The kernel's id of the current boot (Linux); unreadable elsewhere: '' (unknown).
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
MAX_MACHINE_ID = 128


class HostNameTaken(Conflict):
    """Another machine's agent owns this host name: this agent must not run as it."""


def read_identity(machine_id_file: str, boot_id_file: str = BOOT_ID_FILE) -> MachineIdentity:
    """This machine's identity (from ``machine_id_file``), the current boot, and a new
    random instance id; ConfigError naming the setting when the file is unusable."""
    try:
        machine = Path(machine_id_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"setting 'machine_id_file': cannot read {machine_id_file} "
                          f"({exc.strerror})") from None
    except UnicodeDecodeError:
        machine = "\0"  # refused below
    if not machine or len(machine) > MAX_MACHINE_ID \
            or not all(c.isprintable() and not c.isspace() for c in machine):
        raise ConfigError(f"setting 'machine_id_file': {machine_id_file} holds no machine id "
                          f"(one word of at most {MAX_MACHINE_ID} printable characters)")
    try:
        boot = Path(boot_id_file).read_text().strip()
    except (OSError, UnicodeDecodeError):
        boot = ""
    return MachineIdentity(machine, boot, uuid.uuid4().hex)


@dataclass(frozen=True)
class Registration:
    """What registering adds to the host record's transaction: the name's new claim, and
    compares that fail if another agent registered since the check."""

    guard: tuple[Compare, ...]
    claim: Put


def admit(store: Store, keys: Keys, host: str, me: MachineIdentity, now: float
          ) -> Registration:
    """Check that ``me`` may register as ``host`` (``may_register``) before any lease or
    fence is touched; HostNameTaken with the rule's one line when not."""
    claim_item = store.get(keys.machine(host))
    record = store.get(keys.host(host))
    observed, _leases = read_all_fences(store, keys)
    pinned = [v for v, o in observed.items() if isinstance(o, Observed)
              and o.fence.holder == host and o.fence.kind is FenceKind.PINNED]
    dead = store.get(keys.dead_host(host)) is not None
    admission = may_register(host, me, _claim(host, claim_item, record), record is not None,
                             pinned, dead)
    if not admission.allow:
        raise HostNameTaken(admission.reason)
    log.info("event=host_name_admitted host=%s machine=%s instance=%s reason=%s", host,
             me.machine, me.instance, admission.reason)
    guard = (_unchanged(keys.machine(host), claim_item), _unchanged(keys.host(host), record))
    return Registration(guard, Put(keys.machine(host), encode(me.claim(host, now))))


def _claim(host: str, item: Item | None, record: Item | None) -> HostClaim | None:
    """The name's claim; when it is missing or corrupt, the identity a live host record
    carries (None when that has none either)."""
    if item is not None:
        try:
            return decode(HostClaim, item.key, item.value)
        except DecodeError as exc:
            log.warning("event=corrupt_record host=%s key=%s error=%s", host, item.key,
                        exc.reason)
    if record is not None:
        try:
            rec = decode_record(HostRecord, record.key, record.value)
        except DecodeError:
            return None
        if rec.machine_id:
            return HostClaim(host, rec.machine_id, "", rec.instance, rec.reported_at)
    return None


def _unchanged(key: str, item: Item | None) -> Compare:
    """A compare that holds while ``key`` is as read (absent: still absent)."""
    if item is None:
        return Compare(key, "create", 0)
    return Compare(key, "mod", item.mod_revision)
