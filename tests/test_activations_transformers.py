"""Activations on a vision transformer (issue #15): the class token apart from the patch
grid, from the same recorded pass; and the texts a transformer gets where a CNN's would be
false. Random-init ViT-B/16: nothing downloaded."""
import json

import numpy as np
import pytest
import torch

from cnnviz import activations as A
from cnnviz import hooks, jobs, models
from cnnviz.cli import main

from .apptest import open_page, qp

VIT = "torchvision:vit_b_16@random"
BLOCK = "encoder.layers.encoder_layer_5"
RED = "#d62728"


@pytest.fixture(scope="module")
def vit():
    return models.load(VIT)


@pytest.fixture(scope="module")
def recorded(vit, cat):
    """The Activations page's job at a block, and the forward passes it ran."""
    A.spatial_layers(vit)  # the layer list's probe pass, once per model, before counting
    passes = []
    handle = vit.net.register_forward_pre_hook(lambda *a: passes.append(1))
    try:
        return jobs.run(vit, cat, A.ActivationsSpec((BLOCK,))), passes
    finally:
        handle.remove()


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.net.modules())


# ---------------------------------------------------------------- backend

def test_the_class_token_is_the_blocks_own_from_the_same_pass(vit, cat, recorded):
    rec, passes = recorded
    assert passes == [1]  # the maps and the class tokens: one (partial) forward pass
    assert no_hooks(vit)

    kept = {}  # an independent forward hook on the block
    handle = dict(vit.net.named_modules())[BLOCK].register_forward_hook(lambda m, i, o: kept.setdefault("t", o))
    try:
        with torch.no_grad():
            vit.net(vit.preprocess(cat))
    finally:
        handle.remove()
    tokens = kept["t"][0]  # [1 + 14 * 14, 768]: the class token first
    np.testing.assert_allclose(rec.class_token(BLOCK), tokens[0].numpy(), rtol=1e-5, atol=1e-5)

    sim = rec.cls_similarity(BLOCK)
    ref = torch.nn.functional.cosine_similarity(tokens[1:].double(), tokens[:1].double(), dim=1)
    assert sim.shape == (14, 14)
    np.testing.assert_allclose(sim, ref.reshape(14, 14).numpy(), atol=1e-5)
    assert sim.std() > 0  # not a constant that any map would match


def test_cosine_map_by_hand():
    acts = np.array([[[1.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]]], np.float32)  # channel vectors (1,0), (0,2), (0,0)
    np.testing.assert_allclose(A.cosine_map(acts, np.array([1.0, 1.0])), [[2 ** -0.5, 2 ** -0.5, 0.0]], rtol=1e-6)
    assert A.cosine_map(acts, np.zeros(2)).tolist() == [[0.0, 0.0, 0.0]]  # no direction: 0, not NaN


def test_no_class_token_for_a_cnn_or_before_the_encoder(vit, bundled, cat):
    inside = jobs.run(vit, cat, A.ActivationsSpec(("conv_proj", f"{BLOCK}.mlp.0")))
    assert list(inside.cls_tokens) == [f"{BLOCK}.mlp.0"]  # the class token joins after the embedding
    assert inside.class_token(f"{BLOCK}.mlp.0").shape == (3072,)  # any token output inside the encoder
    stem = jobs.run(bundled, cat, A.ActivationsSpec(("_conv_stem",)))
    assert stem.cls_tokens == {} and stem.class_token("_conv_stem") is None and stem.cls_similarity("_conv_stem") is None
    assert "class_token" not in stem.to_dict()
    with hooks.Recorder(bundled, ["_conv_stem"], cls=True) as rec, torch.no_grad():
        bundled.net(bundled.preprocess(cat))
    assert rec.cls_tokens == {} and no_hooks(bundled) and no_hooks(vit)


def test_cli_activations_json_adds_the_class_token(recorded, samples, capsys):
    assert main(["activations", str(samples["cat"]), "--model", VIT, "--layer", BLOCK, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "layer", "shape", "channels", "top", "seconds", "class_token"}
    assert out["shape"] == [768, 14, 14] and len(out["class_token"]["values"]) == 768
    rec = recorded[0]
    np.testing.assert_allclose(out["class_token"]["values"], rec.class_token(BLOCK), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["class_token"]["similarity"], rec.cls_similarity(BLOCK), atol=1e-4)


# ---------------------------------------------------------------- the page

def class_token_bars(at) -> dict | None:
    """The class token's bar chart (its figure's first trace), or None."""
    for chart in at.main.get("plotly_chart"):
        data = json.loads(chart.proto.spec)["data"]
        if data and data[0].get("type") == "bar" and "class token" in data[0].get("hovertemplate", ""):
            return data[0]
    return None


def test_the_class_token_view_and_its_click(recorded):
    at = open_page("activations.py", model=VIT, layer=BLOCK)
    assert any("class token" in e.label for e in at.main.get("expander"))
    bars = class_token_bars(at)
    assert bars is not None and len(bars["y"]) == 768
    rec = recorded[0]
    np.testing.assert_allclose(bars["y"], rec.class_token(BLOCK), rtol=1e-5, atol=1e-5)
    assert bars["marker"]["color"][0] == RED  # channel 0 selected

    at.session_state["act_cls"] = {"selection": {"points": [{"customdata": 300, "point_index": 300}]}}
    at.run()
    assert not at.exception
    assert at.number_input(key="act_channel").value == 300 and qp(at, "channel") == "300"
    assert any(h.value == "Channel 300" for h in at.main.subheader)
    colours = class_token_bars(at)["marker"]["color"]
    assert colours[300] == RED and colours.count(RED) == 1


def test_a_cnn_shows_no_class_token_view():
    at = open_page("activations.py")  # the bundled EfficientNet-Lite0
    assert class_token_bars(at) is None and not any("class token" in e.label for e in at.main.get("expander"))
    assert any(m.value.startswith("Each filter of a convolution layer") for m in at.main.markdown)


# ---------------------------------------------------------------- texts

def texts(at) -> str:
    parts = [e.value for kind in ("title", "markdown", "caption") for e in at.main.get(kind)]
    return "\n".join(parts + [m.proto.help for m in at.main.get("metric")])


# page: (URL, the lazy tab to open, sentences only true of a CNN)
CNN_ONLY = {
    "home.py": ({}, None, ["look inside a convolutional network", "A CNN slides small learned filters",
                           "residual, Inception, dense blocks", "where CNNs break."]),
    "activations.py": ({"layer": BLOCK}, ("act_view", "Depth summary"),
                       ["Each filter of a convolution layer", "maps shrink and multiply", "the ReLUs set to zero"]),
    "filters.py": ({}, None, ["A first-layer filter looks straight at pixels"]),
    "convolution.py": ({}, ("cv_view", "One unit of the network"),
                       ["BatchNorm, ReLU or another activation", "Pick a convolution or pooling layer"]),
    "adversarial.py": ({"steps": "1"}, ("adv_view", "Where the decision moved"), ["Grad-CAM (last spatial layer)"]),
}


@pytest.mark.parametrize("page", CNN_ONLY)
def test_a_vit_gets_no_cnn_only_sentences(page):
    url, tab, sentences = CNN_ONLY[page]
    at = open_page(page, model=VIT, **url)
    if tab:
        at.session_state[tab[0]] = tab[1]
        at.run()
        assert not at.exception
    shown = texts(at)
    assert [s for s in sentences if s in shown] == []
    if page == "filters.py":  # the patch embedding's filters: what they are in a ViT
        assert "the only convolution in a ViT" in shown and "linear embedding of each patch" in shown
