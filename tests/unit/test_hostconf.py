"""Host settings (``hostconf/<host>``): the registry's settings over agent.conf, what a
running agent applies live and what waits for its restart, the read-modify-write that
keeps draining and settings apart, and ``host set``'s one-line refusals."""

from __future__ import annotations

import logging
import queue
from dataclasses import replace

import pytest

from agents.settings import HostSettings
from gridtool.config import Config
from gridtool.errors import AuthError
from gridtool.registry import hostconf
from gridtool.registry.hostconf import HostConf, effective, pending
from gridtool.registry.memstore import MemStore
from tests.harness.testbed import run_cli

FILE = Config(host="hv1", libvirt_uri="test:///default", prefix="/t/", labels=("ssd",),
              watchdog="/dev/watchdog", watchdog_timeout=5.0)


def test_unset_settings_leave_agent_conf_alone() -> None:
    assert effective(FILE, HostConf("hv1")) == FILE


@pytest.mark.parametrize(("conf", "labels"), [
    (HostConf("hv1", labels=["a", "rack=3"]), ("a", "rack=3")),
    (HostConf("hv1", labels=[]), ()),
    (HostConf("hv1", overflow=True), ("ssd", "overflow")),
    (HostConf("hv1", labels=["overflow", "a"], overflow=False), ("a",)),
    (HostConf("hv1", labels=["a", "overflow"], overflow=True), ("a", "overflow")),
])
def test_labels_replace_agent_conf_and_overflow_adds_or_removes_its_label(
        conf: HostConf, labels: tuple[str, ...]) -> None:
    assert effective(FILE, conf).labels == labels


def test_manager_and_watchdog_win_over_agent_conf() -> None:
    got = effective(FILE, HostConf("hv1", manager=True, watchdog="", watchdog_timeout=7))
    assert (got.manager, got.watchdog, got.watchdog_timeout) == (True, None, 7.0)
    assert effective(FILE, HostConf("hv1", watchdog="/dev/watchdog1")).watchdog == \
        "/dev/watchdog1"


def test_pending_names_only_what_waits_for_a_restart() -> None:
    wanted = replace(FILE, labels=("x",), manager=True, watchdog=None)
    assert pending(FILE, wanted) == ["manager", "watchdog"]
    assert pending(FILE, replace(FILE, labels=("x",))) == []


@pytest.mark.parametrize(("changes", "words"), [
    ({"labels": ["a b"]}, "invalid label"), ({"labels": ["a,b"]}, "invalid label"),
    ({"labels": [""]}, "invalid label"), ({"watchdog": "dev/wd"}, "absolute device path"),
    ({"watchdog_timeout": 0.5}, "between 1 and 3600"), ({"colour": 1}, "unknown host setting"),
])
def test_bad_settings_are_refused(changes: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        hostconf.check_settings(changes)


def test_draining_and_settings_never_overwrite_each_other() -> None:
    store, keys = MemStore(lambda: 0.0), FILE.keys
    hostconf.set_settings(store, keys, "hv1", {"labels": ["a"], "manager": True}, "ops@x")
    hostconf.set_draining(store, keys, "hv1", True, "ops@y", "disk swap")
    hostconf.set_settings(store, keys, "hv1", {"manager": None, "overflow": True})
    conf = hostconf.read(store, keys, "hv1")
    assert conf.draining and conf.reason == "disk swap"
    assert conf.settings() == {"labels": ["a"], "overflow": True}
    hostconf.set_draining(store, keys, "hv1", False)
    assert hostconf.read(store, keys, "hv1").settings() == {"labels": ["a"], "overflow": True}


def test_the_agent_applies_labels_live_and_logs_what_waits(
        caplog: pytest.LogCaptureFixture) -> None:
    store, keys = MemStore(lambda: 0.0), FILE.keys
    hostconf.set_settings(store, keys, "hv1", {"manager": True})
    settings = HostSettings(FILE, store)
    running = settings.initial()
    assert running.manager and running.labels == ("ssd",)
    woken: queue.Queue[int] = queue.Queue()
    settings.watch(lambda: woken.put(1))
    assert woken.get_nowait() == 1 and settings.refresh(running) is None  # nothing new
    hostconf.set_settings(store, keys, "hv1", {"overflow": True, "watchdog": ""})
    hostconf.set_settings(store, keys, "hv10", {"overflow": True})  # another host's
    assert woken.qsize() == 1
    with caplog.at_level(logging.INFO, "gridtool.agent"):
        live = settings.refresh(running)
        assert settings.refresh(running) is not None  # same change: logged once
    assert live is not None and live.labels == ("ssd", "overflow") and live.manager
    assert live.watchdog == "/dev/watchdog"  # opened at start only
    assert [r.getMessage() for r in caplog.records if "pending" in r.getMessage()] == [
        "event=host_settings_pending host=hv1 settings=watchdog note=take effect when "
        "the agent restarts"]
    settings.cancel()


def test_an_agent_whose_role_cannot_read_its_settings_uses_agent_conf() -> None:
    class Refusing(MemStore):
        def get(self, key: str):  # type: ignore[no-untyped-def]
            raise AuthError("etcdserver: permission denied")

    settings = HostSettings(FILE, Refusing(lambda: 0.0))
    assert settings.initial() == FILE and not settings.readable
    settings.watch(lambda: None)  # no watch it may not have


NOWHERE = Config(endpoints=("127.0.0.1:1",), prefix="/t/", timeout=1.0)


@pytest.mark.parametrize(("args", "words"), [
    (["host", "set", "hv1"], "nothing to set"),
    (["host", "set", "hv1", "--watchdog-timeout", "0"], "between 1 and 3600"),
    (["host", "set", "hv1", "--watchdog", "watchdog"], "absolute device path"),
    (["host", "set", "hv1", "--label", "a b"], "invalid label"),
    (["host", "set", "hv1", "--unset", "colour"], "--unset colour"),
    (["host", "set", "hv1", "--fence-param", "ip=1"], "--fence-param needs --fence-agent"),
    (["host", "set", "a/b", "--overflow"], "invalid host name"),
    (["host", "add", "hv1", "--ssh", "root@127.0.0.1:1", "--watchdog", "/dev/wd",
      "--no-watchdog"], "exclude each other"),
])
def test_bad_host_settings_are_one_line_exit_2(capsys: pytest.CaptureFixture,
                                               args: list[str], words: str) -> None:
    code, _, err = run_cli(NOWHERE, capsys, *args)
    assert code == 2 and err.count("\n") == 1 and words in err, err
