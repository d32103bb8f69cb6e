"""Waiting for a Streamlit page to settle, for the browser tests and the server benches
(no pytest here, so bench scripts can import it)."""
import time


def wait_idle(page, timeout: float = 120.0, calm: float = 0.5):
    """Wait until no script run is going on. Streamlit marks its root element with
    `data-test-script-state` ("running" during a run, "notRunning" after it); the status
    widget is not drawn with `toolbarMode = "minimal"`. The state must hold for `calm`
    seconds, so a rerun that a click has just asked for is not missed."""
    deadline = time.time() + timeout
    since = None
    while True:
        state = page.evaluate("() => document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState")
        now = time.time()
        if state != "notRunning":
            since = None
        elif since is None:
            since = now
        elif now - since >= calm:
            return
        if now > deadline:
            raise AssertionError(f"the app was still running after {timeout:.0f} s (script state {state!r})")
        page.wait_for_timeout(100)


