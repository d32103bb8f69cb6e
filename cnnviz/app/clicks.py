"""Clicks on Plotly charts (`st.plotly_chart(..., on_select="rerun", key=...)`)."""
import streamlit as st


def new_click(key: str):
    """The `customdata` of the point last clicked on chart `key`, once per click; else None.

    Read it at the top of a page, before the widgets it may set are drawn (a selection
    stays in session state across reruns, so a remembered click must not apply again).
    Single values come back bare, not as a one-element list."""
    ss = st.session_state
    points = ((ss.get(key) or {}).get("selection") or {}).get("points") or []
    if not points or ss.get(key + "_seen") == repr(points):
        return None
    ss[key + "_seen"] = repr(points)
    data = points[0].get("customdata")
    return data[0] if isinstance(data, list) and len(data) == 1 else data
