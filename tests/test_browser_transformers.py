"""A vision transformer in a real browser: click a patch, see where it looks."""
import os
import re
from pathlib import Path

import pytest

from .browser import browser, click_chart, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_click_a_patch_and_see_its_attention(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{server.url}/saliency?model=torchvision:vit_b_16@random&view=Attention+%28transformers%29"
              "&block=3&head=mean&patch=cls&sample=cat")
    expect(page.get_by_text("where the class token looks")).to_be_visible(timeout=180_000)
    wait_idle(page)
    click_chart(page, page.locator(".st-key-att_grid"), -0.2, 0.3)
    caption = page.get_by_text(re.compile(r"where the patch \(\d+, \d+\) looks"))
    expect(caption).to_be_visible(timeout=60_000)
    wait_idle(page)
    i, j = re.search(r"patch \((\d+), (\d+)\)", caption.text_content()).groups()
    assert 0 <= int(i) < 14 and 0 <= int(j) < 14
    assert f"patch={i}%2C{j}" in page.url or f"patch={i},{j}" in page.url
    expect(page.get_by_test_id("stException")).to_have_count(0)
    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "vit-attention.png"), full_page=True)
