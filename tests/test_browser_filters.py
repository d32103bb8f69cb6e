"""Filters in a real browser: a deep link starts a feature visualization, the live
preview updates, Stop interrupts it, and the page keeps working."""
import re

import pytest

from .browser import browser, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path / "cache"))  # the server inherits it
    return tmp_path / "cache" / "featurevis"


def test_render_preview_and_stop(cache_env, browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # 1024 steps at 256x256 (the page's largest settings): about a minute on an idle 2-core
    # machine and longer on a busy one, so the run cannot end before the Stop click below.
    page.goto(f"{server.url}/filters?view=unit&layer=_blocks.3._swish%231&channel=5&size=256&steps=1024")
    render = page.get_by_role("button", name="Render")
    expect(render).to_be_visible(timeout=90_000)
    wait_idle(page)
    render.click()
    # Wait for a state that lasts the whole run, not for one step: the live preview's caption
    # reads "Step N of 1024" from the first preview (step 16) until the run ends.
    preview = page.get_by_test_id("stImageCaption").filter(has_text=re.compile(r"Step \d+ of 1024"))
    expect(preview.first).to_be_visible(timeout=120_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("Stopped: the image after step")).to_be_visible(timeout=60_000)
    wait_idle(page)
    expect(page.get_by_role("button", name="Render")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    assert not cache_env.exists() or not list(cache_env.glob("*.npz"))  # a stopped run is not cached
