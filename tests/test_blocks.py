"""Blocks as layers (issue #18): a residual block, an Inception block, a dense block, a
ConvNeXt block or stage can be recorded, Grad-CAM'd and given a receptive field, and its
field is the union of its branches' (random-init models: nothing downloaded)."""
import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import activations as A
from cnnviz import hooks, models
from cnnviz import receptive as R
from cnnviz import saliency as S

# (model, block, the last layer of each branch that meets in it, another block it must have)
CASES = [
    ("torchvision:resnet18@random", "layer2.0", ["layer2.0.bn2", "layer2.0.downsample.1"], "layer4"),
    ("torchvision:googlenet@random", "inception3a",
     ["inception3a.branch1.bn", "inception3a.branch2.1.bn", "inception3a.branch3.1.bn", "inception3a.branch4.1.bn"],
     "inception5b"),
    ("torchvision:densenet121@random", "features.denseblock1",
     ["features.pool0", *(f"features.denseblock1.denselayer{k}.conv2" for k in range(1, 7))], "features.transition1"),
    ("torchvision:convnext_tiny@random", "features.1.0", ["features.1.0.block.6", "features.0.1"], "features.7"),
]
IDS = [c[0].split(":")[1].split("@")[0] for c in CASES]


def no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    model_id, block, branches, other = request.param
    return models.load(model_id), block, branches, other


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_block_is_a_layer_named_by_its_path(case):
    model, block, _, other = case
    info = {l.name: l for l in model.layers}
    for name in (block, other):
        assert name in info and info[name].block, name
        assert info[name].type == type(model.net.get_submodule(name)).__name__
        assert name in S.cam_layers(model) and name in A.spatial_layers(model)
    names = [l.name for l in model.layers]
    inside = [k for k, n in enumerate(names) if n.startswith(block + ".")]
    assert inside and max(inside) < names.index(block)  # after its children: execution order


def test_block_recording_equals_an_independent_hook(case, pixels):
    model, block, _, _ = case
    seen = {}
    h = model.net.get_submodule(block).register_forward_hook(lambda m, i, o: seen.setdefault("out", o.clone()))
    try:
        with torch.no_grad():
            model.net(model.normalize(pixels))
    finally:
        h.remove()
    _, outs = hooks.record(model, model.normalize(pixels), [block])
    assert list(outs) == [block] and torch.equal(outs[block], seen["out"])
    assert tuple(outs[block].shape[1:]) == next(l.shape for l in model.layers if l.name == block)
    assert no_hooks(model.net)


def test_block_gets_a_gradcam_map(case, pixels):
    model, block, _, _ = case
    got = S.attribute(model, pixels, "gradcam", layer=block)
    assert got.layer == block and got.map.shape == model.input_size
    assert np.isfinite(got.map).all()
    assert got.layer_map.shape == next(l.shape[1:] for l in model.layers if l.name == block)
    assert no_hooks(model.net)


def _union(boxes):
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def test_block_field_is_the_union_of_its_branches(case):
    model, block, branches, _ = case
    rows = R.architecture(model)
    assert [r.name for r in rows if r.layer] == [l.name for l in model.layers]  # blocks included, same order
    row = R.check_layer(rows, block)
    parts = [R.check_layer(rows, b) for b in branches]
    assert row.block and not any(p.block for p in parts)
    h, w = row.shape[1:]
    for ij in ((0, 0), (h // 2, w // 2), (h - 1, w - 1)):
        assert row.field.box(*ij) == _union([p.field.box(*ij) for p in parts]), ij
    assert row.field.jump == parts[0].field.jump
    assert row.extent == _union([p.extent for p in parts])
    assert any(p.field.size != row.field.size for p in parts) or len({p.field for p in parts}) == 1
    assert row.note.startswith("block output: ") and f"{len(branches)} branches" in row.note
    assert no_hooks(model.net)


def test_stage_and_block_rows_name_what_they_merge():
    rows = {r.name: r for r in R.architecture(models.load("torchvision:resnet18@random"))}
    assert rows["layer2.0"].note.startswith("block output: sum of 2 branches (bn2, downsample)")
    assert rows["layer1.0"].note.startswith("block output: sum of 2 branches (bn2, input)")
    assert rows["layer4"].note == "block output: its last part's, layer4.1" and rows["layer4"].field == rows["layer4.1"].field
    assert rows["layer4"].to_dict()["block"] and not rows["layer4.1.conv1"].to_dict()["block"]


def test_effective_field_of_a_block_summed_in_place(case):
    """ConvNeXt's block ends in `result += input`: its own in-place sum is not a later change."""
    model, block, _, _ = case
    if "convnext" not in model.id:
        pytest.skip("the in-place sum is ConvNeXt's")
    rows = R.table(model)
    eff = R.effective(model, torch.rand(1, 3, *model.input_size), R.unit(rows, block))
    assert eff.map.shape == model.input_size and eff.map.sum() > 0
    assert no_hooks(model.net)


def test_which_containers_are_blocks():
    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv, self.bn, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Conv2d(c, c, 1)

        def forward(self, x):
            return x + self.conv2(torch.relu(self.bn(self.conv(x))))

    class ConvRelu(nn.Module):  # GoogLeNet's BasicConv2d: one convolution, F.relu in its forward
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())  # conv+norm+act: a layer
            self.stage = nn.Sequential(Res(8), Res(8))  # a stage of two residual blocks
            self.one = nn.Sequential(Res(8))  # one module: its output is that module's
            self.unit = ConvRelu()  # a layer, not a block
            self.trans = nn.Sequential(nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1), nn.AvgPool2d(2))  # DenseNet-like
            self.spare = nn.ModuleList([nn.ReLU()])  # never called itself
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 15 * 15, 10))  # holds the last layer

        def forward(self, x):
            return self.head(self.trans(self.unit(self.one(self.stage(self.stem(x))))))

    net = Net().eval()
    assert set(hooks.block_modules(net)) == {"stage", "stage.0", "stage.1", "one.0", "trans"}
    assert set(hooks.layer_modules(net)) - set(hooks.layer_modules(net, blocks=False)) == set(hooks.block_modules(net))
    wrapped = nn.Sequential(net, nn.Softmax(1))  # the whole network inside: its body, not a block
    assert "0" not in hooks.block_modules(wrapped) and "0.stage" in hooks.block_modules(wrapped)
    m = models.Model("tiny", net, [str(k) for k in range(10)], (0,) * 3, (1,) * 3, (32, 32), 32)
    rows = {r.name: r for r in R.architecture(m)}
    assert [l.name for l in m.layers if l.block] == ["stage.0", "stage.1", "stage", "one.0", "trans"]
    assert rows["trans"].note == "block output: a chain of layers (no merge), field = its last layer's"
    assert rows["trans"].field == rows["trans.2"].field
    assert rows["stage.0"].note.startswith("block output: sum of 2 branches (input, conv2)")
    assert no_hooks(net)


def test_transformers_get_no_containers():
    from torchvision.models import swin_t

    net = swin_t().eval()
    assert hooks.block_modules(net) == {}
    assert set(hooks.layer_modules(net)) == set(hooks.layer_modules(net, blocks=False))
