"""Lecture mode: big type for a projector, and tracks walked with Previous / Next (the CNN
limits and Convolution pages)."""
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Track:
    """A lecture's path through a page's demos, in order."""

    title: str
    steps: tuple[str, ...]

    def step(self, current: str, delta: int) -> str:
        """The step `delta` away from `current`, wrapping round; from outside the track, its first."""
        if current not in self.steps:
            return self.steps[0]
        return self.steps[(self.steps.index(current) + delta) % len(self.steps)]


def nav(key: str, track: Track, current: str, go, noun: str = "demo") -> None:
    """Previous / "Demo k of n" / Next along `track`; `go(step)` moves there (a button
    callback, so it runs before the widgets it sets are drawn). Buttons: `{key}_prev`, `{key}_next`."""
    prev, where, nxt = st.columns([1, 2, 1], vertical_alignment="center")
    prev.button(f"Previous {noun}", key=f"{key}_prev", on_click=lambda: go(track.step(current, -1)), width="stretch")
    k = track.steps.index(current) + 1 if current in track.steps else 0
    where.markdown(f"<div style='text-align:center'>{noun.capitalize()} {k} of {len(track.steps)}</div>",
                   unsafe_allow_html=True)
    nxt.button(f"Next {noun}", key=f"{key}_next", on_click=lambda: go(track.step(current, 1)), width="stretch",
               type="primary")
