"""Page state that lives in the URL (`st.query_params`), so a bookmark reproduces a view.

A link can hold anything (a typo, a hand-edited number, a value from another model). On
the run that reads it, a page takes what its widgets can show: a number for a slider or
a number input above the widget's range is clamped to its maximum, the most the page
offers (`restore_number`: a link cannot start a longer job than the widget can); one below
it, or not a finite number, is left out (the page's default); a choice must be one of the
widget's options (`restore`). Whatever is changed or left out is said in one `st.info`
line (what the link asked, what is used).
The backend bounds (`cnnviz.bounds`, the job runner) hold whatever a page lets through.
"""
from __future__ import annotations

import math

import streamlit as st

_BAD = object()


def shown(value, most: int = 40) -> str:
    """A value from a link, quoted and cut short for a message."""
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def note(text: str) -> None:
    """Say what was done with a link's value."""
    st.info(text, icon=":material/link:")


def _fresh(key: str, param: str):
    """The link's value for `param` if widget `key` has none yet (a page's first run), else _BAD."""
    ss, qp = st.session_state, st.query_params
    if key in ss or param not in qp:
        return _BAD
    return qp[param]  # the last one when the key is repeated


def restore(key: str, param: str, valid, cast=str, *, why: str = "") -> bool:
    """On a page's first run, take widget `key`'s value from URL `param` if it is valid
    (`valid(cast(text))`); otherwise leave it out and say so (`why`: what a valid value is).
    Returns whether the link's value was taken."""
    raw = _fresh(key, param)
    if raw is _BAD:
        return False
    try:
        value = cast(raw)
        ok = bool(valid(value))
    except (ValueError, TypeError, OverflowError, AttributeError):
        ok = False
    if ok:
        st.session_state[key] = value
        return True
    note(f"The link's {param}={shown(raw)} is not used" + (f": {why}." if why else "; the page shows its default."))
    return False


def number(text, integer: bool = True):
    """`text` as a finite number (an int when `integer`; a fraction is rounded), else None."""
    text = str(text).strip()
    if integer:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        v = float(text)
    except ValueError:
        return None
    if not math.isfinite(v):
        return None
    return round(v) if integer else v


def restore_number(key: str, param: str, lo, hi, *, integer: bool = True) -> bool:
    """On a page's first run, take widget `key`'s value from URL `param` as a number in
    the widget's range [lo, hi]: above it, `hi` is used (a fraction for a whole number is
    rounded); below it, or not a finite number, it is left out for the page's default.
    Either way the page says so. Returns whether the link's value was taken."""
    raw = _fresh(key, param)
    if raw is _BAD:
        return False
    value = number(raw, integer)
    kind = "a whole number" if integer else "a number"
    if value is None or value < lo:
        note(f"The link's {param}={shown(raw)} is not used: give {kind} from {_fmt(lo)} to {_fmt(hi)}; the page "
             "shows its default.")
        return False
    used = min(value, hi)
    given = number(raw, integer=False)  # before rounding to a whole number
    if used != value or (given is not None and given != value):
        note(f"The link asks for {param}={shown(raw)}; this page takes {kind} from {_fmt(lo)} to {_fmt(hi)}, "
             f"so {_fmt(used)} is used.")
    st.session_state[key] = int(used) if integer else float(used)
    return True
