"""Shared pieces of the browser tests: a `streamlit run` server on 127.0.0.1 killed by its
process group, and Playwright driving Debian's Chromium. Test modules import the fixtures."""
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

from .conftest import ROOT, free_port
from .idle import wait_idle  # noqa: F401 (re-exported for the test modules)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


class Server:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(os.environ["TORCH_HOME"], f"streamlit-{self.port}.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port),
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "CNNVIZ_JOB_PROCESSES"},  # as served: workers
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).read() == b"ok":
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("streamlit did not start")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group, never by name
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def click_chart(page, chart, dx: float, dy: float) -> None:
    """Click a square Plotly chart (a map, drawn centred in its box) at `dx` box heights
    right of the box's centre and `dy` box heights below its top. Plotly only
    clicks what it hovers: scroll it into view, move onto the point in a few steps, wait
    for the hover label, then click. Read what was clicked from the page afterwards (a
    label read while Plotly still moves it may name the previous point)."""
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    x, y = box["x"] + box["width"] * 0.5 + box["height"] * dx, box["y"] + box["height"] * dy
    page.mouse.move(x + 30, y + 30)
    page.mouse.move(x, y, steps=6)
    expect(page.locator(".hovertext").first).to_be_visible(timeout=10_000)
    page.mouse.click(x, y)


@pytest.fixture(scope="module")
def browser():
    # Skipped here rather than at import, so `-m "not browser"` deselects these modules
    # cleanly; on CI a missing chromium fails instead of skipping.
    if not CHROMIUM and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def sidebar_says(page):
    return page.get_by_test_id("stSidebar").get_by_test_id("stMetricValue")


def image_input(page):
    return page.locator(".st-key-upload").get_by_test_id("stFileUploaderDropzoneInput")
