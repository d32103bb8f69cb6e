import json

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import models
from cnnviz import receptive as R
from cnnviz.cli import main
from cnnviz.contract import Progress
from cnnviz.hooks import Recorder
from cnnviz.images import load_image


# ---------------------------------------------------------------- arithmetic on small nets

def _field_of(net, layer, size=(32, 32)):
    m = models.Model("tiny", net.eval(), ["a"], (0,) * 3, (1,) * 3, size, size[0])
    return R.fields(m)[layer]


def test_two_3x3_convs_see_5x5_and_stride_speeds_growth():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    fs = {n: _field_of(net, n) for n in ("0", "1", "2", "3")}
    assert [f.size for f in fs.values()] == [(3, 3), (5, 5), (7, 7), (11, 11)]  # +2, +2, +2, then +4
    assert fs["3"].jump == (2, 2) and fs["3"].start == (0.0, 0.0)
    assert fs["1"].box(0, 0) == (-2, -2, 3, 3)  # reaches 2 pixels into the padding


def test_dilation_valid_padding_and_pool():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2), nn.MaxPool2d(2), nn.Conv2d(4, 4, (1, 3)))
    f = _field_of(net, "2")
    # dilated 3x3 spans 5; pool 2 adds 1 (jump 1) -> 6, jump 2; a 1x3 adds 4 on x only
    assert f.size == (6, 10) and f.jump == (2, 2) and f.start == (2.5, 4.5)
    assert f.box(1, 1) == (2, 2, 8, 12)


def test_merge_takes_union_and_names_disagreeing_jumps():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 5, padding=2), nn.Conv2d(3, 4, 1)
            self.c, self.d = nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 17)

        def forward(self, x):
            y = self.a(x) + self.b(x)
            z = torch.cat([self.c(y), self.d(y)], 1)  # 16x16 both, jumps 2 and 1
            return z[:, :, ::2]

    m = models.Model("tiny", Branchy().eval(), ["a"], (0,) * 3, (1,) * 3, (32, 32), 32)
    rows = R.architecture(m)
    add, cat = (next(r for r in rows if r.type == t) for t in ("add", "cat"))
    assert add.field.size == (5, 5) and add.field.jump == (1, 1) and not add.note
    assert cat.note.startswith("branches disagree on jump (1, 2)") and cat.field.size == (22, 22)  # union of [-3, 4) and [-2, 19)
    assert [r.name for r in rows if r.layer] == ["a", "b", "c", "d"]


def test_channels_last_blocks_keep_their_field():
    from torchvision.ops.misc import Permute

    class Block(nn.Module):  # ConvNeXt's pattern: depthwise conv, then channels-last norm and MLP
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 7, padding=3, groups=4)
            self.block = nn.Sequential(Permute([0, 2, 3, 1]), nn.LayerNorm(4), nn.Linear(4, 4), Permute([0, 3, 1, 2]))

        def forward(self, x):
            return self.block(self.dw(x)) + x

    m = models.Model("tiny", nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), Block()).eval(), ["a"], (0,) * 3,
                     (1,) * 3, (32, 32), 32)
    fs = R.fields(m)
    assert fs["1.block.2"] == fs["1.block.3"] == fs["1.dw"] and fs["1.dw"].size == (14, 14)
    assert not [r.note for r in R.architecture(m) if r.note]


def test_an_op_the_arithmetic_cannot_follow_is_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    m = models.Model("tiny", net.eval(), ["a"], (0,) * 3, (1,) * 3, (32, 32), 32)
    rows = {r.name: r for r in R.architecture(m)}
    assert rows["2"].field is None and "Upsample" in rows["2"].note
    assert "2" not in R.fields(m) and "0" in R.fields(m)


def test_other_sessions_forward_passes_run_while_a_model_is_traced():
    """fx replaces nn.Module.__call__ for the whole process while it traces; a pass of
    another model in another thread (another browser session) must run as usual."""
    import threading

    other = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        want = other(x)
    seen = []

    class Meanwhile(nn.Module):  # a container, so fx traces into it: the patch is active here
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, t):
            def run():
                with torch.no_grad():
                    seen.append(other(x))
            worker = threading.Thread(target=run)
            worker.start()
            worker.join()
            return self.conv(t)

    fs = _field_of(nn.Sequential(Meanwhile(), nn.Conv2d(4, 4, 3)), "1")
    assert fs.size == (5, 5)
    assert len(seen) == 1 and torch.equal(seen[0], want)


