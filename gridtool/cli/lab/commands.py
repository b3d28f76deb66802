"""``gridtool lab ...``: a local lab of etcd and simulated hypervisor hosts."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from gridtool.cli.common.output import emit_json, json_option, outcome, table
from gridtool.errors import NotFound, OperationFailed

LAB_DIR = click.option(
    "--lab-dir", type=click.Path(file_okay=False, path_type=Path), envvar="GRIDTOOL_LAB_DIR",
    help="Where the lab keeps its state, data and logs (default /tmp/gridtool-lab).")


class LabFailed(OperationFailed):
    """``lab up`` could not start the lab."""


def _dir(lab_dir: Path | None) -> Path:
    from gridtool.lab.state import lab_dir as default_dir

    return lab_dir or default_dir()


@click.command("up")
@click.option("--hosts", default=3, show_default=True, help="Simulated hosts.")
@click.option("--guests", default=2, show_default=True, help="Sample guests per host.")
@click.option("--etcd-members", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="etcd members (3 = a real cluster).")
@click.option("--ttl", default=10, show_default=True, help="Host lease TTL in seconds.")
@json_option
@click.option("--insecure", is_flag=True,
              help="Leave etcd authentication off (default: on, credentials in LAB_DIR).")
@click.option("--hypervisor", type=click.Choice(["test", "qemu", "xen"]), default="test",
              show_default=True,
              help="test: libvirt's test driver; qemu: real QEMU guests (TCG, 128 MiB, tiny "
                   "image built once in /var/cache/gridtool-lab), fence hook, live migration; "
                   "xen: each host a QEMU machine running Xen 4.17 and a Debian dom0 (libxl, "
                   "the agent from its .deb, PV guests; needs 'gridtool lab build-xen-image' "
                   "first; minutes to boot under TCG), on the lab's L2 segment with AoE "
                   "(vblade) and iSCSI (tgtd) LUNs that each dom0's kernel attaches at boot "
                   "(/dev/etherd/e0.N, /dev/disk/by-path/...-iscsi-...; sg_persist fencing).")
@click.option("--storage", type=click.Choice(["files", "iscsi"]), default=None,
              help="files: shared disks are files in the lab dir; iscsi: also a lab-owned "
                   "iSCSI target (tgtd) on loopback with file-backed LUNs and one initiator "
                   "per host (its own IQN, serving the LUNs to its QEMUs over NBD), for "
                   "SCSI-3 persistent reservations; a QEMU lab's fenced guests then write to "
                   "LUNs.  [default: iscsi with --hypervisor qemu, else files]")
@click.option("--power-fence/--no-power-fence", default=True, show_default=True,
              help="Give every host the lab's power fence agent (fence_gridtool_lab); "
                   "without it the manager recovers a lost host's HA guests on the timed "
                   "path (TTL + 2 s after its lease went).")
@LAB_DIR
def up(hosts: int, guests: int, etcd_members: str, ttl: int, as_json: bool, insecure: bool,
       hypervisor: str, storage: str | None, power_fence: bool, lab_dir: Path | None) -> None:
    """Start etcd, HOSTS libvirt daemons and their agents; wait until all report.

    \b
    Example:
      gridtool lab up --hosts 3 --guests 4 --etcd-members 3
      gridtool lab up --hosts 2 --guests 2 --hypervisor qemu
      gridtool lab up --hosts 2 --guests 2 --hypervisor qemu --storage files
      gridtool lab up --hosts 2 --no-power-fence
      gridtool lab up --hosts 2 --guests 1 --hypervisor xen
    """
    from rich.console import Console

    from gridtool.lab import lab as labmod
    from gridtool.lab.procs import LabError

    console = Console(stderr=True)
    directory = _dir(lab_dir)
    try:
        with console.status("starting lab") as spinner:
            state = labmod.up(directory, hosts, guests, int(etcd_members), ttl,
                              progress=lambda msg: spinner.update(msg), insecure=insecure,
                              hypervisor=hypervisor, storage=storage,
                              power_fence=power_fence)
    except (LabError, OSError) as exc:
        raise LabFailed(f"lab up failed: {exc} (logs in {directory})") from None
    summary = labmod.summary(state)
    if as_json:
        emit_json(**{k: v for k, v in summary.items() if k != "v"})
        return
    console.print(f"lab up in {directory}: etcd {', '.join(summary['etcd_endpoints'])}")
    table(None, ["HOST", "LIBVIRT URI"], [(h["name"], h["libvirt_uri"]) for h in summary["hosts"]])
    if "segment" in summary:
        devices = summary["segment"]["dom0_devices"]
        table("shared LUNs in every dom0", ["KIND", "DEVICE"],
              [(kind, dev) for kind in ("aoe", "iscsi") for dev in devices[kind]])
    console.print("point the CLI at it with:\n"
                  f"  export GRIDTOOL_CONFIG={shlex.quote(summary['config'])}",
                  markup=False, highlight=False, soft_wrap=True)
    console.print("stop it with: gridtool lab down")


@click.command("status")
@json_option
@LAB_DIR
def status(as_json: bool, lab_dir: Path | None) -> None:
    """Show the lab's processes and whether each is alive.

    \b
    Example:
      gridtool lab status
    """
    from gridtool.lab import lab as labmod

    directory = _dir(lab_dir)
    state = labmod.status(directory)
    if state is None:
        raise NotFound(f"no lab in {directory}")
    if as_json:
        emit_json(lab=state)
        return
    rows = [(f"etcd {m['name']}", m["pid"], "yes" if m["alive"] else "no", m["endpoint"]
             if "endpoint" in m else f"127.0.0.1:{m['client_port']}")
            for m in state["etcd"]["members"]]
    for h in state.get("hosts", []):
        if h.get("hypervisor") == "xen":
            rows.append((f"xen {h['name']} (dom0, libvirtd, agent)", h["qemu_pid"],
                         "yes" if h["qemu_alive"] else "no", h["libvirt_uri"]))
            continue
        rows.append((f"libvirtd {h['name']}", h["libvirtd_pid"],
                     "yes" if h["libvirtd_alive"] else "no", h["libvirt_uri"]))
        rows.append((f"agent {h['name']}", h["agent_pid"], "yes" if h["agent_alive"] else "no",
                     str(Path(h["dir"], "agent.log"))))
    rows.append(("keeper", state.get("keeper_pid"), "yes" if state["keeper_alive"] else "no", ""))
    if "iscsi" in state:
        target = state["iscsi"]
        rows.append(("tgtd (iSCSI target)", target["pid"], "yes" if target["alive"] else "no",
                     f"{target['portal']} {target['iqn']}, {target['luns']} LUNs"))
    for entry in state.get("initiators", []):
        rows.append((f"initiator {entry['host']}", entry["pid"],
                     "yes" if entry["alive"] else "no", str(Path(entry["dir"], "lun-N.nbd"))))
    table(f"lab in {directory}", ["PROCESS", "PID", "ALIVE", "WHERE"], rows)


@click.command("down")
@LAB_DIR
@json_option
def down(lab_dir: Path | None, as_json: bool) -> None:
    """Stop every process the lab started (by PID); nothing is left running.

    \b
    Example:
      gridtool lab down
    """
    from gridtool.lab import lab as labmod

    directory = _dir(lab_dir)
    stopped = labmod.down(directory)
    outcome(as_json, f"lab in {directory}: stopped {len(stopped)} processes"
            + (f" ({', '.join(stopped)})" if stopped else ""),
            lab_dir=str(directory), stopped=stopped)


@click.command("power-off")
@click.argument("host")
@LAB_DIR
@json_option
def power_off(host: str, lab_dir: Path | None, as_json: bool) -> None:
    """Pull a lab host's plug: kill its agent and its iSCSI initiator, destroy its running
    guests.

    Its lease expires after the TTL; the manager then fences it (its fence agent, or the
    timed grace without one) and restarts its HA guests elsewhere.

    \b
    Example:
      gridtool lab power-off hv1
    """
    from gridtool.lab.power import power_off as pull_plug
    from gridtool.lab.procs import LabError

    try:
        gone = pull_plug(_dir(lab_dir), host)
    except LabError as exc:
        raise NotFound(str(exc)) from None
    outcome(as_json, f"{host} powered off ({len(gone)} guests gone: {', '.join(gone) or '-'})",
            host=host, powered="off", guests_gone=gone)


@click.command("power-on")
@click.argument("host")
@LAB_DIR
@json_option
def power_on(host: str, lab_dir: Path | None, as_json: bool) -> None:
    """Power a lab host on again after 'lab power-off': its iSCSI initiator, then its
    agent.

    \b
    Example:
      gridtool lab power-on hv1
    """
    from gridtool.lab import lab as labmod
    from gridtool.lab.procs import LabError

    try:
        pid = labmod.power_on(_dir(lab_dir), host)
    except LabError as exc:
        raise NotFound(str(exc)) from None
    outcome(as_json, f"{host}: agent started (pid {pid})", host=host, powered="on",
            agent_pid=pid)


@click.command("disk-check")
@click.argument("disk")
@click.option("--initiator", default=None, metavar="IQN",
              help="Read a LUN as this initiator (default: the lab CLI's, which the lab "
                   "target's ACL allows).")
@json_option
def disk_check(disk: str, initiator: str | None, as_json: bool) -> None:
    """Read a lab guest's data disk and judge it: did a stale copy write after a newer boot
    of the guest had started? Exit 0: no violation, 1: violations (listed), 3: no such disk
    (or a LUN that cannot be logged in to).

    DISK is a file, or a LUN as iscsi://PORTAL/TARGET-IQN/N (read through the target on a
    session of its own, which never registers: reads pass any reservation; 'lab up
    --json' lists the lab's LUN URLs). The lab's fenced QEMU guests append a record every
    100 ms to their data disk (a LUN with --storage iscsi, the default; else
    LAB_DIR/shared/NAME.img); the order of the records on the disk, never a clock,
    decides. Corrupt (torn) records are counted, not judged.

    \b
    Example:
      gridtool lab disk-check iscsi://127.0.0.1:40123/iqn.2026-12.lab.gridtool:storage/1
      gridtool lab disk-check --json /tmp/gridtool-lab/shared/hv1-vm2.img
    """
    import sys

    from gridtool.errors import UsageError
    from gridtool.lab import diskcheck
    from gridtool.lab.iscsi import CLI_INITIATOR
    from gridtool.storage.pr import PrError

    try:
        if disk.startswith("iscsi://"):
            report = diskcheck.check_lun(disk, initiator or CLI_INITIATOR)
        elif not Path(disk).exists():
            raise NotFound(f"no such disk: {disk}")
        else:
            report = diskcheck.check(Path(disk))
    except PrError as exc:
        raise NotFound(f"cannot read {disk}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {disk}: {exc.strerror or exc}") from None
    if as_json:
        emit_json(disk=disk, **report.to_dict())
    else:
        table(f"{disk}: {report.summary().split(';')[0]}",
              ["BOOT", "UUID", "RECORDS", "SLOTS", "SEQ", "EPOCH"],
              [(b.boot, b.uuid, b.records, f"{b.first.slot}-{b.last.slot}",
                f"{b.first.seq}-{b.last.seq}", f"{b.first.epoch}-{b.last.epoch}")
               for b in report.boots])
        for violation in report.violations:
            click.echo(f"violation: {violation}", err=True)
    if not report.ok:
        sys.exit(1)


@click.command("build-xen-image")
@click.option("--rebuild", is_flag=True, help="Build again even when the cache has it.")
@json_option
def build_xen_image(rebuild: bool, as_json: bool) -> None:
    """Build the Xen lab's dom0 image once (cached in /var/cache/gridtool-lab/xen):
    Debian 12 with Xen 4.17, libvirtd's libxl driver and gridtool's own .debs, by
    mmdebstrap. Minutes the first time; 'lab up --hypervisor xen' needs it.

    \b
    Example:
      gridtool lab build-xen-image
    """
    from rich.console import Console

    from gridtool.lab import xenimage
    from gridtool.lab.procs import LabError

    try:
        with Console(stderr=True).status("building the Xen dom0 image (minutes)"):
            built = xenimage.build(rebuild=rebuild)
    except LabError as exc:
        raise LabFailed(str(exc)) from None
    outcome(as_json, f"Xen dom0 image: {built.rootfs.parent}", xen=str(built.xen),
            kernel=str(built.kernel), initrd=str(built.initrd), rootfs=str(built.rootfs))
