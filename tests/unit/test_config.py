"""Unit tests for gridtool.config: file, environment and flag layering, validation."""

from __future__ import annotations

import configparser
import json
import os
from pathlib import Path

import pytest

from gridtool.config import (
    SYSTEM_CONFIG,
    Config,
    choose_file,
    credentials,
    load,
    read_file,
    render,
)
from gridtool.domains.storage import DEFAULT_SHARED_PATTERNS, SharedStorageRules
from gridtool.errors import ConfigError
from gridtool.registry.keys import Keys

FULL_INI = """\
[registry]
endpoints = 10.0.0.1:2379, 10.0.0.2:2379 10.0.0.3:2379
prefix = /lab/
user = agent1
password = s3cret
ca_cert = /etc/gridtool/ca.pem
cert = /etc/gridtool/agent1.pem
key = /etc/gridtool/agent1.key
timeout = 2.5

[agent]
host = node1
libvirt_uri = qemu:///system
ttl = 15
resync_interval = 60
labels = rack=a, ssd
storage = aoe iscsi

[storage]
shared_patterns = /dev/etherd/*, /mnt/cluster/*
shared_pools = san
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no running lab (empty lab dir) and no GRIDTOOL_CONFIG."""
    lab = tmp_path / "nolab"
    lab.mkdir()
    return {"GRIDTOOL_LAB_DIR": str(lab)}


@pytest.fixture
def absent(tmp_path: Path) -> Path:
    return tmp_path / "absent" / "gridtool.conf"


