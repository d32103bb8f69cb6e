"""The Adversarial page in a real browser: a bookmarked attack, the PNG offer, then the budget sweep."""
import os
import re
from pathlib import Path

import pytest

from .browser import browser, expect, server, wait_idle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_bookmarked_attack_then_budget_sweep(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{server.url}/adversarial?sample=coffee&attack=fgsm&eps=2&sweep=4")
    expect(page.get_by_text(re.compile(r"FGSM at 2/255 turned espresso"))).to_be_visible(timeout=120_000)
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"Perturbation, amplified x64 around grey"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Control, random signs of the same size"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"Saved as an 8-bit PNG, reloaded and classified again"))).to_be_attached()
    expect(page).to_have_url(re.compile(r"attack=fgsm.*eps=2|eps=2.*attack=fgsm"))
    shots = Path(os.environ.get("CNNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "adversarial.png"), full_page=True)

    page.get_by_role("tab", name="Budget sweep").click()
    expect(page.get_by_role("tab", name="Budget sweep")).to_have_attribute("aria-selected", "true")
    wait_idle(page)  # switching a tracked tab reruns the page
    page.get_by_role("button", name="Run the budget sweep").click()
    # the sweep's end (a heavy job at nice 19 in a worker): minutes on a machine busy with other work
    expect(page.get_by_text(re.compile(r"Smallest budget that changes the decision: \d+/255"))).to_be_visible(
        timeout=240_000)
    expect(page.locator(".st-key-adv_sweep_chart").get_by_text(re.compile(r"flips at \d+/255"))).to_be_visible()
    expect(page.get_by_role("tab", name="Budget sweep")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tab", name="Download (8-bit PNG)")).to_be_visible()
    page.get_by_role("tab", name="Download (8-bit PNG)").click()
    expect(page.get_by_role("button", name="Adversarial image (PNG)")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
