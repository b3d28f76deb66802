"""The other names this host has for a disk's source (shell: reads the file system).

A guest's XML may name one LUN as ``/dev/sdc``, as a ``/dev/disk/by-path`` link or as a
``/dev/disk/by-id`` link. Here each source under ``/dev/`` is resolved (symlinks
followed) and given every udev link that names the same device (files are not: a stat
on a hard-mounted NFS whose server is gone would hang the agent);
:mod:`gridtool.domains.storage` then takes the LUN identity from all of those names, so
one LUN is one fence key on this host however the XML names it. Light to import: the
libvirt hook uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from gridtool.domains.storage import LINK_DIRS, RESOLVE_UNDER, SharedStorageRules, normal_path
from gridtool.domains.xml import (
    DomainSpec,
    DomainXMLError,
    disk_sources,
    domain_disks,
    parse_domain,
)
from gridtool.registry.model import Disk


def _links(link_dirs: Iterable[str]) -> dict[str, list[str]]:
    """Resolved target -> the links (in ``link_dirs``) that point to it."""
    found: dict[str, list[str]] = {}
    for directory in link_dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            link = os.path.join(directory, name)
            found.setdefault(os.path.realpath(link), []).append(link)
    return found


def source_aliases(sources: Iterable[str], link_dirs: Iterable[str] = LINK_DIRS,
                   resolve_under: Iterable[str] = RESOLVE_UNDER,
                   ) -> dict[str, tuple[str, ...]]:
    """For each source under ``resolve_under`` that exists here: what it resolves to and
    every link in ``link_dirs`` to that (other sources have none)."""
    prefixes = tuple(resolve_under)
    existing = [s for s in sources if normal_path(s).startswith(prefixes)
                and os.path.exists(s)]
    if not existing:
        return {}
    links = _links(link_dirs)
    out = {}
    for source in existing:
        real = os.path.realpath(source)
        out[source] = tuple(dict.fromkeys([real, *links.get(real, [])]))
    return out


def local_aliases(xml: str, rules: SharedStorageRules) -> dict[str, tuple[str, ...]]:
    """:func:`source_aliases` of the disk sources of domain ``xml`` (links looked up in
    ``rules.link_dirs``); none for XML that does not parse (its parser says why)."""
    try:
        return source_aliases(disk_sources(xml), rules.link_dirs, rules.resolve_under)
    except DomainXMLError:
        return {}


def parse_local_domain(xml: str, rules: SharedStorageRules) -> DomainSpec:
    """:func:`parse_domain` on this host: with the aliases of the XML's disk sources."""
    return parse_domain(xml, rules, local_aliases(xml, rules))


def local_disks(xml: str, rules: SharedStorageRules) -> tuple[tuple[Disk, ...], tuple[str, ...]]:
    """:func:`domain_disks` on this host: with the aliases of the XML's disk sources."""
    return domain_disks(xml, rules, local_aliases(xml, rules))