# ---------------------------------------------------------------- the independent check

class Same(nn.Module):
    """The identity as a new tensor (nn.Identity would alias its input, which a later
    `+=` then changes under the recorded output)."""

    def forward(self, x):
        return x + 0


class MeanLinear(nn.Module):
    """A Linear layer whose weights are all 1/in_features, without the weight matrix
    (VGG's 25088x4096 would cost a gigabyte in float64)."""

    def __init__(self, out_features):
        super().__init__()
        self.out_features = out_features

    def forward(self, x):
        return x.mean(-1, keepdim=True).expand(*x.shape[:-1], self.out_features)


def make_positive(net: nn.Module, dtype=torch.float64) -> nn.Module:
    """Turn a test-owned network, in place, into float64 with positive averaging weights,
    zero biases, identity activations and max-pools made average pools: every path from
    input to unit then carries a positive gradient, so the gradient's support is exactly
    the set of pixels the unit depends on. float64, because through DenseNet's ~60 stacked
    convolutions a corner pixel's share, about 9^-60, would underflow float32."""
    for parent in list(net.modules()):
        for name, m in list(parent.named_children()):
            if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.Hardtanh)):
                setattr(parent, name, Same())
            elif type(m) is nn.MaxPool2d:
                assert m.dilation in (1, (1, 1))
                setattr(parent, name, nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode))
            elif isinstance(m, nn.Linear):
                setattr(parent, name, MeanLinear(m.out_features))
    net = net.to(dtype).eval()
    for m in net.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            m.weight.data.fill_(1 / m.weight[0].numel())
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.fill_(1), m.bias.data.zero_(), m.running_mean.zero_(), m.running_var.fill_(1)
    return net


def gradient_boxes(net, size, probes):
    """Bounding box of the input-gradient support of each (layer, (i, j)) probe, and
    whether the support fills it; one forward and backward, one batch item per probe.
    The input is positive, so F.relu inside forward passes everything too."""
    x = torch.ones(len(probes), 3, *size, dtype=next(net.parameters()).dtype, requires_grad=True)
    with Recorder(net, sorted({l for l, _ in probes}), detach=False) as rec, torch.enable_grad():
        net(x)
        target = 0
        for b, (layer, (i, j)) in enumerate(probes):
            out = rec.outputs[layer]
            assert out._version == 0, f"{layer} is changed in place: its gradient is not its own"
            target = target + (out[b, :, i, j].sum() if out.ndim == 4 else out[b].sum())
        (g,) = torch.autograd.grad(target, x)
    result = []
    for b in range(len(probes)):
        support = g[b].abs().sum(0) > 0
        ys, xs = np.nonzero(support.numpy())
        box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
        result.append((box, bool(support[box[0]:box[2], box[1]:box[3]].all())))
    return result


CASES = [  # model, input size (odd and non-square where it tests padding), layers
    ("torchvision:alexnet@random", (127, 131), ["features.0", "features.5", "features.12", "classifier.6"]),
    ("torchvision:vgg16@random", (40, 44), ["features.2", "features.16", "features.28"]),
    ("torchvision:resnet18@random", (97, 96), ["maxpool", "layer2.0.conv1", "layer3.1.relu#1", "layer4.1.conv2"]),
    ("torchvision:googlenet@random", (96, 101), ["conv2.conv", "inception3b.branch4.1.conv", "inception4e.branch3.1.conv", "inception5b.branch2.1.conv"]),
    ("torchvision:densenet121@random", (64, 64), ["features.pool0", "features.denseblock2.denselayer12.conv2", "features.transition3.pool", "features.denseblock4.denselayer16.conv2"]),
    ("efficientnet_lite0", (113, 97), ["_conv_stem", "_blocks.3._depthwise_conv", "_blocks.10._depthwise_conv", "_swish#1", "_fc"]),
]


