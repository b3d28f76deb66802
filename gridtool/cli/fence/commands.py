"""``gridtool fence ...``: who holds which shared volume, and fence violations."""

from __future__ import annotations

import time

import click

from gridtool.cli.common.complete import HOSTS
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import age, emit_json, json_option, outcome, table, warn
from gridtool.errors import Conflict, NotFound, UsageError


def _fences(app: AppContext) -> tuple[list[dict], list[str]]:
    from gridtool.cli.common.fences import read_fence_rows

    rows, errors = read_fence_rows(app.store, app.config.keys)
    return rows, list(errors.values())


def _violations(app: AppContext) -> list[dict]:
    from dataclasses import asdict

    from gridtool.registry.model import DecodeError
    from gridtool.registry.records import Violation, decode

    items, _ = app.store.list(app.config.keys.violations)
    found = []
    for item in items:
        try:
            found.append(asdict(decode(Violation, item.key, item.value)))
        except DecodeError as exc:
            warn(str(exc))
    return found


@click.command("list")
@json_option
@click.option("--storage", is_flag=True,
              help="Show each shared iSCSI LUN's SCSI-3 registrations (key, its host) and "
                   "reservation holder instead, read from the LUNs.")
@click.option("--lun", "luns", multiple=True, metavar="URL",
              help="With --storage: a LUN to read, iscsi://HOST:PORT/TARGET-IQN/LUN "
                   "(repeatable; default: the running lab's LUNs).")
@click.option("--initiator", metavar="IQN",
              help="With --storage: the initiator name to log in as (default: the lab's).")
@pass_app
def list_fences(app: AppContext, as_json: bool, storage: bool, luns: tuple[str, ...],
                initiator: str | None) -> None:
    """List fences (volume, guest, holder, token, since, kind) and violations seen.

    The token is the fence key's etcd revision: it grows every time the fence changes
    hands, so storage that checks it can refuse writes from a stale holder.

    \b
    Example:
      gridtool fence list --json
      gridtool fence list --storage
      gridtool fence list --storage --json --initiator iqn.2026-12.org.example:admin \\
          --lun iscsi://10.0.0.5:3260/iqn.2026-12.org.example:store/1
    """
    if storage:
        _list_storage(app, as_json, luns, initiator)
        return
    if luns or initiator:
        raise UsageError("--lun and --initiator go with --storage")
    rows, errors = _fences(app)
    violations = _violations(app)
    if as_json:
        emit_json(fences=rows, violations=violations, errors=errors)
    else:
        now = time.time()
        table(None, ["VOLUME", "GUEST", "HOLDER", "TOKEN", "SINCE", "KIND"],
              [(r["volume"], r["guest_name"], r["holder"], r["token"], age(r["since"], now),
                r["kind"]) for r in rows])
        if violations:
            table("fence violations", ["WHEN", "HOST", "GUEST", "VOLUME", "HELD BY", "ACTION"],
                  [(age(v["at"], now), v["host"], v["name"], v["volume"], v["holder"] or "-",
                    v["action"]) for v in violations])
    for err in errors:
        warn(err)


def _list_storage(app: AppContext, as_json: bool, luns: tuple[str, ...],
                  initiator: str | None) -> None:
    from gridtool.cli.fence.storage import luns_and_initiator, read_luns

    rows, errors = read_luns(app, *luns_and_initiator(luns, initiator))
    if as_json:
        emit_json(luns=rows, errors=errors)
    else:
        table(None, ["LUN", "KEY", "HOST", "RESERVATION"],
              [(r["lun"], reg["key"], reg["host"] or "?",
                _holder(r["reservation"], reg["key"]))
               for r in rows for reg in r["registrations"] or [{"key": "-", "host": "-"}]])
    for err in errors:
        warn(err)


def _holder(reservation: dict | None, key: str) -> str:
    """The RESERVATION column of one registration's row."""
    if reservation is None:
        return "none" if key == "-" else ""
    return f"holder: {reservation['type_name']}" if reservation["key"] == key else ""


@click.command("release")
@click.argument("volume")
@click.option("--force", is_flag=True, help="Required: this can let a guest run twice.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_app
def release(app: AppContext, volume: str, force: bool, yes: bool, as_json: bool) -> None:
    """Delete a fence by hand (for an operator who knows its holder is dead).

    \b
    Example:
      gridtool fence release aoe-e1.2 --force
    """
    from gridtool.registry.store import Compare, Delete

    if not force:
        raise UsageError("releasing a fence by hand can let a guest run on two hosts: "
                         "add --force if its holder is really dead")
    key = app.config.keys.fence(volume)
    item = app.store.get(key)
    if item is None:
        raise NotFound(f"no fence on volume {volume!r}")
    holder = next((r["holder"] for r in _fences(app)[0] if r["volume"] == volume), "?")
    if not yes:
        click.confirm(f"Release fence {volume} held by {holder}? Make sure {holder} does not "
                      "run the guest", abort=True, err=True)
    if not app.store.txn([Compare(key, "mod", item.mod_revision)], [Delete(key)]):
        raise Conflict(f"fence {volume} changed meanwhile: look again")
    outcome(as_json, f"released fence {volume} (was held by {holder})",
            released={"volume": volume, "holder": holder, "token": item.mod_revision})


@click.command("clear-violations")
@click.option("--host", "host_name", shell_complete=HOSTS, metavar="HOST",
              help="Only this host's violations.")
@json_option
@pass_app
def clear_violations(app: AppContext, host_name: str | None, as_json: bool) -> None:
    """Forget the fence violations recorded so far (after an operator looked at them).

    \b
    Example:
      gridtool fence clear-violations --host hv2
    """
    prefix = app.config.keys.violations + (f"{host_name}/" if host_name else "")
    keys = [item.key.removeprefix(app.config.keys.violations)
            for item in app.store.list(prefix)[0]]
    app.store.delete_prefix(prefix)
    outcome(as_json, f"cleared {len(keys)} violation record(s)", cleared=keys)
