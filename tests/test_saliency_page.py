"""The Saliency page in AppTest: every method, targets, contrast, URL, no recompute on view changes."""
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cnnviz import saliency as S
from cnnviz.images import load_image
from cnnviz.predict import predict

from .apptest import open_page
from .conftest import ROOT


@pytest.fixture
def page():
    return open_page("saliency.py")


def caption(at) -> str:
    return next(c.value for c in at.main.caption if " for **" in c.value)


def test_defaults_explain_the_top1_at_the_default_layer(page, bundled, samples):
    top1 = predict(bundled, load_image(samples["cat"]), 1)[0]
    assert page.selectbox(key="sal_target").value == top1.index
    assert page.selectbox(key="sal_layer").value == "_swish#1"
    assert f"for **{top1.label}** at `_swish#1`" in caption(page)
    assert page.query_params["method"] in ("gradcam", ["gradcam"])


@pytest.mark.parametrize("method", [m for m in S.METHODS if m != "scorecam"])
def test_each_method(page, method):
    page.selectbox(key="sal_method").set_value(method).run()
    assert not page.exception
    # guided ones too: the bundled model's ReLU6 has the clamp rule
    assert not page.warning and caption(page).startswith("**")


def test_scorecam_on_a_small_layer(page):
    page.selectbox(key="sal_method").set_value("scorecam").run()
    page.selectbox(key="sal_layer").set_value("_blocks.15._project_conv").run()
    assert not page.exception and "Score-CAM" in caption(page)


def test_a_long_method_served_from_the_cache(page):
    """Its progress bar is made inside the cached function, so a cache hit replays cleanly."""
    for method in ("smoothgrad", "gradcam", "smoothgrad"):
        page.selectbox(key="sal_method").set_value(method).run()
        assert not page.exception and not page.error, page.error
    assert caption(page).startswith("**SmoothGrad**")


def test_top5_button_and_contrast(page, bundled, samples):
    top = predict(bundled, load_image(samples["cat"]), 5)
    page.button(key=f"sal_top_{top[2].index}").click().run()
    assert page.selectbox(key="sal_target").value == top[2].index
    page.toggle(key="sal_contrastive").set_value(True).run()
    assert not page.exception
    other = page.selectbox(key="sal_contrast").value
    assert other != top[2].index
    assert f"{top[2].label}** rather than" not in caption(page)
    assert f"for **{top[2].label} rather than {bundled.categories[other]}**" in caption(page)
    assert page.query_params["contrast"] in (str(other), [str(other)])


def test_query_params_open_a_view():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params.update({"method": "gradients", "target": "281", "contrast": "282"})
    at.switch_page("pages/saliency.py").run()
    assert not at.exception
    assert at.selectbox(key="sal_method").value == "gradients"
    assert "for **tabby rather than tiger cat**" in caption(at)


