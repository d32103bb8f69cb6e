"""How a convolution computes (issue #16), backend: one unit worked out by hand equals what
the network recorded; the output-size rule agrees with torch; costs, coverage, softmax; the CLI."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import activations as A
from cnnviz import arithmetic, hooks, models
from cnnviz import unit as U
from cnnviz.contract import CnnvizError
from cnnviz.model import Model, finish

from .test_cli import cli
from cnnviz.cli import main

CONV_KINDS = ("convolution", "depthwise", "grouped")


def _convs(model):
    mods = model.layer_modules
    return [n for n in U.unit_layers(model) if U.kind_of(mods[hooks.split_call(n)[0]]) in CONV_KINDS]


def _shape(model, layer):
    return next(l.shape for l in model.layers if l.name == layer)


@pytest.mark.parametrize("model_id", [models.BUNDLED_ID, "torchvision:resnet18@random", "torchvision:vgg16@random",
                                      "torchvision:mobilenet_v2@random"])
def test_worked_value_equals_the_recorded_activation(model_id, cat):
    """First, middle and last convolutions; corner, edge and centre units; first and last channel."""
    model = models.load(model_id)
    convs = _convs(model)
    kinds = set()
    depthwise = [n for n in convs if U.kind_of(model.layer_modules[n]) == "depthwise"]
    for layer in (convs[0], convs[len(convs) // 2], convs[-1], *depthwise[len(depthwise) // 2:][:1]):
        C, H, W = _shape(model, layer)
        for y, x in ((0, 0), (0, W // 2), (H // 2, W // 2), (H - 1, W - 1), (H // 2, 0)):
            for c in (0, C - 1):
                u = U.run(model, cat, U.UnitSpec(layer, y, x, c))
                kinds.add(u.kind)
                assert u.agrees, (layer, y, x, c, u.worked, u.recorded, u.error)
                assert u.error < 1e-4
                # `recorded` is what the Activations page shows at the last step's layer
                last = u.steps[-1]["name"]
                assert u.recorded == float(A.compute(model, cat, [last])[last][c, y, x])
                # every step is checked, not only the last one
                for s in u.steps:
                    assert abs(s["value"] - s["recorded"]) <= 1e-4 * max(abs(s["recorded"]), 1e-2 * u.scale)
                assert abs(sum(u.channel_sums) + u.bias - u.pre_activation) < 1e-9
                assert np.allclose(u.products.sum((1, 2)), u.channel_sums)
    if model_id.startswith("torchvision:mobilenet_v2"):
        assert "depthwise" in kinds


def test_depthwise_units_read_only_their_own_channel(cat):
    model = models.load("torchvision:mobilenet_v2@random")
    dw = next(n for n in _convs(model) if U.kind_of(model.layer_modules[n]) == "depthwise")
    u = U.run(model, cat, U.UnitSpec(dw, 3, 4, 7))
    assert u.channels == [7] and u.patch.shape == (1, 3, 3) and u.agrees
    full = U.run(model, cat, U.UnitSpec(_convs(model)[0], 0, 0, 5))
    assert full.channels == [0, 1, 2] and full.kind == "convolution"


def test_the_bundled_models_same_padding_is_asymmetric_and_reached(bundled, cat):
    """EfficientNet-Lite pads 'same' in its own forward: one row and column at the bottom
    and right only for a 3x3 stride-2 stem on 224 px. The corner units read that padding."""
    C, H, W = _shape(bundled, "_conv_stem")
    last = U.run(bundled, cat, U.UnitSpec("_conv_stem", H - 1, W - 1, 3))
    assert last.padding == (0, 0, 1, 1)
    assert last.box == (222, 222, 225, 225)  # one row and column past the 224-px image
    assert last.agrees and np.all(last.patch[:, -1, :] == 0) and np.all(last.patch[:, :, -1] == 0)
    first = U.run(bundled, cat, U.UnitSpec("_conv_stem", 0, 0, 3))
    assert first.box[:2] == (0, 0) and first.agrees
    assert [s["type"] for s in first.steps] == ["Conv2dDynamicSamePadding", "BatchNorm2d", "ReLU6"]


def test_a_residual_sum_ends_the_chain(cat):
    """ResNet's second conv of a block goes through bn2, then `out += identity`: the ReLU
    after that sum is not a step of this unit's number."""
    model = models.load("torchvision:resnet18@random")
    u = U.run(model, cat, U.UnitSpec("layer1.0.conv2", 5, 5, 3))
    assert [s["name"] for s in u.steps] == ["layer1.0.conv2", "layer1.0.bn2"] and u.agrees
    u1 = U.run(model, cat, U.UnitSpec("layer1.0.conv1", 5, 5, 3))
    assert [s["name"] for s in u1.steps] == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu"] and u1.agrees


