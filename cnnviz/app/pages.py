"""The page list: one place that names every page, for the router and for links."""
import streamlit as st
from streamlit.navigation.page import StreamlitPage


def pages() -> list[StreamlitPage]:
    """Fresh page objects, for one script run. Never share them between runs: each
    StreamlitPage carries a call-once flag that `st.navigation` sets and `page.run()`
    clears, so with one module-level list two sessions switching pages at the same time
    raced on it ("This page cannot be called directly": 20 of 30 sessions in bench_load)."""
    return [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/convolution.py", title="Convolution", icon=":material/calculate:"),
        st.Page("pages/activations.py", title="Activations", icon=":material/grid_view:"),
        st.Page("pages/filters.py", title="Filters", icon=":material/filter:"),
        st.Page("pages/receptive_fields.py", title="Receptive fields", icon=":material/center_focus_strong:"),
        st.Page("pages/saliency.py", title="Saliency", icon=":material/local_fire_department:"),
        st.Page("pages/adversarial.py", title="Adversarial", icon=":material/bug_report:"),
        st.Page("pages/limits.py", title="CNN limits", icon=":material/warning:"),
        st.Page("pages/train.py", title="Train a CNN", icon=":material/model_training:"),
    ]
