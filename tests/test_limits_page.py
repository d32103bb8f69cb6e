"""The CNN limits page in AppTest: demos, highlight without recompute, URL state, lecture mode, compare."""
import json

import pytest
from streamlit.testing.v1 import AppTest

from cnnviz import limits as L
from cnnviz.app import cache

from . import apptest
from .apptest import qp


def open_page(**params) -> AppTest:
    return apptest.open_page("limits.py", **{"sample": "cat", **params})


def chart(at, key="lim_chart") -> dict:
    return json.loads(next(c.proto.spec for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id))


def strip_captions(at) -> list[str]:
    return [c for img in at.get("image") for c in (i.caption for i in img.proto.imgs) if c]


def test_default_demo_rotation(bundled):
    at = open_page()
    assert at.selectbox(key="lim_demo").value == "rotate" and qp(at, "demo") == "rotate"
    assert any("Smallest flip" in s.value and "turns 'Egyptian cat' into" in s.value for s in at.success)
    spec = chart(at)
    assert spec["data"][0]["y"][0] == pytest.approx(0.39346, abs=1e-4) and len(spec["data"][0]["y"]) == 24
    assert len(spec["layout"]["images"]) == 24  # the film strip
    caps = strip_captions(at)
    assert caps[0] == "Rotation: 0" and len(caps) == 25 and caps[1] == "0: Egyptian cat 39%"


def test_highlight_and_click_recompute_nothing(monkeypatch):
    at = open_page(demo="shuffle", preset="coarse")
    calls = []
    for name in ("_sweep", "_min_flip"):
        real = getattr(L, name)
        monkeypatch.setattr(L, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    at.select_slider(key="lim_point").set_value(2).run()
    assert qp(at, "point") == "2" and any("Patch shuffle: 3" in c for c in strip_captions(at))
    at.session_state["lim_chart"] = {"selection": {"points": [{"customdata": 3, "x": 3}]}}
    at.run()
    assert not at.exception and at.select_slider(key="lim_point").value == 3 and qp(at, "point") == "3"
    assert calls == []


def test_url_reproduces_a_seeded_view():
    params = dict(demo="shuffle", preset="custom", values="1,4", seed="3", point="1")
    a, b = open_page(**params), open_page(**params)
    assert a.text_input(key="lim_values").value == "1,4" and a.number_input(key="lim_seed").value == 3
    assert a.select_slider(key="lim_point").value == 1
    img = lambda at: [i.proto.imgs[0].url for i in at.get("image")]
    assert len(chart(a)["data"][0]["y"]) == 2
    assert chart(a)["data"][0]["y"] == chart(b)["data"][0]["y"]
    c = open_page(**{**params, "seed": "4"})
    assert chart(c)["data"][0]["y"][1] != chart(a)["data"][0]["y"][1]  # another tile order
    assert img(a)  # the highlighted image is shown


def test_lecture_mode_one_demo_per_screen():
    at = open_page(demo="occlude", preset="patch 112 px", lecture="1")
    assert at.toggle(key="lim_lecture").value is True
    assert at.title[0].value == "CNN limits: Occlusion sweep"
    assert [e.label for e in at.main.expander] == ["Controls"]  # controls folded away
    assert any("font-size" in h.proto.body for h in at.get("html"))  # big type
    assert len(chart(at, "lim_map")["data"][1]["x"]) == 9
    at.button(key="lim_next").click().run()
    assert not at.exception and at.title[0].value == "CNN limits: Patch shuffle"
    assert qp(at, "demo") == "shuffle" and qp(at, "lecture") == "1" and qp(at, "preset") == "k = 1 to 16"
    at.toggle(key="lim_lecture").set_value(False).run()
    assert at.title[0].value == "CNN limits" and "lecture" not in at.query_params and not at.main.expander
    assert not any("font-size" in h.proto.body for h in at.get("html"))


def test_compare_two_models():
    at = open_page(demo="flip", compare="torchvision:resnet18@random")
    assert at.toggle(key="lim_compare_on").value is True
    names = [d["name"] for d in chart(at)["data"]]
    assert any("EfficientNet" in n for n in names) and any("ResNet-18" in n for n in names)
    assert any("ResNet-18" in m.value and "says" in m.value for m in at.markdown)
    assert qp(at, "compare") == "torchvision:resnet18@random"


@pytest.fixture
def no_search(monkeypatch):
    """Every demo's view, without the min-flip search (tested in test_limits.py)."""
    monkeypatch.setattr(L, "_min_flip", lambda *a, **k: None)
    yield
    cache.RESULTS.clear()


@pytest.mark.parametrize("demo, values", [
    ("scale", "0,1"), ("translate", "0,0.25"), ("brightness", "0,-2"), ("contrast", "0,-2"), ("gamma", "0,1"),
    ("blur", "0,4"), ("noise", "0,0.2")])
def test_each_demo(no_search, demo, values):
    at = open_page(demo=demo, preset="custom", values=values)
    assert at.selectbox(key="lim_demo").value == demo
    assert f"{L.TRANSFORMS[demo].title}: 0" in strip_captions(at)  # the highlighted image
    assert len(chart(at)["data"][0]["y"]) == 2 and strip_captions(at)[1].startswith("0: Egyptian cat")


def test_bad_values_show_a_message():
    at = open_page(demo="flip", preset="custom", values="0:-1:1")
    assert any("step must be positive" in e.value for e in at.error)
    assert len(chart(at)["data"][0]["y"]) == 2  # the first preset meanwhile
