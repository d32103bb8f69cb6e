"""Waiting for a Streamlit page to settle, for the browser tests and the server benches
(no pytest here, so bench scripts can import it)."""
import time

# Streamlit marks its root element with `data-test-script-state` ("running" during a run,
# "notRunning" after it); the status widget is not drawn with `toolbarMode = "minimal"`.
STATE_JS = "() => document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState"


class Settle:
    """The rule both waits share: the script state must stay "notRunning" for `calm`
    seconds, so a rerun that a click has just asked for is not missed."""

    def __init__(self, timeout: float, calm: float):
        self.timeout, self.calm = timeout, calm
        self.deadline = time.monotonic() + timeout
        self.since = None

    def settled(self, state) -> bool:
        now = time.monotonic()
        if state != "notRunning":
            self.since = None
        elif self.since is None:
            self.since = now
        elif now - self.since >= self.calm:
            return True
        if now > self.deadline:
            raise AssertionError(f"the app was still running after {self.timeout:.0f} s (script state {state!r})")
        return False


def wait_idle(page, timeout: float = 120.0, calm: float = 0.5):
    """Wait until no script run is going on (Playwright's sync API)."""
    settle = Settle(timeout, calm)
    while not settle.settled(page.evaluate(STATE_JS)):
        page.wait_for_timeout(100)


async def wait_idle_async(page, timeout: float = 120.0, calm: float = 0.5):
    """`wait_idle` for Playwright's async API (bench/bench_load.py)."""
    settle = Settle(timeout, calm)
    while not settle.settled(await page.evaluate(STATE_JS)):
        await page.wait_for_timeout(100)
