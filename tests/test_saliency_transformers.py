"""Saliency beside a vision transformer: two models side by side on the Saliency page (and
`saliency --compare`), and the trust checks on a random-init ViT-B/16 (nothing downloaded)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from cnnviz import agreement as AG
from cnnviz import models
from cnnviz import saliency as S
from cnnviz import trust as T
from cnnviz.app import cache
from cnnviz.cli import main

from .apptest import open_page, qp

VIT = "torchvision:vit_b_16@random"


@pytest.fixture(scope="module")
def vit():
    return models.load(VIT)


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.net.modules())


# ---------------------------------------------------------------- two models side by side

@pytest.fixture(scope="module")
def pair_page():
    """The bundled model with ViT-B/16's untrained twin beside it, from a link."""
    return open_page("saliency.py", compare=VIT)


def _captions(at) -> list[str]:
    return [i.proto.imgs[0].caption for i in at.main.get("image")]


def test_two_models_draw_the_same_class_and_their_correlation(pair_page, bundled, samples):
    at = pair_page
    assert not at.error and not at.warning and qp(at, "compare") == VIT
    assert at.toggle(key="sal_compare_on").value and at.selectbox(key="sal_compare").value == VIT
    target = at.selectbox(key="sal_target").value
    mine, theirs = _captions(at)
    label = bundled.categories[target]
    assert mine.startswith(f"Grad-CAM for {label} (") and theirs.startswith(f"Grad-CAM for {label} (")
    assert theirs.endswith("at encoder.layers.encoder_layer_11.ln_1")  # the ViT's own default layer
    tops = [m.value for m in at.main.markdown if "its top-1:" in m.value]
    assert tops[0].startswith("**EfficientNet-Lite0** · its top-1:")
    assert tops[1].startswith("**ViT-B/16 (random init)** · its top-1:")
    # Independently: the two maps as the cache holds them, ranked against each other.
    sha = cache.sha(samples["cat"].read_bytes())
    image = cache.image(sha, samples["cat"].read_bytes(), "cat.jpg")
    a = cache.run(S.SaliencySpec("gradcam", target, bundled.gradcam_layer), cache.model(bundled.id), image, sha)
    b = cache.run(S.SaliencySpec("gradcam", target), cache.model(VIT), image, sha)
    assert a.map.shape == b.map.shape == (224, 224) and b.layer_map.shape == (14, 14)
    rho = T.spearman(a.map, b.map)
    shown = float(next(m.value for m in at.metric if m.label.startswith("Spearman")))
    assert shown == pytest.approx(rho, abs=5e-4)
    assert any(f"ρ = {rho:.2f}" in m.value for m in at.main.markdown)


def test_a_method_the_vit_cannot_take_falls_back_to_gradcam_and_says_why(pair_page):
    at = pair_page
    at.selectbox(key="sal_method").set_value("guided_backprop").run()
    assert not at.exception and not at.warning
    assert any("ViT-B/16 (random init) cannot take Guided Backprop: it applies GELU" in i.value
               and i.value.endswith("so it shows Grad-CAM instead.") for i in at.info)
    mine, theirs = _captions(at)
    assert mine.startswith("Guided Backprop for ") and theirs.startswith("Grad-CAM (instead of Guided Backprop) for ")
    at.selectbox(key="sal_method").set_value("gradcam").run()  # as the module's other tests expect it


@pytest.mark.parametrize("wanted, words", [
    ("nosuch", "is not a model this app knows"),
    ("torchvision:vit_h_14", "larger than this server loads"),  # 632 M parameters
    ("efficientnet_lite0", "already selected"),
])
def test_a_bad_compare_link_gets_a_sentence(wanted, words):
    at = open_page("saliency.py", compare=wanted)
    assert any(f"compare={wanted!r}" in i.value and words in i.value for i in at.info), [i.value for i in at.info]
    assert not at.toggle(key="sal_compare_on").value and qp(at, "compare") is None
    assert len(_captions(at)) == 1  # the one map, as without a link


def test_weights_not_here_say_how_to_fetch_them_and_offer_the_twin():
    at = open_page("saliency.py", compare="torchvision:vit_b_16")  # tests see an empty torch hub cache
    assert any("`python -m cnnviz download torchvision:vit_b_16`" in i.value for i in at.info)
    assert len(_captions(at)) == 1
    at.button(key="sal_twin").click().run()
    assert not at.exception and at.selectbox(key="sal_compare").value == VIT and qp(at, "compare") == VIT
    assert len(_captions(at)) == 2


def test_the_closed_tab_loads_and_computes_nothing(monkeypatch):
    loaded, explained = [], []
    real_model, real_attribute = cache.model, S.attribute
    monkeypatch.setattr(cache, "model", lambda i: loaded.append(i) or real_model(i))
    monkeypatch.setattr(S, "attribute", lambda m, *a, **k: explained.append(m.id) or real_attribute(m, *a, **k))
    at = open_page("saliency.py", compare=VIT, view="Layer sweep")
    assert VIT not in loaded and VIT not in explained
    assert qp(at, "compare") == VIT  # kept for when the Map tab opens


