"""Receptive fields in a real browser: click a unit on the activation map, see its field on the image."""
import re

import pytest

from .browser import browser, click_chart, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_click_a_unit_and_see_its_field(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server.url}/receptive_fields?layer=_blocks.8._project_conv&y=6&x=6&sample=cat")
    expect(page.get_by_text("Unit (6, 6) of")).to_be_visible(timeout=120_000)
    wait_idle(page)
    overlay = page.locator(".st-key-rf_image image").first  # the picture inside the Plotly figure
    before = overlay.get_attribute("href")
    click_chart(page, page.locator(".st-key-rf_map"), -0.35, 0.15)  # a unit near the top left, not (6, 6)
    expect(page.get_by_text("Unit (6, 6) of")).to_have_count(0, timeout=60_000)
    wait_idle(page)
    caption = page.get_by_text(re.compile(r"Unit \(\d+, \d+\) of"))
    i, j = re.search(r"Unit \((\d+), (\d+)\)", caption.text_content()).groups()
    expect(page.locator(f'.st-key-rf_image image[href="{before}"]')).to_have_count(0, timeout=30_000)
    expect(page.locator(".st-key-rf_image image")).not_to_have_count(0)
    assert f"y={i}" in page.url and f"x={j}" in page.url
    expect(page.get_by_test_id("stException")).to_have_count(0)
