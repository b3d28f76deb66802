"""``gridtool fence list --storage``: each shared LUN's SCSI-3 registrations and holder."""

from __future__ import annotations

from gridtool.cli.common.context import AppContext
from gridtool.errors import OperationFailed, RegistryUnavailable, UsageError

#: What the table shows for the manager's key (registered on every LUN it fenced).
FENCER_OWNER = "(fencer)"


def lab_target() -> dict | None:
    """The running lab's iSCSI target (``lab up --storage iscsi``), or None."""
    from gridtool.lab.state import lab_dir, read_state, running_lab_config

    if running_lab_config() is None:
        return None
    target = (read_state(lab_dir()) or {}).get("iscsi")
    return target if isinstance(target, dict) else None


def luns_and_initiator(luns: tuple[str, ...], initiator: str | None) -> tuple[list[str], str]:
    """The LUNs to read (those given, else the running lab's) and the initiator IQN to
    read them as (the one given, else the lab CLI's)."""
    from gridtool.lab.iscsi import CLI_INITIATOR

    target = lab_target() if not (luns and initiator) else None
    chosen = list(luns) or list((target or {}).get("urls", []))
    if not chosen:
        raise UsageError("no iSCSI LUN to read: give --lun iscsi://HOST:PORT/TARGET-IQN/LUN "
                         "(a lab started with --storage iscsi is read by default)")
    who = initiator or (CLI_INITIATOR if target else None)
    if who is None:
        raise UsageError("give --initiator IQN: an initiator name the target's ACL allows")
    return chosen, who


def read_luns(app: AppContext, luns: list[str], initiator: str) -> tuple[list[dict], list[str]]:
    """Each LUN's registrations and reservation (keys named after the fleet's hosts), and
    one error line per LUN that could not be read; OperationFailed when none could."""
    from gridtool.storage import pr
    from gridtool.storage.fence import FENCER_KEY_NAME
    from gridtool.storage.iscsi import IscsiLun

    rows: list[dict] = []
    errors: list[str] = []
    try:
        hosts, _ = app.registry.list_hosts()
        owners = pr.key_owners(h.name for h in hosts)
        owners[pr.host_key(FENCER_KEY_NAME)] = FENCER_OWNER
    except RegistryUnavailable as exc:  # the LUNs still answer: show keys without names
        errors.append(f"host names unknown ({exc})")
        owners = {}
    for url in luns:
        try:
            with IscsiLun(url, initiator) as lun:
                rows.append(pr.describe_lun(url, lun.read_keys(), lun.read_reservation(),
                                            owners))
        except pr.PrError as exc:
            errors.append(str(exc))
    if not rows:
        lun_errors = errors[-len(luns):]
        raise OperationFailed(lun_errors[0] + (f" (and {len(lun_errors) - 1} more)"
                                               if len(lun_errors) > 1 else ""))
    return rows, errors
