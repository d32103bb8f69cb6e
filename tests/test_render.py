"""Figures that are not Plotly: the top-k block (Home, Adversarial, Train)."""
import re

from cnnviz import render
from cnnviz.predict import Top


def test_the_top5_block_escapes_labels_and_draws_each_probability():
    top = [Top(3, "<img src=x onerror=alert(1)>", 0.75), Top(1, "a & b", 0.2), Top(7, "c", 0.0)]
    out = render.topk_html(top)
    # Labels can come from an uploaded labels file: text, never markup.
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt;: 75.0%" in out
    assert "a &amp; b: 20.0%" in out
    assert re.findall(r'data-index="(\d+)"', out) == ["3", "1", "7"]  # most likely first, as given
    assert re.findall(r"width:([\d.]+)%", out) == ["75.00", "20.00", "0.00"]
    assert out.count('class="cnnviz-topk-row"') == 3 and "<script" not in out
    assert "cnnviz-topk-title" not in out
    titled = render.topk_html(top, "After <b>PGD</b>")  # a title, escaped, above the rows
    assert titled.index("After &lt;b&gt;PGD&lt;/b&gt;") < titled.index("cnnviz-topk-row") and "<b>" not in titled
