"""The CNN limits page in AppTest: demos, highlight without recompute, URL state, lecture mode, compare."""
import json

import pytest
from streamlit.testing.v1 import AppTest

from cnnviz import limits as L
from cnnviz import models
from cnnviz.app import cache
from cnnviz.cli import main

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


# ---------------------------------------------------------------- CNN vs Transformer

VIT, CONVNEXT = "torchvision:vit_b_16@random", "torchvision:convnext_tiny@random"
TRIO = ["EfficientNet-Lite0", "ViT-B/16 (random init)", "ConvNeXt-Tiny (random init)"]


def groups(at, key="lim_chart") -> list[str]:
    """The chart's trace groups (one per model), in order."""
    return list(dict.fromkeys(d["legendgroup"] for d in chart(at, key)["data"]))


@pytest.fixture
def short(monkeypatch):
    """Every demo's sweep cut to its first two values (occlusion: a 112-pixel patch, 9
    positions) and no min-flip search (tested in test_limits.py): three models, ViT-B/16
    among them, in seconds on a CPU."""
    real = L.parse_values
    monkeypatch.setattr(L, "parse_values", lambda name, text: (112.0,) if name == "occlude" else real(name, text)[:2])
    monkeypatch.setattr(L, "_min_flip", lambda *a, **k: None)
    yield
    cache.RESULTS.clear()


def test_cnn_vs_transformer_track(short):
    at = open_page(lecture="1", track="versus")
    assert at.title[0].value == "CNN vs Transformer: Patch shuffle" and qp(at, "demo") == "shuffle"
    # Tests run offline on an empty hub cache: the pretrained ViT and ConvNeXt are said to be
    # missing, with the command that fetches each, and the untrained twins are offered, not used.
    said = " ".join(i.value for i in at.info)
    assert "`python -m cnnviz download torchvision:vit_b_16`" in said
    assert "`python -m cnnviz download torchvision:convnext_tiny`" in said
    assert groups(at) == TRIO[:1] and "compare" not in at.query_params
    at.button(key="lim_twins").click().run()
    assert not at.exception and not any("download" in i.value for i in at.info)
    look_for = {"shuffle": "position embedding", "rotate": "orientation", "occlude": "attend to every other",
                "noise": "patch embedding", "flip": "left and right"}
    seen = []
    for _ in L.VERSUS_DEMOS:
        demo = qp(at, "demo")
        seen.append(demo)
        assert at.title[0].value == f"CNN vs Transformer: {L.TRANSFORMS[demo].title}"
        assert qp(at, "track") == "versus" and qp(at, "compare") == f"{VIT},{CONVNEXT}"
        assert any(look_for[demo] in m.value for m in at.markdown)
        answers = [m.value for m in at.markdown if " says " in m.value]
        assert [a.split("**")[1] for a in answers] == TRIO  # each model's answer at the highlighted point
        if demo == "occlude":  # the three maps side by side, each on its own sweep
            maps = [chart(at, key) for key in ("lim_map", "lim_map_1", "lim_map_2")]
            assert [len(m["data"][1]["x"]) for m in maps] == [9, 9, 9]
            at.session_state["lim_map_2"] = {"selection": {"points": [{"customdata": 4}]}}
            at.run()  # a click on the third map highlights that position on all three
            assert qp(at, "point") == "4" and all(chart(at, k)["layout"]["shapes"] for k in ("lim_map", "lim_map_2"))
        else:
            assert groups(at) == TRIO
        at.button(key="lim_next").click().run()
        assert not at.exception
    assert seen == list(L.VERSUS_DEMOS) and qp(at, "demo") == "shuffle"  # and round again
    at.button(key="lim_prev").click().run()
    assert qp(at, "demo") == "flip"


def test_compare_list_bounded_said_and_the_cli_twin(capsys, samples, monkeypatch):
    asked = [VIT, CONVNEXT, "torchvision:resnet18@random", "torchvision:vit_b_16", "nosuch"]
    at = open_page(demo="flip", compare=",".join(asked))
    said = " ".join(i.value for i in at.info)
    assert "'nosuch' is not used" in said  # a bogus id
    assert "python -m cnnviz download torchvision:vit_b_16" in said  # pretrained, not cached here
    assert "at most 3" in said and "ResNet-18 · untrained (random weights) is left out" in said  # the bound
    assert groups(at) == TRIO and at.multiselect(key="lim_compare").value == [VIT, CONVNEXT]
    assert qp(at, "compare") == f"{VIT},{CONVNEXT}"
    # The CLI's twin gives the same numbers (its runner's thread count may round at 1e-6). It
    # takes the models the page loaded (@random weights come from a fixed seed: the same either way).
    real = models.load
    monkeypatch.setattr(models, "load", lambda mid, progress=None: cache.MODELS.get(mid) or real(mid, progress))
    assert main(["limits", str(samples["cat"]), "--transform", "flip", "--compare", f"{VIT},{CONVNEXT}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"model", "transform", "original", "points", "min_flip", "seconds"} < set(out)
    assert [c["model"] for c in out["compare"]] == [VIT, CONVNEXT]
    data = chart(at)["data"]
    for k, one in enumerate([out, *out["compare"]]):
        prob, rank = data[2 * k], data[2 * k + 1]
        assert prob["legendgroup"] == TRIO[k] and one["original"]["label"] in prob["name"]
        assert prob["y"] == pytest.approx([p["orig_prob"] for p in one["points"]], abs=1e-5)
        assert rank["y"] == [p["orig_rank"] for p in one["points"]]