@pytest.mark.parametrize("model_id, size, layers", CASES, ids=[c[0] for c in CASES])
def test_box_equals_gradient_support(model_id, size, layers):
    model = models.load(model_id)  # our own instance: make_positive changes it
    rows = R.architecture(model, size)
    probes, expected = [], []
    for layer in layers:
        for ij in _positions(R.check_layer(rows, layer)):
            u = R.unit(rows, layer, *ij, input_size=size)
            probes.append((layer, ij))
            expected.append(u.box_clipped)
    # VGG's 13 layers cannot underflow float32, which halves the slowest case
    dtype = torch.float32 if "vgg" in model_id else torch.float64
    got = gradient_boxes(make_positive(model.net, dtype), size, probes)
    for (layer, ij), want, (box, full) in zip(probes, expected, got):
        assert box == want, f"{model_id} {layer} unit {ij}: analytic {want}, gradient support {box}"
        assert full, f"{model_id} {layer} unit {ij}: gradient support has holes"
    # the deeper probes reach into the padding, so clipping was exercised
    assert any(R.unit(rows, l, *ij, input_size=size).box != b for (l, ij), b in zip(probes, expected))


def _positions(row):
    h, w = row.shape[1:] if len(row.shape) == 3 else (1, 1)
    return sorted({(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 3)})  # corners included


def test_where_the_image_clip_alone_disagrees_with_the_gradient():
    # The one disagreement: AlexNet at width 131. conv1 (11x11, stride 4) has 32 columns but
    # the 3x3 stride-2 max-pool after it uses only 31 of them, so input columns 129 and 130
    # reach no unit of any later layer. The box clipped to the image still holds them;
    # box_clipped (the box inside the layer's extent) does not, and matches the gradient.
    model = models.load("torchvision:alexnet@random")
    rows = R.architecture(model, (127, 131))
    u = R.unit(rows, "features.5", 0, 6, input_size=(127, 131))
    assert R.clip(u.box, (127, 131))[3] == 131 and u.box_clipped[3] == 129
    assert R.check_layer(rows, "features.0").extent == (0, 0, 127, 131)
    assert R.check_layer(rows, "features.2").extent[3] == 129


def test_every_layer_of_the_bundled_model_has_a_field_in_execution_order(bundled):
    rows = R.architecture(bundled)
    names = [r.name for r in rows if r.layer]
    assert names == [l.name for l in bundled.layers]  # incl. the shared ReLU6 as _swish#1
    fs = R.fields(bundled)
    assert fs["_swish"].size == (3, 3) and fs["_swish#1"].size == fs["_bn1"].size
    assert fs["_swish#1"].jump == (32, 32)
    head = next(r for r in rows if r.name == "_conv_head")
    assert head.kernel == (1, 1) and head.shape == (1280, 7, 7) and head.params == 320 * 1280
    # input-dependent TF "same" padding: 224 pads 0 before the stem, 225 pads 1
    assert next(r for r in rows if r.name == "_conv_stem").padding == (0, 0)
    odd = {r.name: r for r in R.architecture(bundled, (225, 225))}
    assert odd["_conv_stem"].padding == (1, 1) and R.fields(bundled, (225, 225))["_conv_stem"].start == (0.0, 0.0)


def test_squeeze_excitation_merge_is_global_and_says_so():
    model = models.load("torchvision:mobilenet_v3_large@random")
    rows = R.architecture(model, (96, 96))
    se = [r for r in rows if r.note.startswith("global")]
    assert se and all(r.type == "mul" for r in se)
    f = R.fields(model, (96, 96))["features.4.block.2.fc1"]  # inside the first SE block
    assert R.clip(f.box(0, 0), (96, 96)) == (0, 0, 96, 96)


def test_unit_checks_and_nearest_unit(bundled):
    rows = R.architecture(bundled)
    u = R.unit(rows, "_blocks.8._project_conv")
    assert u.unit == (6, 6) and u.shape == (14, 14)
    assert R.nearest_unit(u.field, u.shape, *u.centre) == u.unit
    assert R.nearest_unit(u.field, u.shape, -50, 1e4) == (0, 13)
    with pytest.raises(R.RFError, match="outside"):
        R.unit(rows, "_blocks.8._project_conv", 14, 0)
    with pytest.raises(R.RFError, match="Closest: _blocks.8._project_conv"):
        R.unit(rows, "_blocks.8._project_cnv")
    with pytest.raises(R.RFError, match="out of range"):
        R.architecture(bundled, (5, 5))


# ---------------------------------------------------------------- effective field

