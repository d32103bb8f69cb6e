"""The Convolution page in a real browser: click a unit and see its worked sum checked
against the recorded activation; play the playground's window to its last step."""
import os
import re
from pathlib import Path

import pytest

from .browser import browser, click_chart, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

VERDICT = re.compile(r"Recorded by the network .* unit \((\d+), (\d+)\), channel 4\)")


def test_click_a_unit_and_see_its_worked_sum(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(f"{server.url}/convolution?cv_view=One+unit+of+the+network&layer=_blocks.2._expand_conv"
              "&y=5&x=3&channel=4&sample=cat")
    success = page.get_by_test_id("stAlertContentSuccess")
    expect(success).to_contain_text("unit (5, 3), channel 4)", timeout=120_000)
    expect(page.get_by_text("plus the bias")).to_be_visible()
    wait_idle(page)
    click_chart(page, page.locator(".st-key-cv_map"), 0.25, 0.75)  # lower right of the map: far from (5, 3)
    expect(success).not_to_contain_text("unit (5, 3),", timeout=60_000)
    wait_idle(page)
    i, j = VERDICT.search(success.text_content()).groups()
    assert (int(i), int(j)) != (5, 3)
    expect(page).to_have_url(re.compile(rf"y={i}&x={j}|x={j}.*y={i}"), timeout=30_000)
    expect(success).to_contain_text("relative difference")  # a success box: the sums agree
    expect(page.get_by_test_id("stException")).to_have_count(0)
    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "convolution-unit.png"), full_page=False)


def test_play_steps_the_window_to_the_last_unit(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server.url}/convolution?size=7&kernel=3&pad=0&stride=2")
    chart = page.locator(".st-key-cv_play")
    title = chart.locator(".gtitle")
    expect(title).to_contain_text("unit (0, 0):", timeout=120_000)
    wait_idle(page)
    chart.scroll_into_view_if_needed()
    chart.locator(".updatemenu-button").filter(has_text="Play").click()
    # nine frames, 0.45 s apart: the animation ends on the last unit and stays there
    expect(title).to_contain_text("unit (2, 2):", timeout=30_000)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "convolution-playground.png"), full_page=False)
