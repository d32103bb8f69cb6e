"""The real thing: `streamlit run` on 127.0.0.1, driven by Playwright in Debian's Chromium."""
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from cnnviz.images import load_image
from cnnviz.predict import predict

from .browser import browser, expect, image_input, server, sidebar_says, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


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
    bars = page.get_by_test_id("stMain").locator(".cnnviz-topk-row")  # the top-5, most likely first
    expect(bars).to_have_count(5)
    expect(bars.first).to_contain_text(f"{expected}: ")

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


def test_layer_advisor_in_the_browser(browser, server):
    """A bookmark opens the sweep with the advisor on; its best layer becomes the target layer in one click."""
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    # the first stage's layer, sharp but literal: on this image the advisor prefers a later one
    page.goto(f"{server.url}/saliency?sample=coffee&method=gradcam&layer=_blocks.1._swish&view=Layer+sweep&advise=1")
    best = page.get_by_text(re.compile(r"^Best here: ")).first
    expect(best).to_be_visible(timeout=300_000)  # a heavy job, in a worker at nice 19
    layer = best.locator("code").first.inner_text()
    assert layer != "_blocks.1._swish"
    expect(page.locator(".st-key-sal_advice .js-plotly-plot")).to_have_count(1)
    expect(page.get_by_text(f"★ {layer} (")).to_be_visible()  # the starred overlay
    page.get_by_role("button", name=f"Use {layer} for Grad-CAM").click()
    expect(page.locator(".st-key-sal_layer").get_by_role("combobox")).to_have_value(layer, timeout=60_000)
    expect(page.get_by_role("button", name=f"Use {layer} for Grad-CAM")).to_be_disabled()
    expect(page.get_by_test_id("stException")).to_have_count(0)