def test_pairing_rules(bundled, vit):
    spec = S.SaliencySpec("gradcampp", 281, "_blocks.15", 282)
    p = AG.pair(bundled, vit, spec)
    assert (p.spec.method, p.spec.target, p.spec.contrast, p.spec.layer) == ("gradcampp", 281, 282, None)
    assert p.notes == (f"ViT-B/16 (random init) is explained at its own default layer, `{vit.gradcam_layer}`: the "
                       "layer chosen above is one of EfficientNet-Lite0's.",)
    assert AG.pair(bundled, vit, S.SaliencySpec("ig", 281)).notes == ()
    ten = dataclasses.replace(vit, categories=[f"class {i}" for i in range(10)], label="A 10-class ViT")
    p = AG.pair(bundled, ten, S.SaliencySpec("guided_gradcam", 281, contrast=282))
    assert (p.spec.method, p.spec.target, p.spec.contrast) == ("gradcam", None, None)
    assert len(p.notes) == 2 and "cannot take Guided Grad-CAM" in p.notes[0] and "its own top class" in p.notes[1]
    assert AG.pair(vit, bundled, S.SaliencySpec("guided_backprop", 5)).spec.method == "guided_backprop"  # ReLU6


def test_correlation_at_a_common_resolution():
    rng = np.random.default_rng(0)
    a, b = rng.random((224, 224)), rng.random((299, 299)).astype(np.float32)
    rho, size = AG.common_correlation(a, b)
    assert size == (224, 224) and rho == T.spearman(a, S.upsample(b, (224, 224)))
    assert AG.common_correlation(a, a * 2 + 1) == (pytest.approx(1.0), (224, 224))


def test_cli_saliency_compare(capsys, samples):
    assert main(["saliency", str(samples["cat"]), "--method", "gradcam", "--target", "281", "--compare", VIT,
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "method", "layer", "target", "shape", "peak", "seconds", "compare"}
    c = out["compare"]
    assert c["model"] == VIT and c["method"] == "gradcam" and c["target"]["index"] == 281
    assert c["layer"] == "encoder.layers.encoder_layer_11.ln_1" and c["size"] == [224, 224]
    assert -1 <= c["spearman"] <= 1 and f"ρ = {c['spearman']:.2f}" in c["sentence"] and c["notes"] == []
    assert set(c["top1"]) == {"index", "label", "prob"}


# ---------------------------------------------------------------- trust checks on a ViT

def test_vit_cascade_steps_cover_every_parameter_once_blocks_one_by_one(vit):
    steps = T.randomization_blocks(vit)
    assert steps[-3:] == ["encoder.layers.encoder_layer_11", "encoder.ln", "heads"]
    assert [s for s in steps if "encoder_layer_" in s] == [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    owned = [id(p) for s in steps for _, _, p in T._parameters(vit.net, s)]
    assert sorted(owned) == sorted(id(p) for p in vit.net.parameters())  # class token and position embedding too
    assert "its 12 blocks one at a time" in T.cascade_sentence(vit)


def test_vit_randomization_changes_the_maps_and_restores_the_model(vit, cat):
    before = {n: (p, p.detach().clone()) for n, p in vit.net.named_parameters()}
    r = T.randomization_check(vit, cat, ["gradcam", "gradients"], 3, steps=2)
    assert r["blocks"][:3] == ["heads", "encoder.ln", "encoder.layers.encoder_layer_11"]
    assert r["steps"] == ["trained", f"top 8 of {len(r['blocks'])} blocks random",
                          f"top 17 of {len(r['blocks'])} blocks random"]
    for m in ("gradcam", "gradients"):
        rho = r["correlation"][m]
        assert rho[0] == 1.0 and all(v < 0.9 for v in rho[1:]), (m, rho)  # the maps follow the weights
    after = dict(vit.net.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[n] is p and torch.equal(p, saved) for n, (p, saved) in before.items())
    assert no_hooks(vit)


def test_trust_tab_on_a_vit(monkeypatch):
    monkeypatch.setattr(T, "DELETION_STEPS", 4)  # a few cuts: the tab's path, not the curve's detail
    at = open_page("saliency.py", model=VIT, view="Trust checks")
    assert any("is a transformer" in c.value for c in at.main.caption)
    at.multiselect(key="sal_trust_methods").set_value(["gradcam"]).run()
    at.button(key="sal_trust_run").click().run()
    assert not at.exception and not at.error
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("rank correlation" in s and "Grad-CAM" in s for s in specs) and any("random order" in s for s in specs)
