"""The Adversarial page in AppTest: URL state, attack and control, targeted suggestions,
PNG check, Grad-CAM, the budget sweep, and view changes that run no attack."""
import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from cnnviz import adversarial as A

from . import apptest
from .apptest import qp


def open_page(**params) -> AppTest:
    return apptest.open_page("adversarial.py", **{"sample": "cat", **params})


def captions(at) -> list[str]:
    return [i.caption for img in at.get("image") for i in img.proto.imgs if i.caption]


def specs(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_url_opens_a_targeted_fgsm_view_with_control_png_and_gradcam():
    at = open_page(attack="fgsm", eps="6", target="409", seed="3")
    assert at.radio(key="adv_method").value == "fgsm" and at.slider(key="adv_eps").value == 6
    assert at.toggle(key="adv_targeted").value and at.selectbox(key="adv_target").value == 409
    assert at.number_input(key="adv_seed").value == 3
    assert qp(at, "target") == "409" and qp(at, "eps") == "6" and qp(at, "steps") is None  # PGD-only params dropped
    caps = captions(at)
    assert caps[0].startswith("Original: Egyptian cat")
    assert any("amplified x21 around grey; true range -6 to +6 /255 (L-inf 6/255" in c for c in caps)  # 127/6
    assert any(c.startswith("Control, random signs of the same size") for c in caps)
    titles = [t for h in at.get("html") for t in re.findall(r'class="cnnviz-topk-title"[^>]*>([^<]*)<', h.proto.body)]
    assert titles == ["Top-5 before", "Top-5 after FGSM", "Top-5 after random noise"]
    assert any("Saved as an 8-bit PNG, reloaded and classified again" in m.value
               for m in [*at.success, *at.warning])
    assert at.get("download_button")
    assert not [c for c in caps if c.startswith(("original,", "adversarial,"))]  # that tab is closed: no Grad-CAM
    at = open_page(attack="fgsm", eps="6", target="409", seed="3", adv_view="Where the decision moved")
    caps = captions(at)
    assert not at.exception and caps.count("original, Egyptian cat") == 1
    assert any(c.startswith("adversarial, still explaining Egyptian cat") for c in caps)


def test_pgd_untargeted_flips_and_suggestions_set_the_target():
    at = open_page(attack="pgd", eps="2", steps="3")
    assert qp(at, "steps") == "3" and qp(at, "start") == "0" and qp(at, "target") is None
    assert any("turned **Egyptian cat**" in s.value for s in at.success)
    at.toggle(key="adv_targeted").set_value(True).run()
    assert not at.exception
    buttons = [b for b in at.button if b.key and b.key.startswith("adv_suggest_")]
    assert len(buttons) == 5
    chosen = int(buttons[2].key.rsplit("_", 1)[1])
    buttons[2].click().run()
    assert at.selectbox(key="adv_target").value == chosen and qp(at, "target") == str(chosen)


def test_budget_sweep_on_demand_marks_the_smallest_flip(monkeypatch):
    at = open_page(attack="fgsm", sweep="4")
    assert at.slider(key="adv_sweep_max").value == 4
    assert not any("flips at" in json.dumps(s) for s in specs(at))
    calls = []
    real = A._attack
    monkeypatch.setattr(A, "_attack", lambda *a, **k: calls.append(a) or real(*a, **k))
    at.button(key="adv_sweep_run").click().run()
    assert not at.exception
    sweep = next(s for s in specs(at) if "budget" in json.dumps(s["layout"].get("xaxis", {})))
    assert sweep["data"][0]["x"] == [0, 1, 2, 3, 4]
    assert any("flips at" in a.get("text", "") for a in sweep["layout"]["annotations"])
    assert any("Smallest budget that changes the decision: **" in m.value for m in at.markdown)
    assert calls == []  # the sweep is its own computation; the attack above came from the cache


@pytest.mark.parametrize("params", [{"eps": "0", "attack": "cw", "steps": "x", "target": "5000"}])
def test_bad_url_values_fall_back_to_defaults(params):
    at = open_page(**params)
    assert at.radio(key="adv_method").value == "pgd" and at.slider(key="adv_eps").value == 2
    assert not at.toggle(key="adv_targeted").value and not at.error


# ---------------------------------------------------------------- where the attack takes over

DIV_TAB = "Where the attack takes over"


def depth_chart(at) -> dict:
    return next(s for s in specs(at) if "relative change" in json.dumps(s["layout"].get("annotations", [])))


def test_depth_view_opens_from_the_url_with_the_fastest_layer_marked_and_its_mosaics():
    at = open_page(attack="fgsm", adv_view=DIV_TAB)
    assert not at.exception and not at.error
    chart = depth_chart(at)
    names = chart["data"][0]["customdata"]
    assert names[0] == "_conv_stem" and names[-1] == "_fc"
    assert [t["name"] for t in chart["data"][:1]] == ["FGSM"] and chart["data"][1]["customdata"] == names
    star = next(t for t in chart["data"] if t["name"] == "fastest rise")
    fastest = star["customdata"][0]
    assert any(a.get("text") == f"fastest rise: {fastest}" for a in chart["layout"]["annotations"])
    assert at.selectbox(key="adv_layer").value == fastest and qp(at, "layer") == fastest  # opens where it rises
    caps = captions(at)
    assert any(c.startswith(f"{fastest} on the original") for c in caps)
    assert "on the adversarial image, same tile order" in caps
    assert any("the attack moved the activation by" in m.value for m in at.markdown)


def test_a_click_on_a_layer_opens_its_mosaics_and_a_vector_layer_says_it_has_none():
    at = open_page(attack="fgsm", adv_view=DIV_TAB)
    at.session_state["adv_div_chart"] = {"selection": {"points": [{"customdata": "_blocks.6._bn1"}]}}
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="adv_layer").value == "_blocks.6._bn1" and qp(at, "layer") == "_blocks.6._bn1"
    assert any(c.startswith("_blocks.6._bn1 on the original: 480 maps") for c in captions(at))
    assert any("channels that changed most" in m.value for m in at.markdown)
    at.session_state["adv_div_chart"] = {"selection": {"points": [{"customdata": "_fc"}]}}
    at.run()
    assert not at.exception and at.selectbox(key="adv_layer").value == "_fc"
    assert any("_fc gives 1000 numbers, not maps" in i.value for i in at.info)
    assert not any(c.startswith("_fc on the original") for c in captions(at))