def test_mass_boxes_on_a_known_map():
    m = np.zeros((21, 21))
    m[10, 10], m[10, 14] = 1, 1
    b50, b90 = R.mass_boxes(m, (10.0, 10.0))
    assert b50 == (10, 10, 11, 11) and b90 == (6, 6, 15, 15)
    assert R.mass_boxes(np.zeros((4, 4)), (1.0, 1.0)) == [None, None]


def test_effective_field_lies_inside_the_box_and_is_smaller(bundled, samples):
    rows = R.architecture(bundled)
    x = load_image(samples["cat"])
    u = R.unit(rows, "_blocks.8._project_conv", 0, 0)  # a corner unit: part of its box is padding
    assert u.box[0] < 0 and u.box_clipped[:2] == (0, 0)
    eff = R.effective(bundled, x, u)
    ys, xs = np.nonzero(eff.map)
    t, l, b, r = u.box_clipped
    assert ys.min() >= t and xs.min() >= l and ys.max() < b and xs.max() < r
    s = R.summary(u, eff)
    assert eff.box50 and s["ratio"] < 0.8  # the effective field is much smaller (Luo et al.)
    one = R.effective(bundled, x, u, channel=3)
    assert not np.allclose(one.map, eff.map)
    with pytest.raises(R.RFError, match="Channel 999"):
        R.effective(bundled, x, u, channel=999)
    assert not bundled.net._forward_hooks and all(not m._forward_hooks for m in bundled.net.modules())


def test_average_over_noise_reports_progress_and_is_centred(bundled):
    rows = R.architecture(bundled)
    u = R.unit(rows, "_blocks.5._project_conv")
    seen = []
    spec = R.AverageSpec("_blocks.5._project_conv", source="noise", n=6, batch_size=4)
    eff = R.run(bundled, None, spec, progress=Progress(lambda f, text, _: seen.append(f))).effective
    assert seen == [4 / 6, 1.0] and eff.samples == 6
    cy, cx = np.unravel_index(np.argmax(eff.map), eff.map.shape)
    uy, ux = u.centre
    assert abs(cy - uy) <= 4 and abs(cx - ux) <= 4  # the mass peaks at the unit's centre


def test_mutated_layer_is_refused_with_a_hint(samples):
    model = models.load("torchvision:resnet18@random")
    rows = R.architecture(model)
    x = load_image(samples["cat"])
    with pytest.raises(R.RFError, match="changed in place"):
        R.effective(model, x, R.unit(rows, "layer1.0.bn2"))


# ---------------------------------------------------------------- CLI

