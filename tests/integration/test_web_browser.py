"""``gridtool web serve`` in a real browser (Debian's headless Chromium, driven by
Playwright) on a lab: the tables match the CLI's ``--json``, guest names are text, an
unreachable registry shows a banner and the page follows again by itself, and a power-off
shows the host lost and its HA guest running elsewhere, all without a reload.

One lab, one server and one browser page for the module; the tests run in file order
(the power-off last: it changes the lab for good)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.proxy import CuttableProxy
from tests.harness.testbed import terminate

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("GRIDTOOL_WEB_SHOTS", "")) if os.environ.get(
    "GRIDTOOL_WEB_SHOTS") else None  # also keep the screenshots there (docs/img)
NAMES = ("<script>alert(1)</script>", "<img src=x onerror=alert(2)>")


def gridtool(lab_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridtool", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "GRIDTOOL_LAB_DIR": str(lab_dir)})


def cli_json(lab_dir: Path, *args: str) -> Any:
    done = gridtool(lab_dir, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    lab_dir = tmp_path_factory.mktemp("weblab") / "lab"
    up = gridtool(lab_dir, "lab", "up", "--hosts", "2", "--guests", "2", "--ttl", "3")
    try:
        assert up.returncode == 0, up.stderr
        yield lab_dir
    finally:
        down = gridtool(lab_dir, "lab", "down")
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def proxy(lab: Path) -> Iterator[CuttableProxy]:
    """Between the web server and the lab's etcd: cut it to make the registry unreachable."""
    from gridtool.config import load

    p = CuttableProxy(load(str(lab / "gridtool.conf"), {}).endpoints[0])
    yield p
    p.close()


