"""The real thing: `streamlit run` on 127.0.0.1, driven by Playwright in Debian's Chromium."""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from cnnviz.images import load_image
from cnnviz.predict import predict

from .conftest import ROOT, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

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


@pytest.fixture(scope="module")
def browser():
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


def wait_idle(page):
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=60_000)


def test_upload_predict_switch_pages_and_back(browser, server, samples, bundled, tmp_path):
    upload = tmp_path / "my_upload.png"
    Image.open(samples["coffee"]).save(upload)
    expected = predict(bundled, load_image(upload), 1)[0].label

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server.url)
    expect(sidebar_says(page)).to_be_visible(timeout=90_000)
    image_input(page).set_input_files(str(upload))
    expect(sidebar_says(page)).to_have_text(expected, timeout=60_000)
    expect(page.get_by_text("Current image: my_upload.png")).to_be_visible()
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(1)

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Activations").click()
    expect(page.get_by_role("heading", name="Activations")).to_be_visible(timeout=30_000)
    wait_idle(page)
    expect(sidebar_says(page)).to_have_text(expected)

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Home").click()
    expect(page.get_by_role("heading", name="Top-5 classes")).to_be_visible(timeout=30_000)
    wait_idle(page)
    expect(sidebar_says(page)).to_have_text(expected)
    expect(page.get_by_text("Current image: my_upload.png")).to_be_visible()
    expect(page.get_by_test_id("stImage").filter(has_text="my_upload.png")).to_have_count(1)
    expect(page.get_by_test_id("stException")).to_have_count(0)

    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "screenshot.png"), full_page=False)
    assert (shots / "screenshot.png").stat().st_size > 10_000


def test_bad_upload_shows_a_message_not_a_traceback(browser, server, tmp_path):
    bad = tmp_path / "broken.jpg"
    buf = io.BytesIO()
    Image.effect_noise((300, 300), 60).convert("RGB").save(buf, "JPEG")
    bad.write_bytes(buf.getvalue()[:2000])
    page = browser.new_page()
    page.goto(server.url)
    expect(sidebar_says(page)).to_be_visible(timeout=90_000)
    before = sidebar_says(page).inner_text()
    image_input(page).set_input_files(str(bad))
    expect(page.get_by_text("broken.jpg is truncated or corrupt")).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(sidebar_says(page)).to_have_text(before)


def test_deep_link_on_a_fresh_server_gets_the_full_app(browser, server):
    """A lecturer's bookmark to a page, as the first request after a restart."""
    page = browser.new_page()
    page.goto(f"{server.url}/activations?sample=rocket")
    expect(page.get_by_role("heading", name="Activations")).to_be_visible(timeout=90_000)
    expect(sidebar_says(page)).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Current image: rocket.jpg")).to_be_visible()
    expect(page.get_by_test_id("stSidebarNav").get_by_role("link", name="Receptive fields")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_click_a_mosaic_tile_to_enlarge_it(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/activations?layer=_blocks.1._swish&sample=cat")
    expect(page.get_by_role("heading", name="Channel 0")).to_be_visible(timeout=90_000)
    wait_idle(page)
    mosaic = page.locator(".st-key-act_mosaic")
    mosaic.scroll_into_view_if_needed()
    box = mosaic.bounding_box()
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.45
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=6)  # Plotly only clicks what it hovers
    expect(page.locator(".hovertext").first).to_contain_text("channel", timeout=10_000)
    hovered = re.search(r"channel (\d+)", page.locator(".hovertext").first.text_content()).group(1)
    page.mouse.click(x, y)
    expect(page.get_by_role("heading", name=f"Channel {hovered}")).to_be_visible(timeout=30_000)
    assert hovered != "0"
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_switch_saliency_method_shows_a_new_overlay(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server.url}/saliency?sample=coffee&method=gradcam")
    expect(page.get_by_text("Grad-CAM for espresso")).to_be_visible(timeout=120_000)
    wait_idle(page)
    before = page.get_by_test_id("stImage").filter(has_text="Map over the network").locator("img").first.get_attribute("src")
    page.locator(".st-key-sal_method").click()
    page.get_by_role("option", name="Vanilla gradients").click()
    expect(page.get_by_text("Vanilla gradients for espresso")).to_be_visible(timeout=60_000)
    wait_idle(page)
    overlays = page.get_by_test_id("stImage").filter(has_text="Map over the network").locator("img")
    expect(overlays.and_(page.locator(f'img[src="{before}"]'))).to_have_count(0, timeout=30_000)  # old one gone
    expect(overlays).not_to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)
