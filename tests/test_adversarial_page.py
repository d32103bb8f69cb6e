"""The Adversarial page in AppTest: URL state, attack and control, targeted suggestions,
PNG check, Grad-CAM, the budget sweep, and view changes that run no attack."""
import json

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
    titles = [s["layout"]["title"]["text"] for s in specs(at) if s["layout"].get("title")]
    assert titles == ["Top-5 before", "Top-5 after FGSM", "Top-5 after random noise"]
    assert any("Saved as an 8-bit PNG, reloaded and classified again" in m.value
               for m in [*at.success, *at.warning])
    assert at.get("download_button") and len([c for c in caps if c.startswith(("original,", "adversarial,"))]) >= 2


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
