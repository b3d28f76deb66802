"""``gridtool registry ...``: the etcd cluster behind gridtool.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.registry.commands import certs, init, status
from gridtool.cli.registry.snapshots import backup, restore
from gridtool.cli.registry.users import user


@click.group()
def registry() -> None:
    """The registry (etcd cluster): status, authentication, TLS certificates, backups.

    Upkeep: every etcd member should run with --auto-compaction-mode periodic
    --auto-compaction-retention 1h --quota-backend-bytes 2147483648 (the lab's members
    do; Debian: ETCD_AUTO_COMPACTION_MODE=periodic, ETCD_AUTO_COMPACTION_RETENTION=1h,
    ETCD_QUOTA_BACKEND_BYTES=2147483648 in /etc/default/etcd). Compaction frees history
    but not disk: when 'registry status' shows a DB SIZE well above what the keys need,
    defragment one member at a time ('etcdctl --endpoints ONE defrag'; it blocks that
    member while it runs), and after a NOSPACE alarm also 'etcdctl alarm disarm'. Back up
    with 'registry backup' from cron.

    \b
    Examples:
      gridtool registry status
      gridtool registry init --hosts hv1,hv2 --managers all
      gridtool registry backup /var/backups/gridtool.db
    """


for _command in (status, init, certs, backup, restore, user):
    registry.add_command(_command)
