"""Filters in a real browser: a deep link starts a feature visualization, the live
preview updates, Stop interrupts it, and the page keeps working."""
import pytest

from .browser import browser, expect, server, wait_idle  # noqa: F401 (fixtures)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path / "cache"))  # the server inherits it
    return tmp_path / "cache" / "featurevis"


def test_render_preview_and_stop(cache_env, browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/filters?view=unit&layer=_blocks.3._swish%231&channel=5&size=64&steps=1024")
    render = page.get_by_role("button", name="Render")
    expect(render).to_be_visible(timeout=90_000)
    wait_idle(page)
    render.click()
    expect(page.get_by_text("Step 32 of 1024").first).to_be_visible(timeout=60_000)  # preview caption, live
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("Stopped: the image after step")).to_be_visible(timeout=60_000)
    wait_idle(page)
    expect(page.get_by_role("button", name="Render")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    assert not cache_env.exists() or not list(cache_env.glob("*.npz"))  # a stopped run is not cached
