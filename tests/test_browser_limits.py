"""CNN limits in a real browser: hover and click a sweep point, then lecture mode and the next demo."""
import os
import re
from pathlib import Path

import pytest

from .browser import browser, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_click_a_point_then_lecture_mode(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server.url}/limits?sample=cat&demo=flip")
    expect(page.get_by_text("Mirror (handedness): 0")).to_be_visible(timeout=120_000)
    wait_idle(page)
    chart = page.locator(".st-key-lim_chart")
    chart.scroll_into_view_if_needed()
    # the mirrored point: second of two, on the upper (probability) plot
    point = chart.locator(".scatterlayer .trace").first.locator(".point").nth(1)
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y + 20)
    page.mouse.move(x, y, steps=6)  # Plotly only clicks what it hovers
    expect(page.locator(".hovertext").first).to_contain_text("top-1:", timeout=10_000)
    page.mouse.click(x, y)
    expect(page.get_by_text("Mirror (handedness): 1")).to_be_visible(timeout=30_000)
    expect(page).to_have_url(re.compile(r"demo=flip.*point=1"), timeout=30_000)

    page.locator(".st-key-lim_lecture").get_by_text("Lecture mode").click()
    expect(page.get_by_role("heading", name="CNN limits: Mirror (handedness)")).to_be_visible(timeout=30_000)
    expect(page).to_have_url(re.compile(r"lecture=1"), timeout=30_000)
    page.get_by_role("button", name="Next demo").click()
    expect(page.get_by_role("heading", name="CNN limits: Brightness")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Smallest flip")).to_be_visible(timeout=120_000)
    expect(page).to_have_url(re.compile(r"demo=brightness.*lecture=1"), timeout=30_000)
    wait_idle(page)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "limits-lecture.png"), full_page=False)
