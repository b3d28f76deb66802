"""The HA manager's action dispatch: every kind of action ``decide`` returns has a
handler, and an action without one is a loud error, never a silent success."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import get_args

import pytest

from gridtool.config import Config
from gridtool.ha.manager import _HANDLERS, Manager
from gridtool.ha.rules import Action, Blocked, Snapshot
from gridtool.registry.memstore import MemStore

EMPTY = Snapshot(now=0.0, hosts=(), guests=())


@dataclass(frozen=True)
class Unknown:
    """An action kind the manager was never taught."""

    guest: str
    name: str


@pytest.fixture
def manager() -> Manager:
    return Manager(Config(), MemStore(lambda: 0.0), "m1", threaded=False)


def test_every_action_kind_has_a_handler() -> None:
    assert set(_HANDLERS) == set(get_args(Action))


def test_an_unknown_action_is_logged_and_raised(manager: Manager,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="gridtool.ha.manager"), \
            pytest.raises(TypeError, match="no handler for Unknown"):
        manager._act(Unknown("u1", "web1"), EMPTY)  # type: ignore[arg-type]
    assert "event=ha_unknown_action type=Unknown" in caplog.text


def test_a_known_action_goes_to_its_handler(manager: Manager) -> None:
    assert manager._act(Blocked("u1", "web1", "no host"), EMPTY)
    assert manager.blocked == {"u1": "no host"}
