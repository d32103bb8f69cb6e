"""Page state that lives in the URL (`st.query_params`), so a bookmark reproduces a view."""
import streamlit as st


def restore(key: str, param: str, valid, cast=str) -> None:
    """On a page's first run, take widget `key`'s value from URL `param` if it is valid."""
    ss, qp = st.session_state, st.query_params
    if key in ss or param not in qp:
        return
    try:
        value = cast(qp[param])
    except ValueError:
        return
    if valid(value):
        ss[key] = value
