"""The web view in a real browser: Debian's Chromium, headless, driven by playwright, against
``python -m hil.web`` serving a real history while the test writes to it as a bench would.

On a failure the page's screenshot is saved (under ``test-artifacts/``, or ``HIL_TEST_ARTIFACTS``)
and its path given in the failure message. Without Chromium the tests skip, except under CI, where
``.ci/run`` installs it and a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import web_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parent.parent
if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("Chromium is not installed (.ci/run installs Debian's chromium)", pytrace=False)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
# As root in a container, without a sandbox; no background traffic to hosts this network does not reach.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The history, and the URL of ``python -m hil.web`` serving it (read-only, on a free port)."""
    history = web_data.build(tmp_path_factory.mktemp("browser"))
    server = subprocess.Popen([sys.executable, "-m", "hil.web", "--db", history["url"], "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    line = server.stdout.readline()
    found = re.search(r"at (http://\S+)", line)
    if not found:
        server.kill()
        pytest.fail(f"hil.web did not start: {line}{server.stdout.read()}")
    yield {**history, "base": found.group(1).rstrip("/")}
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (make setup installs the dev extra)", pytrace=False)
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh page that records console errors and uncaught exceptions, and leaves a screenshot when
    its test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.problems = []
    tab.on("console", lambda m: tab.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    yield tab
    context.close()


@contextmanager
def screenshot_on_failure(tab, name: str):
    try:
        yield
    except BaseException as exc:
        folder = Path(os.environ.get("HIL_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        try:
            tab.screenshot(path=str(path), full_page=True)
            where = f"screenshot: {path}"
        except Exception as shot:      # noqa: BLE001 - the original failure matters more
            where = f"no screenshot ({shot})"
        raise AssertionError(f"{exc}\n{where}\nconsole: {tab.problems}") from exc


def test_pages_load_without_console_errors_and_draw_their_plots(page, served):
    with screenshot_on_failure(page, "pages"):
        page.goto(f"{served['base']}/runs")
        assert page.locator("table.runs tbody tr").count() == 5
        page.goto(f"{served['base']}/arrays/{web_data.ARRAY}")
        # plotly drew every figure (an SVG per plot), from the copy the view serves
        for plot in ("map-yield", "map-window", "map-stuck", "loop-plot"):
            page.locator(f"#{plot} .main-svg").first.wait_for(timeout=15_000)
        page.click("#compare-models button")
        page.wait_for_url(re.compile(r"/models\?"))
        assert page.locator("table.models tbody tr").count() > 5
        page.goto(f"{served['base']}/runs/1")
        page.click("a.report-link")
        page.locator("article.report img").first.wait_for()
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.problems == []


def test_a_running_run_advances_on_screen(page, served):
    with screenshot_on_failure(page, "running"):
        web_data.advance(served["url"], served["running"], 3)
        page.goto(f"{served['base']}/runs/{served['running']}")
        bar = page.locator("#step-progress")
        assert bar.get_attribute("value") == "0.1000"
        web_data.advance(served["url"], served["running"], 12)
        # the page re-reads its live part by itself: no reload
        page.wait_for_function("document.querySelector('#step-progress').value > 0.39", timeout=10_000)
        assert "12/30 epochs" in page.inner_text("#live")
        page.goto(f"{served['base']}/runs")
        row = page.locator(f"tr[data-run='{served['running']}'] progress")
        web_data.advance(served["url"], served["running"], 24)
        page.wait_for_function(f"document.querySelector(\"tr[data-run='{served['running']}'] progress\").value > 0.79",
                               timeout=10_000)
        assert row.count() == 1 and page.problems == []


def test_a_failed_run_shows_its_error(page, served):
    with screenshot_on_failure(page, "failed"):
        page.goto(f"{served['base']}/runs/{served['failed']}")
        assert page.inner_text("#run-status") == "failed"
        assert page.inner_text("#run-error") == web_data.FAILURE
        assert page.inner_text("#resume-hint") == f"python -m hil.run --resume {served['failed']}"
        page.goto(f"{served['base']}/runs/999999")
        assert "there is no run 999999" in page.inner_text("#page-error")
        # a 404 is logged by Chromium as a failed resource: that one is expected, nothing else
        assert all("404" in p for p in page.problems)


def test_a_click_on_a_device_map_opens_that_devices_history(page, served):
    with screenshot_on_failure(page, "device-click"):
        page.goto(f"{served['base']}/arrays/{web_data.ARRAY}")
        cells = page.locator("#map-window .nsewdrag").first
        cells.wait_for(timeout=15_000)
        box = cells.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_url(re.compile(r"/device\?row=\d+&col=\d+"), timeout=10_000)
        assert page.locator("#device-history tbody tr").count() >= 2
        page.locator(".plot .main-svg").first.wait_for()
        assert page.problems == []
