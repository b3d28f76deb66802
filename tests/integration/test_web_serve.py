"""``gridtool web serve`` over HTTPS with basic auth and with client certificates, on the
session's etcd (no browser: urllib with the CA ``registry certs`` made)."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gridtool.auth.certs import make_certs
from gridtool.config import Config
from tests.harness.testbed import credential_env, terminate


@contextmanager
def serving(cfg: Config, *options: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtool", "--endpoints", ",".join(cfg.endpoints),
         "--prefix", cfg.prefix, "web", "serve", "--listen", "127.0.0.1:0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**credential_env(), "PATH": "/usr/bin:/bin", "GRIDTOOL_LAB_DIR": "/nonexistent"})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:"), proc.stderr.read()
        yield url
    finally:
        terminate(proc)
    assert proc.returncode == 0


def fetch(url: str, context: ssl.SSLContext, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=20) as response:
            json.loads(response.read())
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("webtls")
    make_certs(directory, ["viewer"])
    return directory


def test_https_with_basic_auth(cfg: Config, tls: Path, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("ann:s3cret\n")
    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    with serving(cfg, "--tls-cert", str(tls / "server.crt"), "--tls-key",
                 str(tls / "server.key"), "--basic-auth-file", str(users)) as url:
        assert fetch(url + "api/fleet", context) == 401
        assert fetch(url + "api/fleet", context, "ann:wrong") == 401
        assert fetch(url + "api/fleet", context, "ann:s3cret") == 200


def test_https_with_client_certificates(cfg: Config, tls: Path) -> None:
    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    with serving(cfg, "--tls-cert", str(tls / "server.crt"), "--tls-key",
                 str(tls / "server.key"), "--client-ca", str(tls / "ca.crt")) as url:
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            fetch(url + "api/fleet", context)  # no certificate: the handshake fails
        context.load_cert_chain(str(tls / "viewer.crt"), str(tls / "viewer.key"))
        assert fetch(url + "api/fleet", context) == 200
