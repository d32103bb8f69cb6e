"""The page list: one place that names every page, for the router and for links."""
import copy
import functools
from pathlib import Path

import streamlit as st
from streamlit.navigation.page import StreamlitPage
from streamlit.runtime.scriptrunner import get_script_run_ctx

PAGES = (  # file, title, icon; the first is the default
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/convolution.py", "Convolution", ":material/calculate:"),
    ("pages/activations.py", "Activations", ":material/grid_view:"),
    ("pages/filters.py", "Filters", ":material/filter:"),
    ("pages/receptive_fields.py", "Receptive fields", ":material/center_focus_strong:"),
    ("pages/saliency.py", "Saliency", ":material/local_fire_department:"),
    ("pages/adversarial.py", "Adversarial", ":material/bug_report:"),
    ("pages/limits.py", "CNN limits", ":material/warning:"),
    ("pages/train.py", "Train a CNN", ":material/model_training:"),
)


def pages() -> list[StreamlitPage]:
    """Fresh page objects, for one script run. Never share them between runs: each
    StreamlitPage carries a call-once flag that `st.navigation` sets and `page.run()`
    clears, so with one module-level list two sessions switching pages at the same time
    raced on it ("This page cannot be called directly": 20 of 30 sessions in bench_load).
    They are copies of pages made once per app: `st.Page` resolves and stats its file
    each time, two system calls per folder of the path, and on a crowded server each one
    gives up the interpreter lock and waits to take it back (py-spy: ~8% of a crowded
    upload's script-thread samples were in these calls, made twice per run of Home)."""
    ctx = get_script_run_ctx()
    if ctx is None:  # outside a script run (a test): st.Page makes an empty page
        return list(_build())
    return [copy.copy(p) for p in _made(ctx.pages_manager.main_script_parent)]


@functools.cache
def _made(app_folder: Path) -> tuple[StreamlitPage, ...]:
    """The pages of the app in `app_folder`, made once; never handed out (nor run):
    `pages()` copies them."""
    return _build()


def _build() -> tuple[StreamlitPage, ...]:
    return tuple(st.Page(file, title=title, icon=icon, default=i == 0) for i, (file, title, icon) in enumerate(PAGES))
