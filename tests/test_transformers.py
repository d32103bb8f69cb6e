"""Vision transformers beside CNNs (random-init ViT-B/16 and Swin-T: nothing downloaded)."""
import copy
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import attention as A
from cnnviz import cli, jobs, models, saliency, tokens

from .apptest import open_page


@pytest.fixture(scope="module")
def vit():
    return models.load("torchvision:vit_b_16@random")


@pytest.fixture(scope="module")
def swin():
    return models.load("torchvision:swin_t@random")


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.net.modules())


def test_vit_blocks_are_layers_named_by_module_path_on_a_14x14_grid(vit):
    by_name = {l.name: l for l in vit.layers}
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert all(by_name[b].type == "EncoderBlock" and by_name[b].shape == (768, 14, 14) for b in blocks)
    assert by_name["conv_proj"].shape == (768, 14, 14)  # the patch embedding, a convolution
    assert by_name["heads.head"].shape == (1000,)
    order = [l.name for l in vit.layers]
    assert order.index(blocks[0]) < order.index(blocks[1])  # execution order
    assert no_hooks(vit)


def test_swin_channels_last_stages_are_recorded_channels_first(swin):
    by_name = {l.name: l for l in swin.layers}
    assert by_name["features.0.0"].shape == (96, 56, 56)  # the stem's conv, channels first already
    assert by_name["features.1.0"].type == "SwinTransformerBlock" and by_name["features.1.0"].shape == (96, 56, 56)
    assert by_name["features.7.1"].shape == (768, 7, 7)
    assert swin.gradcam_layer == "permute"  # the last map (the head pools it)
    assert no_hooks(swin)


def test_token_maps_keep_each_patch_in_place():
    g, c = 3, 5
    toks = torch.randn(2, 1 + g * g, c)
    vit_like = tokens.mapper(models.load("torchvision:vit_b_16@random").net)
    m = vit_like("encoder.ln", nn.LayerNorm(c), toks)
    assert m.shape == (2, c, g, g)
    for r in range(g):
        for col in range(g):
            assert torch.equal(m[:, :, r, col], toks[:, 1 + r * g + col])  # row by row, class token dropped
    assert tokens.grid(197) == 14 and tokens.grid(196) is None


def test_gradcam_on_a_vit_block_equals_an_independent_float64_computation(vit, cat):
    layer = "encoder.layers.encoder_layer_10"
    got = jobs.run(vit, cat, saliency.SaliencySpec("gradcam", target=3, layer=layer))
    net = copy.deepcopy(vit.net).double()
    kept = {}
    block = dict(net.named_modules())[layer]
    h = block.register_forward_hook(lambda m, i, o: kept.setdefault("t", o))
    x = vit.normalize(vit.to_pixels(cat)).double().requires_grad_(True)  # frozen weights: the input carries the graph
    with torch.enable_grad():
        logits = net(x)
        (grad,) = torch.autograd.grad(logits[0, 3], kept["t"])
    h.remove()
    t = kept["t"][0, 1:].detach()  # patches [196, 768]
    g = grad[0, 1:]
    cam = torch.relu((t * g.mean(0)).sum(1)).reshape(14, 14).numpy()  # weights: mean gradient per channel
    assert got.layer_map.shape == (14, 14) and cam.max() > 0
    np.testing.assert_allclose(got.layer_map, cam, rtol=1e-3, atol=1e-4 * cam.max())
    assert no_hooks(vit)


def test_vit_default_cam_layer_is_where_patches_still_reach_the_class(vit, cat):
    assert vit.gradcam_layer == "encoder.layers.encoder_layer_11.ln_1"
    got = jobs.run(vit, cat, saliency.SaliencySpec("gradcam"))
    assert got.layer == vit.gradcam_layer and got.layer_map.max() > 0
    after = jobs.run(vit, cat, saliency.SaliencySpec("gradcam", layer="encoder.ln"))
    assert after.layer_map.max() == 0  # after the last block only the class token counts: nothing to show


def test_guided_methods_are_refused_for_gelu(vit, cat):
    with pytest.raises(saliency.CnnvizError, match="(?i)gelu"):
        jobs.run(vit, cat, saliency.SaliencySpec("guided_backprop"))


def test_attention_weights_equal_the_modules_own(vit):
    mha = dict(vit.net.named_modules())["encoder.layers.encoder_layer_0.self_attention"]
    x = torch.randn(1, 197, 768)
    with torch.no_grad():
        _, want = mha(x, x, x, need_weights=True, average_attn_weights=False)
        got = A.attention_weights(mha, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(1, 12, 197))


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.equal(A.rollout([eye, eye, eye]), eye)
    a = torch.rand(5, 5, dtype=torch.float64).softmax(-1)
    one = (a + eye) / 2
    torch.testing.assert_close(A.rollout([a]), one / one.sum(-1, keepdim=True))
    torch.testing.assert_close(A.rollout([a, a]).sum(-1), torch.ones(5, dtype=torch.float64))


