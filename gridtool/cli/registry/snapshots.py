"""``gridtool registry backup|restore``: etcd snapshots of the registry."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import json_option, outcome
from gridtool.errors import UsageError

#: After a production restore, what the operator does on each member (the command
#: cannot stop or start members on other machines).
PRODUCTION_STEPS = ("stop etcd on every member; on each, restore the same FILE with its "
                    "own --name and --peer-url into a new --data-dir; point each member's "
                    "data dir at it (ETCD_DATA_DIR); start them all")


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--credentials-dir", metavar="DIR", help="Where root's password is (as "
              "for 'registry init'; etcd lets only root take a snapshot).")
@json_option
@pass_app
def backup(app: AppContext, file: Path, credentials_dir: str | None, as_json: bool) -> None:
    """Save an etcd snapshot of the whole registry to FILE.

    Written to a temporary file beside FILE, checked with 'etcdctl snapshot status',
    then renamed over FILE: FILE is always a whole, readable snapshot. Run it from cron;
    keep several. Exits 4 when no endpoint answers, 5 without root's password while
    authentication is on.

    \b
    Example:
      gridtool registry backup /var/backups/gridtool-$(date +%F).db --json
    """
    from gridtool.auth.shell import credentials_dir as cred_dir
    from gridtool.registry.backup import backup as save

    checked = save(app.config, cred_dir(app.config, credentials_dir), file)
    outcome(as_json, f"{file}: snapshot at revision {checked.revision}, {checked.total_keys} "
            f"keys, {checked.total_size / 1024:.0f} KiB", file=str(file), **asdict(checked))


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--lab", is_flag=True, help="Restore the local lab's etcd and restart it.")
@click.option("--lab-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="GRIDTOOL_LAB_DIR", help="The lab's directory (default /tmp/gridtool-lab).")
@click.option("--data-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Production: the new data dir to restore into (must not exist).")
@click.option("--name", metavar="NAME", help="Production: this member's etcd --name.")
@click.option("--initial-cluster", metavar="N1=URL,N2=URL",
              help="Production: every member's name and peer URL.")
@click.option("--peer-url", metavar="URL", help="Production: this member's peer URL.")
@click.option("--token", default="etcd-cluster", show_default=True,
              help="Production: the new cluster's --initial-cluster-token.")
@json_option
def restore(file: Path, lab: bool, lab_dir: Path | None, data_dir: Path | None,
            name: str | None, initial_cluster: str | None, peer_url: str | None, token: str,
            as_json: bool) -> None:
    """Restore the registry from a snapshot made by 'registry backup'.

    With --lab: stop the lab's etcd, move its data aside (DIR.pre-restore), restore,
    start it again on the same ports; the agents reconnect and resync. In production,
    this command only restores FILE into a new data dir for one member (it never
    overwrites a data dir, nor stops or starts members elsewhere): stop etcd on every
    member; on each, run it with that member's --name and --peer-url; point the member
    at the new data dir; start them all. Exit 2 when neither --lab nor the production
    options are given, 7 when --data-dir exists.

    \b
    Example:
      gridtool registry restore /var/backups/gridtool.db --lab
      gridtool registry restore gridtool.db --data-dir /var/lib/etcd/restored \\
          --name etcd1 --peer-url https://10.0.0.1:2380 \\
          --initial-cluster etcd1=https://10.0.0.1:2380,etcd2=https://10.0.0.2:2380
    """
    production = (data_dir, name, initial_cluster, peer_url)
    if lab and any(production):
        raise UsageError("give --lab or the production options (--data-dir ...), not both")
    if lab:
        from gridtool.lab import lab as labmod
        from gridtool.lab.state import lab_dir as default_dir

        directory = lab_dir or default_dir()
        checked = labmod.restore_etcd(directory, file)
        outcome(as_json, f"lab in {directory}: etcd restored to revision {checked.revision} "
                "and restarted", file=str(file), lab_dir=str(directory), restarted=True,
                **asdict(checked))
        return
    if not all(production):
        raise UsageError("restore needs --lab, or --data-dir, --name, --peer-url and "
                         "--initial-cluster for one production member (a running member is "
                         "never restored in place)")
    from gridtool.registry.backup import restore as restore_into
    from gridtool.registry.upkeep import Member

    assert data_dir and name and initial_cluster and peer_url  # checked above, for mypy
    checked = restore_into(file, Member(name, peer_url, initial_cluster, token), data_dir)
    outcome(as_json, f"{data_dir}: restored revision {checked.revision} for {name}; next: "
            f"{PRODUCTION_STEPS}", file=str(file), data_dir=str(data_dir), name=name,
            restarted=False, next=PRODUCTION_STEPS, **asdict(checked))
