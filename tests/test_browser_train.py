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
    expect(page.get_by_test_id("stException")).to_have_count(0)
    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "train.png"), full_page=False)
