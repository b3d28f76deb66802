"""The host's settings from the registry (``hostconf/<host>``, set by ``gridtool host
add/set``) over the agent's own ``agent.conf``: read once at start, then watched. Labels
and overflow are applied live (the next host record carries them); the manager
candidate and the watchdog are opened at start only, so a change to them is logged as
pending until the agent restarts (``systemctl restart gridtool-agent``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from gridtool.config import Config
from gridtool.errors import AuthError, RegistryUnavailable
from gridtool.registry import hostconf
from gridtool.registry.store import Event, Store, Watch

log = logging.getLogger("gridtool.agent")


class HostSettings:
    """``file_cfg`` (agent.conf) with the registry's settings of its host over it."""

    def __init__(self, file_cfg: Config, store: Store) -> None:
        assert file_cfg.host
        self.file_cfg = file_cfg
        self.store = store
        self.host = file_cfg.host
        self.key = file_cfg.keys.hostconf(self.host)
        self.readable = True  # False: this host's etcd role may not read its settings
        self._watch: Watch | None = None
        self._pending: list[str] = []

    def _wanted(self) -> Config:
        conf = hostconf.read(self.store, self.file_cfg.keys, self.host)
        return hostconf.effective(self.file_cfg, conf)

    def initial(self) -> Config:
        """The configuration to start with: agent.conf alone when the registry does not
        answer (the labels follow once it does) or refuses the read."""
        try:
            cfg = self._wanted()
        except AuthError as exc:
            self.readable = False
            log.warning("event=host_settings_refused host=%s error=%s note=agent.conf only; "
                        "'gridtool registry init' grants hosts the read", self.host, exc)
            return self.file_cfg
        except RegistryUnavailable as exc:
            log.warning("event=host_settings_unread host=%s error=%s note=agent.conf until "
                        "the registry answers", self.host, exc)
            return self.file_cfg
        changed = [n for n in hostconf.SETTINGS if n != "overflow"
                   and getattr(cfg, n) != getattr(self.file_cfg, n)]
        if changed:
            log.info("event=host_settings host=%s from_registry=%s", self.host,
                     ",".join(changed))
        return cfg

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` (from the watch's thread) whenever the settings change, and
        once when the watch starts (what changed since :meth:`initial` read them)."""
        if self._watch is None and self.readable:
            def event(ev: Event) -> None:
                if ev.kind == "reset" or ev.key == self.key:
                    on_change()

            self._watch = self.store.watch_prefix(self.key, event)
            on_change()

    def refresh(self, running: Config) -> Config | None:
        """``running`` with the registry's live settings, or None when they are the same;
        logs (once per change) what waits for the agent's next start."""
        wanted = self._wanted()
        pending = hostconf.pending(running, wanted)
        if pending and pending != self._pending:
            log.warning("event=host_settings_pending host=%s settings=%s note=take effect "
                        "when the agent restarts", self.host, ",".join(pending))
        self._pending = pending
        if wanted.labels == running.labels:
            return None
        log.info("event=host_labels host=%s labels=%s", self.host, ",".join(wanted.labels))
        return replace(running, labels=wanted.labels)

    def cancel(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