def test_attention_map_for_one_block_head_and_patch(vit, cat):
    r = jobs.run(vit, cat, A.AttentionSpec(block=2, head=5, patch=(3, 4)))
    assert r.grid == [14, 14] and r.map.shape == (14, 14) and r.query == "patch (3, 4)"
    assert 0 < r.map.sum() <= 1 + 1e-5  # a distribution over the patches (the class token has the rest)
    roll = jobs.run(vit, cat, A.AttentionSpec(rollout=True))
    assert roll.block == 11 and roll.head is None and 0.9 < roll.map.sum() <= 1 + 1e-5
    assert no_hooks(vit)


@pytest.mark.parametrize("spec, message", [
    (A.AttentionSpec(block=12), "block must be"),
    (A.AttentionSpec(head=12), "head must be"),
    (A.AttentionSpec(patch=(14, 0)), "row must be"),
    (A.AttentionSpec(head=1, rollout=True), "leave the head out"),
    (A.AttentionSpec(block=float("nan")), "block must be"),
])
def test_attention_requests_out_of_range_are_refused(vit, cat, spec, message):
    with pytest.raises(A.AttentionError, match=message):
        jobs.run(vit, cat, spec)


def test_attention_is_refused_with_the_reason_on_cnns_and_swin(bundled, swin, cat):
    with pytest.raises(A.AttentionError, match="CNN has no attention"):
        jobs.run(bundled, cat, A.AttentionSpec())
    with pytest.raises(A.AttentionError, match="windows"):
        jobs.run(swin, cat, A.AttentionSpec())


def test_cli_attention_json(samples, capsys):
    rc = cli.main(["attention", str(samples["cat"]), "--model", "torchvision:vit_b_16@random", "--block", "4",
                   "--patch", "7", "7", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and {"model", "block", "head", "grid", "map", "seconds"} <= set(out)
    assert out["block"] == 4 and out["grid"] == [14, 14] and np.asarray(out["map"]).shape == (14, 14)


def test_a_vit_checkpoint_with_a_10_class_head_loads_with_labels(cat):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.vit_b_16(num_classes=10)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    labels = [f"class {i}" for i in range(10)]
    m = models.load_checkpoint("vit_b_16", buf.getvalue(), "vit-ft.pt", labels)
    assert m.categories == labels and m.net.heads.head.out_features == 10
    top = jobs.run(m, cat, __import__("cnnviz.predict", fromlist=["PredictSpec"]).PredictSpec(3)).top
    assert len(top) == 3 and top[0].label in labels


@pytest.mark.parametrize("model_id", ["torchvision:vit_b_16@random", "torchvision:resnet18@random"])
def test_a_link_opens_an_untrained_model(model_id):
    at = open_page("activations.py", model=model_id)
    assert at.session_state["model_id"] == model_id
    assert not at.warning or all("link" not in w.value for w in at.warning)


def test_a_link_to_an_unknown_or_oversized_model_says_so():
    at = open_page("activations.py", model="torchvision:vit_h_14")
    assert at.session_state["model_id"] == models.BUNDLED_ID
    assert any("larger than this server loads" in w.value for w in at.warning)
    at = open_page("activations.py", model="torchvision:nope@random")
    assert any("not a model this app knows" in w.value for w in at.warning)


PAGES = ["home.py", "convolution.py", "activations.py", "saliency.py", "filters.py", "receptive_fields.py", "adversarial.py", "limits.py"]


@pytest.mark.parametrize("model_id", ["torchvision:vit_b_16@random", "torchvision:swin_t@random"])
@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_on_a_transformer(page, model_id):
    at = open_page(page, model=model_id)
    assert at.session_state["model_id"] == model_id
    assert not at.error, [e.value for e in at.error]


def test_the_attention_view_from_a_link():
    at = open_page("saliency.py", model="torchvision:vit_b_16@random", view="Attention (transformers)",
                   block="5", head="2", patch="3,4")
    assert any("where the patch (3, 4) looks" in c.value for c in at.caption)
    assert (at.query_params["block"], at.query_params["head"], at.query_params["patch"]) == ("5", "2", "3,4")
    at = open_page("saliency.py", model="torchvision:vit_b_16@random", view="Attention (transformers)", rollout="1")
    assert any("Agreement with Grad-CAM" in c.value for c in at.caption)
    at = open_page("saliency.py", view="Attention (transformers)")  # a CNN: the reason, and what to pick
    assert any("CNN has no attention" in i.value for i in at.info)
