"""Lecture mode: big type for a projector (the CNN limits and Convolution pages)."""
import streamlit as st

_CSS = ("<style>.stMainBlockContainer .stMarkdown p, .stMainBlockContainer .stAlert p {font-size: 1.6rem "
        "!important; line-height: 1.45;} .stMainBlockContainer h1 {font-size: 3.2rem !important;} "
        ".stMainBlockContainer h2 {font-size: 2.4rem !important;} "
        ".stMainBlockContainer [data-testid='stCaptionContainer'] p {font-size: 1.3rem !important;}</style>")


def is_on(text) -> bool:
    """A link's `lecture=` value read as a switch."""
    return str(text).lower() in ("1", "true", "on", "yes")


def big_type() -> None:
    """Enlarge the page's text for the back of the room (this run only)."""
    st.html(_CSS)
