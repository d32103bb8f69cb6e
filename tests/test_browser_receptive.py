"""Receptive fields in a real browser: click a unit on the activation map, see its field on the image."""
import re

import pytest

from .browser import browser, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_click_a_unit_and_see_its_field(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server.url}/receptive_fields?layer=_blocks.8._project_conv&y=6&x=6&sample=cat")
    expect(page.get_by_text("Unit (6, 6) of")).to_be_visible(timeout=120_000)
    wait_idle(page)
    overlay = page.locator(".st-key-rf_image image").first  # the picture inside the Plotly figure
    before = overlay.get_attribute("href")
    chart = page.locator(".st-key-rf_map")
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    x, y = box["x"] + box["width"] * 0.5 - box["height"] * 0.35, box["y"] + box["height"] * 0.15
    page.mouse.move(x + 30, y + 30)
    page.mouse.move(x, y, steps=6)  # Plotly only clicks what it hovers
    expect(page.locator(".hovertext").first).to_contain_text("unit", timeout=10_000)
    i, j = re.search(r"unit \((\d+), (\d+)\)", page.locator(".hovertext").first.text_content()).groups()
    assert (i, j) != ("6", "6")
    page.mouse.click(x, y)
    expect(page.get_by_text(f"Unit ({i}, {j}) of")).to_be_visible(timeout=60_000)
    wait_idle(page)
    expect(page.locator(f'.st-key-rf_image image[href="{before}"]')).to_have_count(0, timeout=30_000)
    expect(page.locator(".st-key-rf_image image")).not_to_have_count(0)
    assert f"y={i}" in page.url and f"x={j}" in page.url
    expect(page.get_by_test_id("stException")).to_have_count(0)
