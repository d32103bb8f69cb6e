"""Receptive fields of vision transformers (random-init ViT-B/16 and Swin-T: nothing downloaded):
the table on the patch grid, a token's effective field, the page and its CNN-vs-ViT depth chart."""
import json

import numpy as np
import pytest
import torch

from cnnviz import bounds, models
from cnnviz import receptive as R
from cnnviz.cli import main
from cnnviz.hooks import Recorder

from .apptest import open_page, qp

VIT, SWIN = "torchvision:vit_b_16@random", "torchvision:swin_t@random"
BLOCK = "encoder.layers.encoder_layer_{}"


@pytest.fixture(scope="module")
def vit():
    return models.load(VIT)


@pytest.fixture(scope="module")
def swin():
    return models.load(SWIN)


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.net.modules())


def _rows(model):
    return {r.name: r for r in R.architecture(model)}


def test_vit_table_patch_embedding_then_the_whole_image_from_the_first_attention(vit):
    rows = _rows(vit)
    stem = rows["conv_proj"]
    assert (stem.kernel, stem.stride, stem.shape) == ((16, 16), (16, 16), (768, 14, 14))
    assert stem.field.size == (16, 16) and stem.field.jump == (16, 16) and stem.field.box(13, 0) == (208, 0, 224, 16)
    assert rows[BLOCK.format(0) + ".ln_1"].field.size == (16, 16)  # before the first attention: its patch
    for k in range(12):
        block = rows[BLOCK.format(k)]
        assert block.block and block.shape == (768, 14, 14)
        assert block.field.size == (224, 224) and block.field.jump == (16, 16) and block.field.start == (7.5, 7.5)
        assert "every token sees every patch" in block.note
        assert {block.field.box(i, j) for i, j in ((0, 0), (13, 13), (5, 9))} == {(0, 0, 224, 224)}
        attention = rows[BLOCK.format(k) + ".self_attention"]
        assert attention.attention and not attention.layer and "every token sees every patch" in attention.note
    # the head reads the class token: its one unit sees the image, not the tokens' padded windows
    assert rows["heads.head"].field.box(0, 0) == (0, 0, 224, 224)
    # the recorder's layers, names and shapes, are the table's
    assert [(l.name, l.shape) for l in vit.layers] == [(r.name, r.shape) for r in rows.values() if r.layer]
    table = R.run(vit, None, R.TableSpec())
    assert table.whole_at()[:2] == (3, BLOCK.format(0) + ".ln_2")  # conv_proj, ln_1, then after the attention
    assert table.transformer and table.default_layer() == BLOCK.format(7)
    with pytest.raises(R.RFError, match="cannot take a 160x160 input"):  # ViT is built for one size
        R.run(vit, None, R.TableSpec((160, 160)))
    assert no_hooks(vit)


def _independent_erf(model, x, block, y, x_, channel=None):
    """|d token (y, x) of `block` / d normalized input| summed over colours, from a hook of our own."""
    xg = model.normalize(x).detach().clone().requires_grad_(True)
    seen = {}
    handle = model.net.get_submodule(block).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    try:
        model.net(xg)
    finally:
        handle.remove()
    token = seen["out"][:, 1 + y * 14 + x_, :]  # the class token first, then the patches row by row
    (g,) = torch.autograd.grad(token.sum() if channel is None else token[:, channel].sum(), xg)
    return g.abs().sum(1)[0].numpy()


def test_a_tokens_effective_field_equals_an_independent_computation(vit, cat):
    layer = BLOCK.format(3)
    x = vit.to_pixels(cat)
    for channel in (None, 17):
        got = R.run(vit, cat, R.EffectiveSpec(layer, 2, 9, channel))
        want = _independent_erf(vit, x, layer, 2, 9, channel)
        assert got.effective.map.shape == (224, 224) and want.max() > 0
        np.testing.assert_allclose(got.effective.map, want, rtol=1e-5, atol=1e-6 * want.max())
        assert got.unit.box_clipped == (0, 0, 224, 224)  # the whole image, after attention
        assert got.effective.box90 is not None
    assert no_hooks(vit)


