"""Shell completion of registry names (hosts, guests, pools, templates): each reads the
registry with a short timeout and offers nothing, silently, when it cannot."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

if TYPE_CHECKING:
    from gridtool.registry.keys import Keys
    from gridtool.registry.store import Store

#: Seconds a <TAB> may wait for the registry.
TIMEOUT_S = 1.0


def matching(names: Iterable[str], incomplete: str) -> list[CompletionItem]:
    """The names that start with what was typed, sorted, once each."""
    return [CompletionItem(n) for n in sorted(set(names)) if n.startswith(incomplete)]


def registry_names(ctx: click.Context, read: Callable[[Store, Keys], Iterable[str]],
                   incomplete: str) -> list[CompletionItem]:
    """``read`` the registry named by the command line's global options (or the config
    they point at); no completion on any failure: a shell must not print a traceback."""
    try:
        from gridtool.config import load
        from gridtool.registry.etcdstore import EtcdStore

        given = ctx.find_root().params
        overrides = {k: given.get(k) for k in ("endpoints", "prefix")}
        cfg = load(given.get("config_file"), {**overrides, "timeout": TIMEOUT_S})
        store = EtcdStore(cfg)
        try:
            return matching(read(store, cfg.keys), incomplete)
        finally:
            store.close()
    except Exception:  # completion fails silent, whatever went wrong
        return []


def _hosts(store: Store, keys: Keys) -> list[str]:
    return [item.key.removeprefix(keys.hosts) for item in store.list(keys.hosts)[0]]


def _guests(store: Store, keys: Keys) -> list[str]:
    from gridtool.registry.fleet import Registry

    return [g.name for g in Registry(store, keys).list_guests()[0]]


def _pools(store: Store, keys: Keys) -> list[str]:
    from gridtool.pools.shell import list_specs

    return [p.name for p in list_specs(store, keys)]


def _templates(store: Store, keys: Keys) -> list[str]:
    from gridtool.clone.templates import list_templates

    return [t.name for t in list_templates(store, keys)[0]]


def _completer(read: Callable[[Store, Keys], Iterable[str]]) -> Any:
    def complete(ctx: click.Context, _param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
        return registry_names(ctx, read, incomplete)
    return complete


#: ``shell_complete=`` of arguments and options naming a host, guest, pool or template.
HOSTS = _completer(_hosts)
GUESTS = _completer(_guests)
POOLS = _completer(_pools)
TEMPLATES = _completer(_templates)