def test_cli_rf_json(capsys, samples, tmp_path):
    out = tmp_path / "o.png"
    assert main(["rf", "--layer", "_blocks.8._project_conv", "--y", "0", "--x", "13",
                 "--image", str(samples["cat"]), "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["unit"] == [0, 13] and d["size"] == [211, 211] and d["jump"] == [16, 16]
    assert d["box"][0] < 0 < d["box"][2] and d["box_clipped"][0] == 0 and d["box_clipped"][3] == 224
    assert d["erf_box50"] and d["erf_box90"] and d["seconds"] >= 0 and out.stat().st_size > 0
    assert main(["rf", "--layer", "_conv_head", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["unit"] == [3, 3] and d["erf_box50"] is None
    assert main(["rf", "--all", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [l["name"] for l in d["layers"]][:2] == ["_conv_stem", "_bn0"]


def test_cli_rf_bad_input(capsys):
    assert main(["rf", "--layer", "nope"]) == 2
    assert "No layer 'nope'" in capsys.readouterr().err
    assert main(["rf", "--layer", "_conv_head", "--y", "9"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["rf"]) == 2


# ---------------------------------------------------------------- the contract

LAYER = "_blocks.8._project_conv"


def test_effective_takes_the_image_and_normalizes_inside(bundled, samples):
    image = load_image(samples["cat"])
    u = R.unit(R.table(bundled), LAYER, 0, 13)
    by_image = R.effective(bundled, image, u)
    by_pixels = R.effective(bundled, bundled.to_pixels(image), u)
    assert np.array_equal(by_image.map, by_pixels.map) and by_image.box90 == by_pixels.box90
    # the gradient with respect to the normalized input, taken here by hand
    x = bundled.preprocess(image).requires_grad_(True)
    with Recorder(bundled, [LAYER], detach=False) as rec, torch.enable_grad():
        bundled.net(x)
        (g,) = torch.autograd.grad(rec.outputs[LAYER][0, :, 0, 13].sum(), x)
    assert np.allclose(by_image.map, g.abs().sum(1)[0].numpy(), rtol=1e-6, atol=0)
    with pytest.raises(R.RFError, match="normalization happens inside"):  # was silently a wrong field
        R.effective(bundled, bundled.preprocess(image), u)


def test_specs_give_the_cli_json(capsys, bundled, samples):
    from cnnviz import jobs

    image = load_image(samples["cat"])
    got = jobs.run(bundled, image, R.EffectiveSpec(LAYER, 0, 13)).to_dict()
    assert main(["rf", "--layer", LAYER, "--y", "0", "--x", "13", "--image", str(samples["cat"]), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert got.pop("seconds") >= 0 and cli.pop("seconds") >= 0 and got == cli
    table = jobs.run(bundled, None, R.TableSpec()).to_dict()
    assert set(table) == {"model", "input_size", "layers", "seconds"} and table["input_size"] == [224, 224]
    assert [l["name"] for l in table["layers"]] == [l.name for l in bundled.layers]
    theory = jobs.run(bundled, None, R.UnitSpec(LAYER, 0, 13)).to_dict()
    assert theory["erf_box50"] is None and {k: v for k, v in theory.items() if not k.startswith(("erf", "sec"))} \
        == {k: v for k, v in cli.items() if not k.startswith("erf")}
    with pytest.raises(R.RFError, match="No layer 'nope' in this model"):
        jobs.run(bundled, None, R.UnitSpec("nope"))
    with pytest.raises(R.RFError, match="outside"):
        jobs.run(bundled, image, R.EffectiveSpec(LAYER, 14, 0))


def test_table_picks_units_as_the_page_does(bundled):
    t = R.run(bundled, None, R.TableSpec())
    assert t.place(LAYER, 99, 3) == (6, 3) and t.place(LAYER, None, None) == (6, 6)  # 14x14: out of range -> centre
    assert t.follow((LAYER, 0, 13), "_conv_head") == (0, 6) and t.follow(None, "_conv_head") is None
    assert t.default_layer() in t.spatial and "_fc" not in t.spatial
    ys, xs = t.centres(LAYER)
    assert len(ys) == len(xs) == 14 and ys[:2] == [15.0, 31.0]
    assert t.unit(LAYER, 0, 13) == R.unit(t.rows, LAYER, 0, 13)


def test_average_over_samples_matches_the_mean_of_single_images(bundled, samples):
    from cnnviz.samples import sample_paths

    spec = R.AverageSpec("_blocks.5._project_conv", 3, 4, channel=2, source="samples", batch_size=4)
    assert spec.passes(bundled) == len(sample_paths()) > 4  # a heavy job: the runner gives it a private copy
    avg = R.run(bundled, None, spec).effective
    u = R.unit(R.table(bundled), "_blocks.5._project_conv", 3, 4)
    each = [R.effective(bundled, load_image(p), u, channel=2).map for p in sample_paths().values()]
    assert avg.samples == len(each) and np.allclose(avg.map, np.mean(each, 0), rtol=1e-4, atol=1e-7)


def test_average_stops_within_one_batch_when_asked(bundled):
    from cnnviz.contract import Cancelled

    batches, at_stop = [], []

    def report(fraction, text, _):
        if not at_stop:
            at_stop.append(len(batches))
            progress.stop()

    progress = Progress(report)
    handle = bundled.net.register_forward_hook(lambda *a: batches.append(1))
    try:
        with pytest.raises(Cancelled):
            R.run(bundled, None, R.AverageSpec("_blocks.5._project_conv", source="noise", n=32, batch_size=4),
                  progress=progress)
    finally:
        handle.remove()
    assert at_stop and at_stop[0] >= 1 and len(batches) - at_stop[0] <= 1 and len(batches) < 8


def test_analyses_take_no_lock_themselves():
    """The job runner holds the model's lock (short jobs) or runs on a private copy."""
    import inspect

    from cnnviz import activations as A

    assert "with model.lock" not in inspect.getsource(R) and "with model.lock" not in inspect.getsource(A)
