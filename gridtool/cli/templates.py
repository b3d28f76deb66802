"""``gridtool template ...`` and ``gridtool clone``: golden-image templates and
copy-on-write clones of them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from gridtool.cli.context import AppContext, pass_app
from gridtool.cli.output import age, console, emit_json, json_option, mib, table, warn
from gridtool.errors import OperationFailed, UsageError

if TYPE_CHECKING:
    from gridtool.clone.shell import CloneResult

PHASES = ("overlay", "define", "start", "running", "ready")


@click.group()
def template() -> None:
    """Templates: a guest frozen as read-only golden images, to clone workers from.

    \b
    Example:
      gridtool template create worker --from worker-base
      gridtool clone worker --count 8
    """


@template.command("create")
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


@template.command("list")
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


@template.command("show")
@click.argument("name")
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
    table(f"template {tpl.name}", ["FIELD", "VALUE"], [
        ("from", f"{tpl.source_name} ({tpl.source_guest}) on {tpl.source_host}"),
        ("memory", mib(tpl.memory_mib)), ("vcpus", tpl.vcpus), ("interfaces", tpl.nics),
        ("created", age(tpl.created_at)), ("images dir", tpl.images_dir),
        ("ready marker", tpl.ready_marker or "-")])
    table("golden images", ["DISK", "IMAGE"], [(d, tpl.images[d]) for d in tpl.disks])
    table(f"clones ({len(clones)})", ["NAME", "HOST", "POOL", "UUID"],
          [(c.name, c.host, c.pool or "-", c.uuid) for c in clones])


@template.command("delete")
@click.argument("name")
@click.option("--timeout", default=120.0, show_default=True,
              help="Seconds to wait for a host to delete the golden images.")
@pass_app
def delete(app: AppContext, name: str, timeout: float) -> None:
    """Delete a template and its golden images. Refused (exit 7) while clones of it
    exist or a pool uses it.

    \b
    Example:
      gridtool template delete worker
    """
    from gridtool.clone.shell import delete_template

    delete_template(app.store, app.config, name, timeout=timeout)
    console().print(f"template {name} deleted", highlight=False)


@template.command("remove-clone")
@click.argument("clones", nargs=-1, required=True, metavar="CLONE...")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for each clone's host.")
@pass_app
def remove_clones(app: AppContext, clones: tuple[str, ...], timeout: float) -> None:
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
        console().print(f"{c.name} removed from {c.host}", highlight=False)


# --------------------------------------------------------------------------- clone


class CloneProgress:
    """Rich progress on stderr: a spinner line per clone while it is made, one line
    per clone when it is settled (only those lines when stderr is not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console(stderr=True)
        self.live = self.console.is_terminal
        self.quiet = quiet
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> CloneProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.live:
            self.progress.stop()

    def __call__(self, item: CloneResult | str) -> None:
        from rich.markup import escape

        if isinstance(item, str):
            name, _, what = item.partition(": ")
            text = f"{escape(name)}: {escape(what)}"
            if name in self.tasks:
                self.progress.update(self.tasks[name], description=text)
            else:
                self.tasks[name] = self.progress.add_task(text, total=None)
            return
        if item.name in self.tasks:
            self.progress.remove_task(self.tasks.pop(item.name))
        if self.quiet:
            return
        if item.ok:
            secs = item.timings.get("running")
            when = f" in {secs:.2f}s" if secs is not None else ""
            line = f"[green]ok[/green]   {escape(item.name)} on {item.host}{when}"
        else:
            line = f"[red]FAIL[/red] {escape(item.name)}: {escape(item.error)}"
        self.progress.console.print(line, highlight=False)


@click.command("clone")
@click.argument("template_name", metavar="TEMPLATE")
@click.option("--count", default=1, show_default=True, help="How many clones to make.")
@click.option("--pool", metavar="POOL", help="Record the clones as members of this pool.")
@click.option("--name-prefix", metavar="PREFIX",
              help="Clone names are PREFIX1, PREFIX2, ... skipping names in use "
                   "[default: TEMPLATE-].")
@click.option("--on", "on_host", metavar="HOST", help="Put every clone on this host.")
@click.option("--auto", is_flag=True,
              help="Let the allocator place each clone (the default).")
@click.option("--no-start", is_flag=True, help="Define the clones without starting them.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for every clone to be reported running.")
@json_option
@pass_app
def clone(app: AppContext, template_name: str, count: int, pool: str | None,
          name_prefix: str | None, on_host: str | None, auto: bool, no_start: bool,
          timeout: float, as_json: bool) -> None:
    """Clone a template: per clone a copy-on-write overlay on each golden image, a new
    name, UUID and MAC addresses, placement on a host, define and start, in parallel
    across hosts. A clone that fails leaves nothing behind; the others go on. Exit
    status 8 when any clone failed.

    \b
    Example:
      gridtool clone worker --count 8
      gridtool clone worker --count 2 --on hv2 --name-prefix hot- --json
    """
    from gridtool.clone.shell import clone_guests

    if on_host and auto:
        raise UsageError("--on and --auto exclude each other")
    began = time.monotonic()
    with CloneProgress(quiet=as_json) as progress:
        results = clone_guests(app.store, app.config, template_name, count, pool=pool,
                               name_prefix=name_prefix, on=on_host, start=not no_start,
                               timeout=timeout, progress=progress)
    seconds = time.monotonic() - began
    failed = [r for r in results if not r.ok]
    if as_json:
        emit_json(template=template_name, seconds=round(seconds, 3), ok=not failed,
                  clones=[r.to_dict() for r in results])
    else:
        _summary(results, seconds, not no_start)
    if failed:
        reasons = "; ".join(f"{r.name} ({r.error})" for r in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise OperationFailed(f"{len(failed)} of {len(results)} clones failed: "
                              f"{reasons}{more}")


def _summary(results: list[CloneResult], seconds: float, started: bool) -> None:
    def ms(r: CloneResult, phase: str) -> str:
        return f"{r.timings[phase] * 1000:.0f}" if phase in r.timings else "-"

    table(None, ["NAME", "HOST", "RESULT", *(f"{p.upper()} ms" for p in PHASES)],
          [(r.name, r.host or "-", "ok" if r.ok else f"failed: {r.error}",
            *(ms(r, p) for p in PHASES)) for r in results])
    good = sum(r.ok for r in results)
    state = "running" if started else "defined"
    console().print(f"{good} of {len(results)} clones {state} in {seconds:.2f}s",
                    highlight=False)