def test_cli_rf_on_a_vit_block(capsys, samples, vit, monkeypatch):
    monkeypatch.setattr(models, "load", lambda *a, **k: vit)  # the module's copy: no second build
    assert main(["rf", "--model", VIT, "--layer", BLOCK.format(11), "--y", "0", "--x", "13",
                 "--image", str(samples["cat"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["unit"] == [0, 13] and d["size"] == [224, 224] and d["jump"] == [16, 16]
    assert d["box"] == d["box_clipped"] == [0, 0, 224, 224] and d["erf_box90"]


def test_depth_curve_of_a_vit_patch_embedding_then_blocks(vit, cat):
    d = R.run(vit, cat, R.DepthSpec(points=2))
    assert d.layers == ["conv_proj", BLOCK.format(11)]  # what a token is: its blocks
    assert d.theoretical == [16, 224] and d.effective[0] == 16  # a patch's gradient stays in its patch
    assert 16 < d.effective[1] <= 224
    layers = list(R.rows_by_name(R.table(vit)))
    assert d.depth == [(layers.index(n) + 1) / len(layers) for n in d.layers]
    # the same numbers as one unit's effective field (one code path)
    one = R.run(vit, cat, R.EffectiveSpec(BLOCK.format(11)))
    assert d.effective[1] == one.summary()["effective"][0]
    for bad in (1, bounds.MAX_DEPTH_POINTS + 1, 2.5):
        with pytest.raises(R.RFError):
            R.DepthSpec(points=bad).check(vit)
    assert no_hooks(vit)


def test_swin_windows_grow_the_field_window_by_window(swin):
    rows = _rows(swin)
    assert rows["features.0.0"].field.size == (4, 4) and rows["features.0.0"].field.jump == (4, 4)
    # a 7x7 window: a token shares it with tokens up to 6 away (the bound), 4 px a token
    assert rows["features.1.0"].field.size == (4 + 2 * 6 * 4,) * 2 == (52, 52)
    assert rows["features.1.1"].field.size == (100, 100) and "shifted by 3x3" in rows["features.1.1"].note
    assert "a bound" in rows["features.1.0"].note
    merge = rows["features.2.norm"]  # patch merging: 2x2 neighbours, stride 2
    assert merge.field.size == (104, 104) and merge.field.jump == (8, 8) and merge.shape == (384, 28, 28)
    last = rows["features.7.0"]  # 7x7 map in one 7x7 window: every token sees the whole image
    assert last.field.size == (224, 224) and last.field.box(6, 0) == (0, 0, 224, 224)
    assert "whole 7x7 map" in last.note
    assert [(l.name, l.shape) for l in swin.layers] == [(r.name, r.shape) for r in rows.values() if r.layer]
    # The bound holds against the gradient, and shifted windows really grow the field: after
    # the shifted block, token (6, 6) sees the tokens 0..13 (its shifted window's tokens'
    # windows), 56 px, where one window was 28.
    probes = [("features.1.0", (6, 6)), ("features.1.1", (6, 6)), ("features.3.0", (0, 27))]
    x = torch.randn(len(probes), 3, 224, 224, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with Recorder(swin, sorted({l for l, _ in probes}), detach=False) as rec, torch.enable_grad():
        swin.net(x)
        (g,) = torch.autograd.grad(sum(rec.outputs[l][b, :, i, j].sum() for b, (l, (i, j)) in enumerate(probes)), x)
    support = []
    for b, (layer, ij) in enumerate(probes):
        a = g[b].abs().sum(0)
        ys, xs = np.nonzero((a > a.max() * 1e-6).numpy())  # the shift's mask leaves e^-100, not 0
        support.append((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1))
        t, l, bt, r = R.unit(list(rows.values()), layer, *ij).box_clipped
        assert t <= support[-1][0] and l <= support[-1][1] and support[-1][2] <= bt and support[-1][3] <= r, layer
    assert support[:2] == [(0, 0, 28, 28), (0, 0, 56, 56)]
    assert no_hooks(swin)


# ---------------------------------------------------------------- the page

def metrics(at) -> dict:
    return {m.label: m.value for m in at.main.metric}


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.main.get("plotly_chart")]


def test_page_on_a_vit_block_shows_a_tokens_effective_field(vit, cat):
    at = open_page("receptive_fields.py", model=VIT, layer=BLOCK.format(4), y="3", x="10")
    assert not at.error, [e.value for e in at.error]
    text = " ".join(m.value for m in at.markdown)
    assert "first attention lets every token see every patch" in text and "stacked 3x3" not in text
    assert at.selectbox(key="rf_layer").value == BLOCK.format(4)
    s = R.run(vit, cat, R.EffectiveSpec(BLOCK.format(4), 3, 10)).summary()
    shown = metrics(at)
    assert shown["Theoretical field (in the image)"] == "224 x 224 px"
    assert shown["Effective field (90% of mass)"] == f"{s['effective'][0]} x {s['effective'][1]} px"
    assert any("sees the whole image, so the red box is the image" in c.value for c in at.main.caption)
    at.session_state["rf_map"] = {"selection": {"points": [{"customdata": [13, 0]}]}}  # click a token
    at.run()
    assert not at.exception and not at.error
    assert (qp(at, "y"), qp(at, "x")) == ("13", "0") and "Effective field (90% of mass)" in metrics(at)
    at.session_state["rf_view"] = "Architecture"  # lazy tabs: the table is drawn in its own
    at.run()
    assert any("every token sees every patch" in i.value for i in at.info)  # the table's attention rows
    listing = at.main.dataframe[-1].value
    stem = listing[listing["layer"] == "conv_proj"].iloc[0]
    assert (stem["kernel"], stem["stride"], stem["field"], stem["output"]) == ("16 x 16", "16 x 16", "16 x 16",
                                                                               "768 x 14 x 14")


def test_depth_chart_compares_a_cnn_with_a_vit_and_back():
    at = open_page("receptive_fields.py", compare=VIT)  # the bundled CNN against ViT-B/16
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["rf_view"] == "Architecture"  # the link opens the tab that draws the comparison
    assert at.toggle(key="rf_compare_on").value and qp(at, "compare") == VIT
    fig = next(c for c in charts(at) if c["layout"].get("xaxis", {}).get("title", {}).get("text", "").startswith("depth"))
    names = [t.get("name") for t in fig["data"]]
    assert "EfficientNet-Lite0" in names and "ViT-B/16 (random init)" in names
    vit_trace = fig["data"][names.index("ViT-B/16 (random init)")]
    assert vit_trace["y"][:3] == [16, 16, 224]  # patch, ln_1, then the whole image after the first attention
    assert any("from layer 3 of 75" in c.value for c in at.main.caption)
    at.button(key="rf_depth_go").click().run()  # the effective curves, both networks
    assert not at.exception and not at.error
    names = [t.get("name") for c in charts(at) for t in c["data"]]
    assert "ViT-B/16 (random init): effective" in names and "EfficientNet-Lite0: effective" in names


def test_a_transformer_compares_with_the_bundled_cnn_by_default_and_a_bad_link_says_so():
    at = open_page("receptive_fields.py", model=SWIN, compare="torchvision:nope")
    assert not at.error, [e.value for e in at.error]
    assert any("compare='torchvision:nope' is not used" in i.value for i in at.info)
    at.session_state["rf_view"] = "Architecture"
    at.run()
    assert not at.toggle(key="rf_compare_on").value and "compare" not in at.query_params
    assert at.selectbox(key="rf_compare").value == models.BUNDLED_ID  # what the toggle would compare with
    assert "inside its 7 x 7 window" in " ".join(m.value for m in at.markdown)
    assert at.selectbox(key="rf_layer").value.startswith("features.")  # a Swin block by default
