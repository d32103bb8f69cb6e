"""Shared pieces of the AppTest page tests: open a page through the router with URL
parameters (as a bookmark would), and read a parameter back."""
from streamlit.testing.v1 import AppTest

from .conftest import ROOT


def open_page(page: str, timeout: int = 300, **params) -> AppTest:
    """`page`: the file under pages/, e.g. "adversarial.py"; `params`: the URL's query."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    at.query_params.update(params)
    at.switch_page(f"pages/{page}").run()
    assert not at.exception, at.exception
    return at


def qp(at: AppTest, name: str):
    """A query parameter as one string (AppTest may hold it as a list)."""
    v = at.query_params.get(name)
    return v[0] if isinstance(v, list) else v