def write(tmp_path: Path, text: str, name: str = "gridtool.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(*args: object, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(*args, **kw)  # type: ignore[arg-type]
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


# -- defaults and file --------------------------------------------------------


def test_defaults_without_any_file(env: dict, absent: Path) -> None:
    cfg = load(env=env, default_file=absent)
    assert cfg == Config()
    assert cfg.source == "defaults"
    assert cfg.endpoints == ("127.0.0.1:2379",)
    assert cfg.prefix == "/gridtool/v1/"
    assert (cfg.timeout, cfg.ttl, cfg.resync_interval) == (5.0, 10, 30.0)
    assert cfg.shared_patterns == DEFAULT_SHARED_PATTERNS
    assert cfg.user is None and cfg.password is None


def test_full_file(tmp_path: Path, env: dict, absent: Path) -> None:
    path = write(tmp_path, FULL_INI)
    cfg = load(str(path), env=env, default_file=absent)
    assert cfg.source == str(path)
    assert cfg.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379")
    assert cfg.prefix == "/lab/"
    assert (cfg.user, cfg.password) == ("agent1", "s3cret")
    assert (cfg.ca_cert, cfg.cert, cfg.key) == (
        "/etc/gridtool/ca.pem", "/etc/gridtool/agent1.pem", "/etc/gridtool/agent1.key")
    assert cfg.timeout == 2.5 and isinstance(cfg.timeout, float)
    assert cfg.host == "node1" and cfg.libvirt_uri == "qemu:///system"
    assert cfg.ttl == 15 and isinstance(cfg.ttl, int)
    assert cfg.resync_interval == 60.0
    assert cfg.labels == ("rack=a", "ssd")
    assert cfg.storage == ("aoe", "iscsi")
    assert cfg.shared_patterns == ("/dev/etherd/*", "/mnt/cluster/*")
    assert cfg.shared_pools == ("san",)
    assert cfg.keys == Keys("/lab/")
    assert cfg.shared_rules == SharedStorageRules(("/dev/etherd/*", "/mnt/cluster/*"), ("san",))


def test_default_file_used_when_present(tmp_path: Path, env: dict) -> None:
    path = write(tmp_path, "[agent]\nttl = 4\n", "agent.conf")
    cfg = load(env=env, default_file=path)
    assert cfg.ttl == 4 and cfg.source == str(path)


def test_read_file_values_are_raw_strings(tmp_path: Path) -> None:
    values = read_file(write(tmp_path, FULL_INI))
    assert values["ttl"] == "15"
    assert values["endpoints"] == "10.0.0.1:2379, 10.0.0.2:2379 10.0.0.3:2379"
    assert set(values) == {
        "endpoints", "prefix", "user", "password", "ca_cert", "cert", "key", "timeout",
        "host", "libvirt_uri", "ttl", "resync_interval", "labels", "storage",
        "shared_patterns", "shared_pools"}


def test_option_names_are_case_insensitive_and_no_interpolation(tmp_path: Path) -> None:
    values = read_file(write(tmp_path, "[registry]\nPassword = 100%sure\n"))
    assert values == {"password": "100%sure"}


@pytest.mark.parametrize(
    ("text", "where"),
    [("[registry]\nbogus = 1\n", "[registry] bogus"),
     ("[registry]\nttl = 5\n", "[registry] ttl"),  # right name, wrong section
     ("[agent]\nendpoints = a:1\n", "[agent] endpoints"),
     ("[Agent]\nhost = n\n", "[Agent] host"),
     ("[misc]\nhost = n\n", "[misc] host")],
)
def test_unknown_setting_rejected_naming_it(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_file(path)
    assert str(info.value) == f"config file {path}: unknown setting {where}"


@pytest.mark.parametrize(
    "text",
    ["ttl = 5\n", "[agent]\nttl = 5\nttl = 6\n", "[agent]\n[agent]\n", "[agent\nttl=5\n",
     "[agent]\njust words\n"],
)
def test_unparseable_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_file(path)
    msg = str(info.value)
    assert msg.startswith(f"config file {path}: ") and "\n" not in msg


def test_missing_explicit_file(tmp_path: Path, env: dict, absent: Path) -> None:
    missing = tmp_path / "nope.conf"
    msg = config_error(str(missing), env=env, default_file=absent)
    assert msg == f"config file {missing}: No such file or directory"


def test_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config file .*: Is a directory$"):
        read_file(tmp_path)


# -- layering -----------------------------------------------------------------


def test_env_overrides_file(tmp_path: Path, env: dict, absent: Path) -> None:
    path = write(tmp_path, FULL_INI)
    env = {**env, "GRIDTOOL_TTL": "20", "GRIDTOOL_ENDPOINTS": "e1:1 e2:2",
           "GRIDTOOL_SHARED_POOLS": "", "GRIDTOOL_HOST": "node9"}
    cfg = load(str(path), env=env, default_file=absent)
    assert cfg.ttl == 20
    assert cfg.endpoints == ("e1:1", "e2:2")
    assert cfg.shared_pools == ()
    assert cfg.host == "node9"
    assert cfg.timeout == 2.5  # untouched file value


def test_unrelated_env_ignored(env: dict, absent: Path) -> None:
    env = {**env, "GRIDTOOL_BOGUS": "x", "TTL": "99", "gridtool_ttl": "99"}
    assert load(env=env, default_file=absent).ttl == 10


def test_flags_override_env_and_file(tmp_path: Path, env: dict, absent: Path) -> None:
    path = write(tmp_path, FULL_INI)
    env = {**env, "GRIDTOOL_TTL": "20", "GRIDTOOL_TIMEOUT": "9"}
    flags = {"ttl": 30, "endpoints": ("f:1",), "labels": (), "host": None, "timeout": "1.5"}
    cfg = load(str(path), overrides=flags, env=env, default_file=absent)
    assert cfg.ttl == 30
    assert cfg.endpoints == ("f:1",)
    assert cfg.timeout == 1.5
    # None and () mean "flag not given": lower layers stay
    assert cfg.labels == ("rack=a", "ssd")
    assert cfg.host == "node1"


def test_flag_lists_and_strings(env: dict, absent: Path) -> None:
    cfg = load(overrides={"labels": ["a", "b"], "storage": "x,y z"}, env=env,
               default_file=absent)
    assert cfg.labels == ("a", "b") and cfg.storage == ("x", "y", "z")


# -- bad values ---------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    ["localhost", "localhost:", ":2379", "host:port", "host:0", "host:65536", "host:-1",
     "host:23 79"],
)
def test_bad_endpoint(env: dict, absent: Path, endpoint: str) -> None:
    msg = config_error(overrides={"endpoints": (endpoint,)}, env=env, default_file=absent)
    assert msg == f"setting 'endpoints': {endpoint!r} is not HOST:PORT"


