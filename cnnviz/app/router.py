"""Every page starts with `selection()`: the model and image chosen in the sidebar.

Streamlit treats a folder named `pages/` as an old-style multipage app until
`st.navigation` has run once in the process: the first request of a fresh server
(a bookmarked deep link) and every AppTest rerun execute the page file alone, without
app.py. Then this runs app.py in its place, which registers the real navigation and
renders the same page again with the shared sidebar.
"""
from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st

APP = Path(__file__).resolve().parents[2] / "app.py"


def _router_skipped() -> bool:
    from streamlit.runtime.pages_manager import PagesManager

    return bool(getattr(PagesManager, "uses_pages_directory", False))


def selection():
    """The sidebar's current `Selection`, rendering through app.py if it was skipped. It
    lives for this script run only (never in session_state: see sidebar.Selection)."""
    if _router_skipped():
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()
    from cnnviz.app.sidebar import current

    return current()