def test_pooling_units(cat):
    model = models.load("torchvision:resnet18@random")
    m = U.run(model, cat, U.UnitSpec("maxpool", 0, 0, 2))
    assert m.kind == "max pooling" and m.agrees and m.box == (-1, -1, 2, 2)  # 3x3, stride 2, padding 1
    inp = hooks.record_io(model, model.preprocess(cat), ["maxpool"])["maxpool"][0][0, 2].double()
    assert m.worked == float(inp[0:2, 0:2].max())  # the padding (minus infinity) never wins
    r, c = m.winner
    assert inp[r, c] == m.worked and 0 <= r < 2 and 0 <= c < 2
    a = U.run(model, cat, U.UnitSpec("avgpool", 0, 0, 9))
    assert a.kind == "average pooling" and a.divisor == 49 and a.agrees


class _Odd(nn.Module):
    """Layers whose every option the unit arithmetic must follow: reflect and 'same'
    padding, groups, dilation, ceil_mode windows past the edge, count_include_pad."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect", dilation=2)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.group = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.gelu = nn.GELU()
        self.pool = nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.avg2 = nn.AvgPool2d(2, 3, padding=1, ceil_mode=True)
        self.wide = nn.Conv2d(8, 4, (3, 1), stride=(1, 2), padding=(2, 0))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        x = self.avg2(self.avg(self.pool(self.gelu(self.group(x)))))
        return self.head(self.wide(x).mean((2, 3)))


@pytest.fixture(scope="module")
def odd():
    torch.manual_seed(0)
    net = _Odd()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return finish(Model("odd", net, ["a", "b"], (0.5,) * 3, (0.25,) * 3, (29, 29), 29, label="odd"))


def test_every_layer_option_of_a_crafted_network(odd):
    image = torch.rand(1, 3, 29, 29, generator=torch.Generator().manual_seed(1))
    assert U.unit_layers(odd) == ["conv", "group", "pool", "avg", "avg2", "wide"]
    seen = 0
    for layer in U.unit_layers(odd):
        C, H, W = _shape(odd, layer)
        for y in {0, H // 2, H - 1}:
            for x in {0, W // 2, W - 1}:
                for c in {0, C - 1}:
                    u = U.run(odd, image, U.UnitSpec(layer, y, x, c))
                    assert u.agrees, (layer, y, x, c, u.worked, u.recorded)
                    seen += 1
    assert seen > 60
    g = U.run(odd, image, U.UnitSpec("group", 1, 1, 5))
    assert g.kind == "grouped" and g.channels == [4, 5]
    first = U.run(odd, image, U.UnitSpec("conv", 0, 0, 0))
    assert [s["type"] for s in first.steps] == ["Conv2d", "BatchNorm2d", "SiLU"] and first.padding == (2, 2, 2, 2)


def test_bad_units_are_refused_with_a_reason(bundled, cat):
    with pytest.raises(CnnvizError, match="at most 111"):
        U.UnitSpec("_conv_stem", 999, 0).check(bundled)
    with pytest.raises(CnnvizError, match="channel"):
        U.UnitSpec("_conv_stem", 0, 0, 32).check(bundled)
    with pytest.raises(CnnvizError, match="_conv_stem"):
        U.UnitSpec("_conv_stemm").check(bundled)  # a typo: the closest names are offered
    with pytest.raises(CnnvizError):
        U.UnitSpec("_bn0").check(bundled)  # not a convolution or pooling layer
    with pytest.raises(CnnvizError):
        U.UnitSpec("_conv_stem", float("nan"), 0).check(bundled)
    spec = U.UnitSpec().check(bundled)
    assert (spec.layer, spec.y, spec.x, spec.channel) == ("_conv_stem", 56, 56, 0)


def test_a_vision_transformers_patch_embedding(cat):
    model = models.load("torchvision:vit_b_16@random")
    u = U.run(model, cat, U.UnitSpec("conv_proj", 13, 0, 767))
    assert u.patch.shape == (3, 16, 16) and u.box == (208, 0, 224, 16) and u.agrees


# ---------------------------------------------------------------- the arithmetic

def test_the_output_size_rule_agrees_with_torch_on_600_layers():
    rng = np.random.default_rng(0)
    checked = inexact = none = 0
    for _ in range(600):
        W, Fk, P, S, D = (int(rng.integers(1, 41)), int(rng.integers(1, 8)), int(rng.integers(0, 5)),
                          int(rng.integers(1, 6)), int(rng.integers(1, 4)))
        conv = nn.Conv2d(1, 1, Fk, S, P, D, bias=False)
        try:
            torch_out = conv(torch.zeros(1, 1, W, W)).shape[-1]
        except RuntimeError:
            torch_out = None
        try:
            o = arithmetic.output_size(W, Fk, P, S, D)
        except arithmetic.NoOutput as e:
            assert torch_out is None, (W, Fk, P, S, D)
            assert "No output" in str(e)
            none += 1
            continue
        assert o.output == torch_out, (W, Fk, P, S, D)
        remainder = (W + 2 * P - D * (Fk - 1) - 1) % S
        assert o.exact == (remainder == 0) and o.dropped == remainder
        assert bool(arithmetic.drop_sentence(o)) == (not o.exact)
        assert f"= {o.output}" in o.formula or f"to {o.output}" in o.formula
        # the dropped columns are exactly the last ones no window reads
        cols = arithmetic.coverage(1, o.padded, (1, Fk), (1, S), (1, D), (0, 0, 0, 0), (1, o.output))[0]
        assert np.all(cols[o.padded - o.dropped:] == 0)
        assert cols[o.starts()[-1] + o.span - 1] > 0
        checked += 1
        inexact += not o.exact
    assert checked > 500 and inexact > 100 and none > 0


def test_the_course_notes_examples():
    assert arithmetic.output_size(7, 3, 0, 1).output == 5
    assert arithmetic.output_size(7, 3, 0, 2).output == 3
    three = arithmetic.output_size(7, 3, 0, 3)
    assert not three.exact and three.dropped == 1 and "never read" in arithmetic.drop_sentence(three)
    assert arithmetic.output_size(7, 3, 1, 1).output == 7  # padding 1 keeps 7x7
    assert arithmetic.output_size(224, 3, 1, 1, 2).output == 222
    with pytest.raises(arithmetic.NoOutput, match="9x9"):
        arithmetic.output_size(7, 9)
    for bad in (float("inf"), float("nan"), -1, 0, 2.5, "7"):
        with pytest.raises(CnnvizError):
            arithmetic.output_size(bad, 3)


def test_costs_match_real_layers():
    cin, cout, k = 32, 64, 3
    o = arithmetic.output_size(56, k, 1, 2)
    full = arithmetic.conv_cost(cin, cout, k, o.output, o.output)
    conv = nn.Conv2d(cin, cout, k, 2, 1)
    assert full.params == sum(p.numel() for p in conv.parameters())
    assert conv(torch.zeros(1, cin, 56, 56)).shape[-1] == o.output
    assert full.mult_adds == cout * o.output ** 2 * cin * k * k
    sep = arithmetic.separable_cost(cin, cout, k, o.output, o.output)
    dw, pw = nn.Conv2d(cin, cin, k, 2, 1, groups=cin), nn.Conv2d(cin, cout, 1)
    assert sep.params == sum(p.numel() for m in (dw, pw) for p in m.parameters())
    ratio = sep.mult_adds / full.mult_adds
    assert abs(ratio - (1 / cout + 1 / k ** 2)) < 1e-9


def test_coverage_shows_what_a_stride_skips():
    skip = arithmetic.coverage(8, 8, (1, 1), (2, 2), (1, 1), (0, 0, 0, 0), (4, 4))
    assert (skip == 0).sum() == 48 and skip[::2, ::2].min() == 1
    overlap = arithmetic.coverage(7, 7, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (7, 7))
    assert overlap.min() > 0 and overlap[3, 3] == 9 and overlap[0, 0] == 4


def test_softmax_and_temperature():
    z = np.array([2.0, 1.0, 0.1, -3.0])
    for t in (0.05, 0.5, 1.0, 4.0, 20.0):
        want = torch.softmax(torch.tensor(z) / t, 0).numpy()
        assert np.allclose(arithmetic.softmax(z, t), want, atol=1e-15)
        table = arithmetic.softmax_table(z, t, 3)
        assert [r["index"] for r in table["rows"]] == [0, 1, 2]
        assert np.isclose(table["rows"][0]["prob"], want[0])
    entropies = [arithmetic.softmax_table(z, t)["entropy_bits"] for t in (0.1, 1, 10)]
    assert entropies[0] < entropies[1] < entropies[2] < 2.0  # flatter with T; at most log2(4) = 2 bits
    assert np.isfinite(arithmetic.softmax(np.array([1e4, 0.0]), 0.05)).all()  # no overflow
    for bad in (0, -1, float("inf"), float("nan"), 21):
        with pytest.raises(CnnvizError, match="temperature"):
            arithmetic.softmax(z, bad)


# ---------------------------------------------------------------- the CLI

def test_cli_unit_reports_the_activations_value(tmp_path, samples):
    out = cli("unit", str(samples["cat"]), "--layer", "_blocks.1._depthwise_conv", "--y", "0", "--x", "55",
              "--channel", "5", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("layer", "y", "x", "channel", "patch_shape", "bias", "channel_sums", "pre_activation", "steps",
                "recorded", "seconds"):
        assert key in d
    assert d["patch_shape"] == [1, 3, 3] and d["agrees"]
    last = d["steps"][-1]["name"]
    npy = tmp_path / "acts.npy"
    got = cli("activations", str(samples["cat"]), "--layer", last, "--npy", str(npy), "--json")
    assert got.returncode == 0, got.stderr
    assert d["recorded"] == float(np.load(npy)[5, 0, 55])


def test_cli_convsize_and_its_bad_inputs(tmp_path, capsys, samples):
    assert main(["convsize", "--input", "7", "--kernel", "3", "--stride", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["output"], d["exact"], d["dropped"]) == (2, False, 1)
    assert "(7 - 3 + 2x0) / 3 + 1" in d["formula"] and "never read" in d["drop"]
    cat = str(samples["cat"])
    for argv, says in ((("convsize", "--input", "7", "--kernel", "9"), "No output"),
                       (("convsize", "--input", "-3", "--kernel", "3"), "input size"),
                       (("convsize", "--input", "7"), "--kernel"),
                       (("unit", str(tmp_path), "--layer", "_conv_stem"), "folder"),
                       (("unit", str(tmp_path / "missing.png")), "missing.png"),
                       (("unit", __file__, "--layer", "_conv_stem"), "image"),
                       (("unit", cat, "--layer", "_conv_stem", "--y", "112"), "at most 111"),
                       (("unit", cat, "--layer", "_bn0"), "_bn0")):
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert says in err, (argv, err)


def test_pil_and_pixels_give_the_same_unit(bundled, cat):
    pixels = bundled.to_pixels(cat)
    a = U.run(bundled, cat, U.UnitSpec("_blocks.3._expand_conv", 4, 4, 1))
    b = U.run(bundled, pixels, U.UnitSpec("_blocks.3._expand_conv", 4, 4, 1))
    assert a.recorded == b.recorded and a.worked == b.worked