@pytest.mark.parametrize("endpoint", ["h:1", "h:65535", "[::1]:2379", "etcd-0.lab:2379"])
def test_good_endpoint(env: dict, absent: Path, endpoint: str) -> None:
    assert load(overrides={"endpoints": (endpoint,)}, env=env,
                default_file=absent).endpoints == (endpoint,)


@pytest.mark.parametrize(
    ("name", "value"),
    [("ttl", "0"), ("ttl", "1"), ("ttl", "-5"), ("ttl", "ten"), ("ttl", "2.5"), ("ttl", ""),
     ("timeout", "0"), ("timeout", "-1"), ("timeout", "soon"), ("timeout", ""),
     ("resync_interval", "0"), ("resync_interval", "x")],
)
def test_bad_numbers_name_the_setting(env: dict, absent: Path, name: str, value: str) -> None:
    env = {**env, f"GRIDTOOL_{name.upper()}": value}
    msg = config_error(env=env, default_file=absent)
    assert msg.startswith(f"setting '{name}': invalid value {value!r} (")


def test_ttl_boundary(env: dict, absent: Path) -> None:
    assert load(overrides={"ttl": "2"}, env=env, default_file=absent).ttl == 2


def test_bad_number_in_file_names_setting(tmp_path: Path, env: dict, absent: Path) -> None:
    path = write(tmp_path, "[agent]\nttl = forever\n")
    msg = config_error(str(path), env=env, default_file=absent)
    assert msg.startswith("setting 'ttl': invalid value 'forever'")


@pytest.mark.parametrize("prefix", ["gridtool", "/gridtool", "gridtool/", ""])
def test_bad_prefix(env: dict, absent: Path, prefix: str) -> None:
    msg = config_error(overrides={"prefix": prefix}, env=env, default_file=absent)
    assert msg.startswith("setting 'prefix': ") and repr(prefix) in msg


@pytest.mark.parametrize("host", ["a/b", "a b", "tab\t", "ctl\x07"])
def test_bad_host_name(env: dict, absent: Path, host: str) -> None:
    msg = config_error(overrides={"host": host}, env=env, default_file=absent)
    assert msg.startswith("setting 'host': invalid host name ")


def test_bad_prefix_named_even_with_host_set(env: dict, absent: Path) -> None:
    msg = config_error(overrides={"prefix": "/gridtool", "host": "node1"}, env=env,
                       default_file=absent)
    assert msg.startswith("setting 'prefix': ")


def test_bad_prefix_containing_host_named_prefix(env: dict, absent: Path) -> None:
    msg = config_error(overrides={"prefix": "/gridtool/hosts", "host": "node1"}, env=env,
                       default_file=absent)
    assert msg.startswith("setting 'prefix': ")


def test_user_without_password_rejected(env: dict, absent: Path) -> None:
    msg = config_error(overrides={"user": "agent1"}, env=env, default_file=absent)
    assert msg == "setting 'password': required when 'user' is set"


def test_an_empty_optional_setting_is_no_setting(env: dict, absent: Path) -> None:
    """`GRIDTOOL_USER=` (how a shell clears a variable) or `user =` in a file means no
    user, not the user "": the etcd client took "" for a user without a password and the
    CLI died with an internal error (exit 1) instead of etcd's refusal (exit 5)."""
    env = {**env, "GRIDTOOL_USER": "", "GRIDTOOL_PASSWORD_FILE": " ", "GRIDTOOL_CA_CERT": ""}
    cfg = load(env=env, default_file=absent)
    assert (cfg.user, cfg.password_file, cfg.ca_cert) == (None, None, None)


def test_user_with_password(env: dict, absent: Path) -> None:
    env = {**env, "GRIDTOOL_USER": "agent1", "GRIDTOOL_PASSWORD": "pw"}
    cfg = load(env=env, default_file=absent)
    assert (cfg.user, cfg.password) == ("agent1", "pw")
    assert "pw" not in repr(cfg)