def test_view_changes_recompute_nothing(page, monkeypatch):
    calls = []
    real = S.attribute
    monkeypatch.setattr(S, "attribute", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    page.slider(key="sal_opacity").set_value(0.8).run()
    page.selectbox(key="sal_cmap").set_value("viridis").run()
    assert not page.exception and calls == []


def test_layer_sweep_matches_single_layer_gradcam(bundled, samples):
    img = load_image(samples["cat"])
    sweep = S.gradcam_sweep(bundled, img)
    assert list(sweep) == S.stage_layers(bundled) and len(sweep) == 5
    for name, cam in sweep.items():
        assert np.allclose(cam, S.attribute(bundled, img, "gradcam", layer=name).map, atol=1e-5)


def test_only_the_open_tab_computes(page):
    assert [t.label for t in page.tabs] == ["Map", "Methods side by side", "Layer sweep", "Trust checks",
                                            "Attention (transformers)"]
    with pytest.raises(KeyError):  # the grid's four methods wait until their tab is opened
        page.multiselect(key="sal_grid")
    page.session_state["view"] = "Methods side by side"
    page.run()
    assert not page.exception
    assert page.multiselect(key="sal_grid").value == ["gradcam", "gradcampp", "gradients", "ig"]
    assert [i.proto.imgs[0].caption for i in page.main.get("image")] == [
        "Grad-CAM", "Grad-CAM++", "Vanilla gradients", "Integrated Gradients"]


def test_a_url_opens_a_tab():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params.update({"method": "gradcam", "view": "Layer sweep"})
    at.switch_page("pages/saliency.py").run()
    assert not at.exception
    assert any("every stage" in c.value for c in at.main.caption)
    assert not any(" for **" in c.value for c in at.main.caption)  # the Map tab stayed closed


def test_trust_checks_run_on_demand(page):
    page.session_state["view"] = "Trust checks"
    page.run()
    page.multiselect(key="sal_trust_methods").set_value(["gradcam", "gradients"]).run()
    assert not page.get("plotly_chart") or all("rank correlation" not in c.proto.spec for c in page.get("plotly_chart"))
    page.button(key="sal_trust_run").click().run()
    assert not page.exception
    specs = [c.proto.spec for c in page.get("plotly_chart")]
    assert any("rank correlation" in s and "Grad-CAM" in s for s in specs)
    assert any("random order (area" in s for s in specs)


def _plotly(at, key: str) -> dict:
    import json

    return json.loads(next(c.proto.spec for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id))


def _decoded(z):
    """Plotly's typed arrays in a spec ({"dtype", "bdata", "shape"}) as numpy."""
    import base64

    if isinstance(z, dict):
        a = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
        return a.reshape([int(s) for s in str(z["shape"]).split(",")]) if "shape" in z else a
    return np.asarray(z, float)


def test_methods_side_by_side_show_agreement_and_faithfulness(page):
    page.session_state["view"] = "Methods side by side"
    page.run()
    page.multiselect(key="sal_grid").set_value(["gradcam", "gradcampp", "gradients"]).run()
    assert not page.exception
    said = " ".join(m.value for m in page.main.markdown)
    assert "Grad-CAM and Grad-CAM++ (ρ = " in said and "Most faithful here:" in said
    heat = _plotly(page, "sal_agree_chart")["data"][0]
    z = _decoded(heat["z"])
    assert z.shape == (3, 3) and np.allclose(z, z.T) and np.allclose(np.diag(z), 1)
    assert heat["x"] == ["Grad-CAM", "Grad-CAM++", "Vanilla gradients"]
    curves = _plotly(page, "sal_curves_chart")
    assert len(curves["data"]) == 2 * 4  # three methods and the random order, deletion and insertion
    assert any("random order (deletion" in t.get("name", "") for t in curves["data"])
    page.multiselect(key="sal_grid").set_value(["gradcam"]).run()
    assert not page.exception and any("at least two" in i.value for i in page.info)


def test_layer_advisor_marks_a_layer_and_a_click_takes_it(page, bundled):
    page.session_state["view"] = "Layer sweep"
    page.run()
    assert not any(c.proto.id.endswith("sal_advice") for c in page.get("plotly_chart"))  # on demand
    page.toggle(key="sal_advise").set_value(True).run()
    assert not page.exception and page.query_params["advise"] in ("1", ["1"])
    best = next(m.value for m in page.main.markdown if m.value.startswith("**Best here: `"))
    best = best.split("`")[1]
    assert best in S.stage_layers(bundled)
    bars = _plotly(page, "sal_advice")["data"]
    assert [t["customdata"] for t in bars[:2]] == [S.stage_layers(bundled)] * 2
    assert sum(i.proto.imgs[0].caption.startswith("★ ") for i in page.main.get("image")) == 1
    other = next(l for l in S.stage_layers(bundled) if l != best)
    page.session_state["sal_advice"] = {"selection": {"points": [{"customdata": other}]}}
    page.run()
    assert not page.exception and page.selectbox(key="sal_layer").value == other
    page.button(key="sal_use_best").click().run()
    assert page.selectbox(key="sal_layer").value == best