@pytest.fixture(scope="module")
def server(lab: Path, proxy: CuttableProxy) -> Iterator[str]:
    """``gridtool web serve`` on a free port, reading as the read-only viewer user."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtool", "--config", str(lab / "gridtool.conf"),
         "--endpoints", proxy.endpoint, "web", "serve", "--listen", "127.0.0.1:0",
         "--user", "gridtool-monitor",
         "--password-file", str(lab / "credentials" / "gridtool-monitor.password")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GRIDTOOL_LAB_DIR": str(lab)})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed once it listens
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        yield url
    finally:
        terminate(proc)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


@pytest.fixture(scope="module")
def page(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium page on the view; it must never reload (``window.loadedOnce``), and no
    script of a guest's name may run (``dialogs``)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
                args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000})
        except Error as exc:
            pytest.fail(f"headless Chromium ({CHROMIUM}) did not start: {exc}")
        try:
            tab = browser.new_page()
            tab.dialogs = []
            tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
            tab.goto(server)
            tab.wait_for_selector("#live.on")
            tab.evaluate("window.loadedOnce = true")
            yield tab
            assert tab.evaluate("window.loadedOnce") is True  # no reload happened
            assert tab.dialogs == []
        finally:
            browser.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if SHOTS:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def rows(page: Any, table: str, *attrs: str) -> list[tuple[str, ...]]:
    """(the given data- attributes, the first cell's text) of each row of a table."""
    return page.eval_on_selector_all(
        f"#{table} tbody tr",
        "(trs, attrs) => trs.map(tr => [...attrs.map(a => tr.dataset[a]), "
        "tr.cells[0].textContent])", list(attrs))


def wait_for(page: Any, script: str, arg: Any = None, timeout: float = 10.0) -> None:
    """Wait (deadline ``timeout``) until ``script`` is true on the page; a timeout fails
    with what the page shows."""
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_function(script, arg=arg, timeout=timeout * 1000)
    except PageTimeout:
        shown = "\n".join(page.inner_text(f"#{part}") for part in ("banner", "hosts", "guests"))
        pytest.fail(f"not within {timeout} s: {script}\nthe page shows:\n{shown}")


def test_the_tables_show_what_the_cli_shows(lab: Path, page: Any, tmp_path: Path) -> None:
    hosts = cli_json(lab, "host", "list")["hosts"]
    guests = cli_json(lab, "guest", "list")["guests"]
    fences = cli_json(lab, "fence", "list")["fences"]
    revision = int(page.evaluate("document.body.dataset.revision"))
    assert revision > 0
    assert sorted(rows(page, "host-table", "host", "state")) == sorted(
        [h["name"], "draining" if h["draining"] else "up", h["name"]] for h in hosts)
    running = page.eval_on_selector_all(
        "#host-table tbody tr", "trs => trs.map(tr => Number(tr.cells[3].textContent))")
    assert running == [h["running_guests"] for h in sorted(hosts, key=lambda h: h["name"])]
    assert sorted(rows(page, "guest-table", "guest", "host", "state")) == sorted(
        [g["name"], g["host"], g["state"], g["name"]] for g in guests)
    assert sorted(r[0] for r in rows(page, "fence-table", "volume")) == sorted(
        f["volume"] for f in fences)
    # a filter is applied on the server: one host's guests only
    page.select_option("#guest-filters select[name=host]", "hv1")
    wait_for(page, "() => [...document.querySelectorAll('#guest-table tbody tr')]"
                   ".every(tr => tr.dataset.host === 'hv1')")
    assert sorted(r[0] for r in rows(page, "guest-table", "guest")) == sorted(
        g["name"] for g in guests if g["host"] == "hv1")
    assert "host=hv1" in page.url
    page.select_option("#guest-filters select[name=host]", "")
    shot(page, tmp_path, "web-fleet")


@pytest.fixture(scope="module")
def admin(lab: Path) -> Iterator[Any]:
    """The lab's registry as its admin (to write records a test needs)."""
    from gridtool.config import load
    from gridtool.registry.etcdstore import EtcdStore
    from gridtool.registry.fleet import Registry

    cfg = load(str(lab / "gridtool.conf"), {})
    store = EtcdStore(cfg)
    yield Registry(store, cfg.keys)
    store.close()


def guest_records(*names: str) -> list[Any]:
    from gridtool.registry.model import GuestRecord

    # on a host no agent owns (an agent removes records of guests its libvirt lacks)
    return [GuestRecord(f"00000000-0000-4000-8000-{i:012d}", name, "ghost", "shutoff", 1, 64,
                        time.time()) for i, name in enumerate(names)]


SHOWN = ("names => names.every(n => [...document.querySelectorAll('#guest-table tbody tr')]"
         ".some(tr => tr.dataset.guest === n))")
GONE = ("names => ![...document.querySelectorAll('#guest-table tbody tr')]"
        ".some(tr => names.includes(tr.dataset.guest))")


def test_guest_names_render_as_text(admin: Any, page: Any) -> None:
    """Names are user input: written straight to the registry, they show as the very text
    (no element made of them, no script run), and leave the page when removed."""
    records = guest_records(*NAMES)
    try:
        for rec in records:
            admin.put_guest(rec)
        wait_for(page, SHOWN, list(NAMES))
        cells = page.eval_on_selector_all("#guest-table tbody tr td:first-child",
                                          "tds => tds.map(td => td.textContent)")
        assert set(NAMES) <= set(cells)
        assert page.eval_on_selector_all("#guest-table script, #guest-table img",
                                         "found => found.length") == 0
        assert page.dialogs == []
    finally:
        for rec in records:
            admin.delete_guest(rec.host, rec.uuid)
    wait_for(page, GONE, list(NAMES))


def test_an_unreachable_registry_shows_a_banner_then_the_page_follows_again(
        admin: Any, page: Any, proxy: CuttableProxy, tmp_path: Path) -> None:
    proxy.cut()
    try:
        wait_for(page, "() => document.body.dataset.registry === 'down' && document"
                       ".querySelector('#banner').textContent.includes('Registry unreachable')",
                 timeout=30)
        shot(page, tmp_path, "web-registry-down")
        [record] = guest_records("made-while-cut")
        admin.put_guest(record)  # the server cannot see it yet
    finally:
        proxy.heal()
    try:
        wait_for(page, "() => document.body.dataset.registry === 'up'"
                       " && document.querySelector('#banner').hidden", timeout=30)
        wait_for(page, SHOWN, ["made-while-cut"])  # read afresh once back
    finally:
        admin.delete_guest(record.host, record.uuid)
    wait_for(page, GONE, ["made-while-cut"])  # and followed live again


def test_a_power_off_shows_the_host_lost_and_its_ha_guest_running_elsewhere(
        lab: Path, page: Any, tmp_path: Path) -> None:
    done = gridtool(lab, "guest", "set", "hv2-vm2", "--ha", "on")
    assert done.returncode == 0, done.stderr
    assert gridtool(lab, "lab", "power-off", "hv2").returncode == 0
    wait_for(page, "() => document.querySelector('#host-table tr[data-host=hv2]')"
                   "?.dataset.state === 'lost'", timeout=30)
    wait_for(page, "() => document.querySelector('#guest-table tr[data-guest=hv2-vm1]')"
                   "?.dataset.state === 'unknown'")
    shot(page, tmp_path, "web-host-lost")
    wait_for(page, "() => [...document.querySelectorAll('#guest-table tbody tr')].some("
                   "tr => tr.dataset.guest === 'hv2-vm2' && tr.dataset.host !== 'hv2'"
                   " && tr.dataset.state === 'running')", timeout=60)
    shot(page, tmp_path, "web-failover")
    moved = [g for g in cli_json(lab, "guest", "list")["guests"] if g["name"] == "hv2-vm2"
             and g["state"] == "running"]
    assert [g["host"] for g in moved] == ["hv1"]
