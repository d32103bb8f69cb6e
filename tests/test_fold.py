"""The BatchNorm-folded copy used for PGD's steps: the same function and gradients,
every BatchNorm after a convolution gone from the copy, the original untouched, and
the original returned where folding would change the numbers."""
import pytest
import torch
from torch import nn

from cnnviz import models
from cnnviz.fold import conv_bn_pairs, fast_copy
from cnnviz.images import load_image


def _bn(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def _input_grad(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = net(x)
        grad, = torch.autograd.grad(nn.functional.cross_entropy(out, out.argmax(1)), x)
    return grad


@pytest.mark.parametrize("model_id,left", [
    (models.BUNDLED_ID, 0), ("torchvision:resnet18@random", 0), ("torchvision:mobilenet_v2@random", 0),
    ("torchvision:densenet121@random", 62),  # pre-activation: BN after a concatenation stays
])
def test_same_function_and_gradient_without_the_batchnorms(model_id, left, samples):
    model = models.load(model_id)
    net, fast = model.pixel_net, model.fast_net
    before = {name: p for name, p in net.named_parameters()}
    x = model.to_pixels(load_image(samples["cat"]))
    with torch.no_grad():
        want, got = net(x), fast(x)
    assert fast is not net and _bn(fast) == left < _bn(net)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    g, gf = _input_grad(net, x), _input_grad(fast, x)
    assert (g.sign() == gf.sign()).float().mean() > 0.999  # PGD steps along these signs
    # The original is as it was: same modules, same tensors, same layout, no hooks left.
    assert dict(net.named_parameters()) == before
    assert all(p.is_contiguous() for p in net.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    # What folding does not touch is shared, not copied.
    shared = {id(p) for p in net.parameters()} & {id(p) for p in fast.parameters()}
    assert shared and all(p.ndim != 4 for p in fast.parameters() if id(p) in shared)


class _Skip(nn.Module):
    """conv -> bn, with the conv's output also added after the bn: not foldable."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def _randomize_bn(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval().requires_grad_(False)


def test_a_conv_output_read_twice_keeps_the_original():
    net = _randomize_bn(_Skip())
    probe = torch.rand(1, 3, 8, 8)
    assert conv_bn_pairs(net, probe) == [("conv", "bn")]  # looks foldable from the hooks alone
    assert fast_copy(net, probe) is net  # but the outputs would differ: not used


def test_a_shared_module_is_not_folded():
    conv, bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    net = _randomize_bn(nn.Sequential(conv, bn, conv, bn))  # each called twice
    assert conv_bn_pairs(net, torch.rand(1, 3, 4, 4)) == []


def test_a_plain_sequential_is_folded():
    net = _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                                      nn.BatchNorm2d(4)))
    probe = torch.rand(1, 3, 9, 9)
    fast = fast_copy(net, probe)
    assert fast is not net and _bn(fast) == 0 and _bn(net) == 2
    assert torch.allclose(fast(probe), net(probe), atol=1e-5)
