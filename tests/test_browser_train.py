"""The Train page in a real browser (worker processes, as served): train one epoch and see
the curve and the result."""
import os
from pathlib import Path

import pytest

from .browser import browser, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_train_one_epoch_and_see_the_curve(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{server.url}/train?epochs=1&seed=2")
    expect(page.get_by_text("Press Start")).to_be_visible(timeout=120_000)
    wait_idle(page)
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("Test accuracy:")).to_be_visible(timeout=180_000)  # the run's end, not a moment of it
    wait_idle(page)
    curves = page.locator(".st-key-tr_curves")
    expect(curves.locator(".scatterlayer .trace")).to_have_count(3)  # loss, train and test accuracy
    expect(curves.locator(".scatterlayer .point")).to_have_count(3)  # one epoch: one point each
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()
    # draw a "1" on the canvas: the network answers and every layer's maps appear
    expect(page.get_by_text("Nothing drawn yet")).to_be_visible()
    pad = page.locator(".st-key-tr_canvas canvas").last
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] * 0.85, steps=12)
    page.mouse.up()
    expect(page.get_by_text("Nothing drawn yet")).to_have_count(0, timeout=60_000)
    expect(page.get_by_text("pool2: 16 x 5 x 5")).to_be_visible(timeout=60_000)
    expect(page.locator(".st-key-tr_drawn_bars .cnnviz-topk-row")).to_have_count(10)  # every digit, most likely first
    expect(page.get_by_test_id("stException")).to_have_count(0)
    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "train.png"), full_page=False)
