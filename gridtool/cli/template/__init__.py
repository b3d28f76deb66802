"""``gridtool template ...``: golden-image templates to clone workers from.

The group; its commands live in this package's modules."""

from __future__ import annotations

import click

from gridtool.cli.template.commands import create, delete, list_templates, remove_clones, show


@click.group()
def template() -> None:
    """Templates: a guest frozen as read-only golden images, to clone workers from.

    \b
    Example:
      gridtool template create worker --from worker-base
      gridtool clone worker --count 8
    """


for _command in (create, list_templates, show, delete, remove_clones):
    template.add_command(_command)