def test_a_layer_link_opens_that_layer_and_a_bogus_one_gets_a_message():
    at = open_page(attack="fgsm", adv_view=DIV_TAB, layer="_blocks.3._expand_conv")
    assert at.selectbox(key="adv_layer").value == "_blocks.3._expand_conv" and not at.warning
    at = open_page(attack="fgsm", adv_view=DIV_TAB, layer="_blocks.3.expand_conv")
    assert not at.exception and not at.error
    warning = " ".join(w.value for w in at.warning)
    assert "No layer '_blocks.3.expand_conv'" in warning and "_blocks.3._expand_conv" in warning  # the closest
    assert at.selectbox(key="adv_layer").value == qp(at, "layer") != "_blocks.3.expand_conv"


def test_the_depth_view_computes_only_while_open(monkeypatch):
    from cnnviz import divergence as D
    from cnnviz.app import cache

    asked = []
    real = cache.run
    monkeypatch.setattr(cache, "run", lambda spec, *a, **k: asked.append(type(spec)) or real(spec, *a, **k))
    at = open_page(attack="fgsm", layer="_blocks.6._bn1")
    assert D.DivergenceSpec not in asked and not any(
        "relative change" in json.dumps(s["layout"].get("annotations", [])) for s in specs(at))
    assert not at.warning
