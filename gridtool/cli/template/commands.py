"""``gridtool template ...``: golden-image templates to clone workers from."""

from __future__ import annotations

import time
from typing import Any

import click

from gridtool.cli.common.complete import TEMPLATES
from gridtool.cli.common.context import AppContext, pass_app
from gridtool.cli.common.output import (
    age,
    console,
    emit_json,
    json_option,
    mib,
    outcome,
    section,
    table,
    text,
    warn,
    when,
)


@click.command("create")
@click.argument("name")
@click.option("--from", "guest", required=True, metavar="GUEST",
              help="The guest (name or UUID) whose disks become the golden images.")
@click.option("--ready-marker", metavar="TEXT",
              help="Clones count as up once TEXT appears on their serial console (the "
                   "guest needs a serial console writing to a file).")
@click.option("--timeout", default=600.0, show_default=True,
              help="Seconds to wait for the host to copy the disks.")
@json_option
@pass_app
def create(app: AppContext, name: str, guest: str, ready_marker: str | None, timeout: float,
           as_json: bool) -> None:
    """Freeze a guest's disks as golden images (written once, read-only) and record the
    template (XML, disks, memory, vCPUs). A running guest is paused while its disks are
    copied. With --ready-marker, each clone's agent watches the clone's serial log and
    reports it ready when the marker appears; `gridtool clone` waits for that.

    \b
    Example:
      gridtool template create worker --from worker-base
      gridtool template create tiny --from tiny-base --ready-marker GRIDTOOL-READY
    """
    from gridtool.clone.shell import create_template

    tpl = create_template(app.store, app.config, name, guest, timeout=timeout,
                          ready_marker=ready_marker or "")
    if as_json:
        emit_json(template=_template_doc(tpl, []))
    else:
        console().print(f"template [bold]{tpl.name}[/bold] created from {tpl.source_name} "
                        f"on {tpl.source_host}: {len(tpl.disks)} golden image(s) in "
                        f"{tpl.images_dir}/templates/{tpl.name}", highlight=False)


def _template_doc(tpl: Any, clones: list[Any], xml: bool = False) -> dict[str, Any]:
    from dataclasses import asdict

    doc = asdict(tpl)
    if not xml:
        doc.pop("xml")
    doc["clones"] = [asdict(c) for c in clones]
    return doc


@click.command("list")
@json_option
@pass_app
def list_templates(app: AppContext, as_json: bool) -> None:
    """List templates with their clone counts.

    \b
    Example:
      gridtool template list --json | jq '.templates[].name'
    """
    from gridtool.clone.templates import clones_of, list_templates

    found, errors = list_templates(app.store, app.config.keys)
    clones = clones_of(app.store, app.config.keys)
    counts = {t.name: sum(c.template == t.name for c in clones) for t in found}
    if as_json:
        emit_json(templates=[{**_template_doc(t, []), "clones": counts[t.name]}
                             for t in found],
                  errors=[{"key": e.key, "error": e.reason} for e in errors])
    else:
        now = time.time()
        table(None, ["NAME", "FROM", "DISKS", "MEMORY", "VCPUS", "CLONES", "CREATED"],
              [(t.name, f"{t.source_name}@{t.source_host}", ",".join(t.disks) or "-",
                mib(t.memory_mib), t.vcpus, counts[t.name], age(t.created_at, now))
               for t in found])
    for err in errors:
        warn(str(err))


@click.command("show")
@click.argument("name", shell_complete=TEMPLATES)
@json_option
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Show a template: its golden images and its clones.

    \b
    Example:
      gridtool template show worker
    """
    from gridtool.clone.templates import clones_of, get_template

    tpl = get_template(app.store, app.config.keys, name)
    clones = clones_of(app.store, app.config.keys, name)
    if as_json:
        emit_json(template=_template_doc(tpl, clones, xml=True))
        return
    now = time.time()
    table(f"template {tpl.name}", ["FIELD", "VALUE"], [
        ("from", f"{tpl.source_name} ({tpl.source_guest}) on {tpl.source_host}"),
        ("memory", mib(tpl.memory_mib)), ("vcpus", tpl.vcpus), ("interfaces", tpl.nics),
        ("created", when(tpl.created_at, now)), ("images dir", tpl.images_dir),
        ("ready marker", tpl.ready_marker or "-")])
    table("golden images", ["DISK", "IMAGE"], [(d, tpl.images[d]) for d in tpl.disks])
    section(f"clones ({len(clones)})", ["NAME", "HOST", "POOL", "CREATED", "UUID"],
            [(c.name, c.host, text(c.pool), when(c.created_at, now), c.uuid) for c in clones])


@click.command("delete")
@click.argument("name", shell_complete=TEMPLATES)
@click.option("--timeout", default=120.0, show_default=True,
              help="Seconds to wait for a host to delete the golden images.")
@json_option
@pass_app
def delete(app: AppContext, name: str, timeout: float, as_json: bool) -> None:
    """Delete a template and its golden images. Refused (exit 7) while clones of it
    exist or a pool uses it.

    \b
    Example:
      gridtool template delete worker
    """
    from gridtool.clone.shell import delete_template

    delete_template(app.store, app.config, name, timeout=timeout)
    outcome(as_json, f"template {name} deleted", deleted=name)


@click.command("remove-clone")
@click.argument("clones", nargs=-1, required=True, metavar="CLONE...")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for each clone's host.")
@json_option
@pass_app
def remove_clones(app: AppContext, clones: tuple[str, ...], timeout: float,
                  as_json: bool) -> None:
    """Remove clones (names or UUIDs): destroy, undefine, delete their overlays and
    forget their records. A clone on a host that is gone is removed when its agent
    comes back.

    \b
    Example:
      gridtool template remove-clone worker-1 worker-2
    """
    from gridtool.clone.shell import remove_clone
    from gridtool.clone.templates import clones_of
    from gridtool.errors import NotFound

    known = clones_of(app.store, app.config.keys)
    chosen = []
    for wanted in clones:
        match = [c for c in known if wanted in (c.name, c.uuid)]
        if not match:
            raise NotFound(f"no clone named {wanted!r}")
        chosen.extend(match)
    for c in chosen:
        remove_clone(app.store, app.config, c.host, c.uuid, c.name, pool=c.pool or None,
                     timeout=timeout)
        if not as_json:
            click.echo(f"{c.name} removed from {c.host}", err=True)
    outcome(as_json, "", removed=[{"name": c.name, "uuid": c.uuid, "host": c.host}
                                  for c in chosen])
