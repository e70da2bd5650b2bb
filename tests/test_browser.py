"""End to end: `streamlit run dashboard/app.py` in a real headless Chromium (Debian's, via Playwright).

Waits for both UMAP panels and the accuracy chart, saves a screenshot under the test's tmp dir
(and copies it to $CLIP_ICM_SCREENSHOT when that is set: that is how docs/dashboard.png is made)
and asserts that no error box is shown. Runs the default demo (toy-clip is committed).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PLOT_TITLES = ("Full CLIP space", "Invariant space", "Accuracy per domain")

# CI (CI=true) must run this test: .ci/run installs Debian's chromium there, and a missing one fails loudly.
# Elsewhere (a laptop without root, say) a missing browser skips it with how to get one.
if not Path(CHROMIUM).exists() and os.environ.get("CI", "").lower() != "true":
    pytest.skip(f"no browser at {CHROMIUM}: install Debian's chromium (sudo apt-get install chromium) "
                "to run the end-to-end dashboard test", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log.read_text() if log is not None else ""
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}\n{output}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url}")


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        # A file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks the server.
        cwd=ROOT, env=env, stdout=(tmp_path / "streamlit.log").open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, proc, log=tmp_path / "streamlit.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dashboard_in_chromium_shows_both_layouts_and_the_accuracy_chart(server, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "dashboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1600, "height": 2000})
        page.goto(server + "/explorer")  # "/" opens the Story
        for title in PLOT_TITLES:
            page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for(timeout=300_000)
        page.get_by_text("Which class becomes which").first.wait_for(timeout=120_000)
        page.wait_for_function("document.querySelectorAll('[data-testid=\"stSpinner\"]').length === 0",
                               timeout=120_000)
        page.wait_for_timeout(1500)  # let plotly finish drawing the markers
        errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
        assert errors.count() == 0, errors.all_inner_texts()
        # A fresh server warms UMAP up in a thread while the page loads: its warnings are not the page's.
        boxes = page.locator('[data-testid="stAlertContentWarning"]')
        assert boxes.count() == 0, boxes.all_inner_texts()
        assert page.locator(".js-plotly-plot").count() >= 4
        assert page.get_by_text("no target label").count() >= 1  # the first screen says what chose K and lam
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLIP_ICM_SCREENSHOT"):
        shutil.copy(shot, os.environ["CLIP_ICM_SCREENSHOT"])
