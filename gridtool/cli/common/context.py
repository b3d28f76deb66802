"""What every command shares: the loaded config and a lazily opened registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from gridtool.config import Config
    from gridtool.registry.fleet import Registry
    from gridtool.registry.store import Store


@dataclass
class AppContext:
    """Global options, resolved into a Config and a Registry on first use."""

    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _config: Config | None = None
    _store: Store | None = None
    _reader: Store | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from gridtool.config import load

            self._config = load(self.config_file, self.overrides)
        return self._config

    @property
    def store(self) -> Store:
        if self._store is None:
            from gridtool.registry.etcdstore import EtcdStore

            self._store = EtcdStore(self.config)
        return self._store

    @property
    def registry(self) -> Registry:
        from gridtool.registry.fleet import Registry

        return Registry(self.store, self.config.keys)

    @property
    def reader(self) -> Store:
        """The store of commands that read a few keys: reads over etcd's JSON gateway,
        without importing gRPC, while it answers (``registry.httpreads``)."""
        if self._reader is None:
            from gridtool.registry.httpreads import ReadStore

            self._reader = ReadStore(self.config, lambda: self.store)
        return self._reader

    @property
    def reads(self) -> Registry:
        """``registry`` over ``reader``."""
        from gridtool.registry.fleet import Registry

        return Registry(self.reader, self.config.keys)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._store is not None:
            self._store.close()  # closing twice (the reader's gRPC store) is harmless


pass_app = click.make_pass_decorator(AppContext)