def test_password_file_read_and_stripped(tmp_path: Path, env: dict, absent: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("  hunter2 \n")
    cfg = load(overrides={"user": "root", "password_file": str(pw)}, env=env,
               default_file=absent)
    assert cfg.password == "hunter2"
    assert cfg.password_file == str(pw)


def test_explicit_password_wins_over_file(tmp_path: Path, env: dict, absent: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("fromfile\n")
    cfg = load(overrides={"user": "u", "password": "direct", "password_file": str(pw)},
               env=env, default_file=absent)
    assert cfg.password == "direct"


def test_password_file_unreadable(tmp_path: Path, env: dict, absent: Path) -> None:
    msg = config_error(overrides={"password_file": str(tmp_path / "missing")}, env=env,
                       default_file=absent)
    assert msg == "setting 'password_file': cannot read it (No such file or directory)"


def test_empty_password_file_with_user(tmp_path: Path, env: dict, absent: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("\n")
    msg = config_error(overrides={"user": "u", "password_file": str(pw)}, env=env,
                       default_file=absent)
    assert msg == "setting 'password': required when 'user' is set"


def test_require(env: dict, absent: Path) -> None:
    cfg = load(overrides={"host": "node1"}, env=env, default_file=absent)
    assert cfg.require("host", "endpoints") is cfg
    with pytest.raises(ConfigError) as info:
        cfg.require("host", "libvirt_uri")
    assert str(info.value) == (
        "setting 'libvirt_uri' is required (config [agent] libvirt_uri, "
        "env GRIDTOOL_LIBVIRT_URI, or --libvirt-uri)")


def test_config_error_exit_code() -> None:
    assert ConfigError.exit_code == 2


def test_endpoint_with_superscript_digit(env: dict, absent: Path) -> None:
    config_error(overrides={"endpoints": ("etcd:²",)}, env=env, default_file=absent)


@pytest.mark.parametrize("name", ["timeout", "resync_interval"])
def test_nan_rejected(env: dict, absent: Path, name: str) -> None:
    msg = config_error(overrides={name: "nan"}, env=env, default_file=absent)
    assert f"'{name}'" in msg


@pytest.mark.parametrize(
    ("name", "value"),
    [("ttl", ["5"]), ("timeout", ("1",)), ("resync_interval", {"a": 1}), ("ttl", float("inf"))],
)
def test_non_scalar_numeric_override(env: dict, absent: Path, name: str, value: object) -> None:
    msg = config_error(overrides={name: value}, env=env, default_file=absent)
    assert f"'{name}'" in msg


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[registry]\nuser = caf\xe9\n")
    with pytest.raises(ConfigError, match="config file"):
        read_file(path)


# -- choosing the file --------------------------------------------------------


def test_choose_explicit_first(tmp_path: Path, env: dict) -> None:
    default = write(tmp_path, "", "default.conf")
    env = {**env, "GRIDTOOL_CONFIG": "/from/env.conf"}
    assert choose_file("/explicit.conf", default, env) == Path("/explicit.conf")


def test_choose_env_second(tmp_path: Path, env: dict) -> None:
    default = write(tmp_path, "", "default.conf")
    env = {**env, "GRIDTOOL_CONFIG": "/from/env.conf"}
    assert choose_file(None, default, env) == Path("/from/env.conf")
    assert choose_file("", default, env) == Path("/from/env.conf")


def test_choose_default_when_no_lab(tmp_path: Path, env: dict) -> None:
    default = write(tmp_path, "", "default.conf")
    assert choose_file(None, default, env) == default
    assert choose_file(None, default, {**env, "GRIDTOOL_CONFIG": ""}) == default


def test_choose_none_when_default_missing(env: dict, absent: Path) -> None:
    assert choose_file(None, absent, env) is None


def test_system_default_path() -> None:
    assert Path("/etc/gridtool/gridtool.conf") == SYSTEM_CONFIG


def fake_lab(tmp_path: Path, pid: int) -> tuple[dict[str, str], Path]:
    lab = tmp_path / "lab"
    lab.mkdir()
    conf = write(lab, "[registry]\nendpoints = 127.0.0.1:23790\n")
    state = {"config": str(conf), "etcd": {"members": [{"name": "e0", "pid": pid}]}}
    (lab / "lab.json").write_text(json.dumps(state))
    return {"GRIDTOOL_LAB_DIR": str(lab)}, conf


def test_choose_running_lab_before_default(tmp_path: Path) -> None:
    env, conf = fake_lab(tmp_path, os.getpid())  # a live pid: the lab counts as running
    default = write(tmp_path, "", "default.conf")
    assert choose_file(None, default, env) == conf
    assert choose_file(None, default, {**env, "GRIDTOOL_CONFIG": "/e.conf"}) == Path("/e.conf")
    cfg = load(env=env, default_file=default)
    assert cfg.endpoints == ("127.0.0.1:23790",) and cfg.source == str(conf)


def test_dead_lab_ignored(tmp_path: Path) -> None:
    env, _ = fake_lab(tmp_path, 0)
    default = write(tmp_path, "", "default.conf")
    assert choose_file(None, default, env) == default


# -- render -------------------------------------------------------------------


def test_render_omits_password_unless_asked(env: dict, absent: Path) -> None:
    cfg = load(overrides={"user": "agent1", "password": "s3cret", "ttl": 12}, env=env,
               default_file=absent)
    text = render(cfg)
    assert "s3cret" not in text and "password" not in text
    assert "user = agent1" in text and "ttl = 12" in text
    with_secret = render(cfg, include_secrets=True)
    assert "password = s3cret" in with_secret


def test_render_omits_defaults_and_source(env: dict, absent: Path) -> None:
    assert render(Config()) == ""
    assert render(load(env=env, default_file=absent)) == ""
    assert "source" not in render(Config(ttl=3, source="/x"))


def test_render_round_trip(tmp_path: Path, env: dict, absent: Path) -> None:
    original = load(str(write(tmp_path, FULL_INI)), env=env, default_file=absent)
    text = render(original, include_secrets=True)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser["registry"]["endpoints"] == "10.0.0.1:2379, 10.0.0.2:2379, 10.0.0.3:2379"
    assert parser["agent"]["ttl"] == "15"
    assert parser["storage"]["shared_pools"] == "san"
    again = load(str(write(tmp_path, text, "rendered.conf")), env=env, default_file=absent)
    assert again.source != original.source
    assert again == Config(**{**original.__dict__, "source": again.source})


def test_render_with_password_file_keeps_only_the_path(
        tmp_path: Path, env: dict, absent: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("topsecret\n")
    cfg = load(overrides={"user": "u", "password_file": str(pw)}, env=env, default_file=absent)
    text = render(cfg)
    assert "topsecret" not in text
    assert f"password_file = {pw}" in text


# -- systemd credentials ($CREDENTIALS_DIRECTORY) ------------------------------


def test_a_systemd_credential_replaces_the_configured_file(tmp_path: Path, env: dict,
                                                           absent: Path) -> None:
    """LoadCredential=password_file:... under DynamicUser: the file root keeps 0600 is
    unreadable; the credential's copy is read instead (and a key credential likewise)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "password_file").write_text("from-systemd\n")
    (creds / "key").write_text("KEY")
    conf = write(tmp_path, "[registry]\nuser = mgr\npassword_file = /nonexistent/pw\n"
                           "key = /nonexistent/mgr.key\n")
    cfg = load(str(conf), env={**env, "CREDENTIALS_DIRECTORY": str(creds)},
               default_file=absent)
    assert (cfg.password, cfg.password_file) == ("from-systemd", str(creds / "password_file"))
    assert cfg.key == str(creds / "key") and cfg.cert is None
    msg = config_error(str(conf), env=env, default_file=absent)  # outside systemd
    assert msg == "setting 'password_file': cannot read it (No such file or directory)"


def test_credentials_lose_to_flags_and_only_named_files_count(tmp_path: Path, env: dict,
                                                              absent: Path) -> None:
    creds = tmp_path / "creds"
    (creds / "password").mkdir(parents=True)  # not a file setting: ignored
    (creds / "password_file").write_text("cred")
    flag = tmp_path / "flag.pw"
    flag.write_text("flag")
    cfg = load(overrides={"user": "u", "password_file": str(flag)}, default_file=absent,
               env={**env, "CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.password == "flag"
    assert credentials({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) == {}
    assert credentials({}) == {}
