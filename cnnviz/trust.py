"""Checks of whether a saliency map explains the model at all.

- `randomization_check`: Adebayo et al. 2018's cascading model randomization. Weights
  are re-drawn from the top block down, one block more per step, on a copy of the
  network; a method whose map barely changes (high rank correlation with the original)
  is not explaining what the model learned.
- `deletion_curve`: remove the most salient pixels first and watch the target
  probability fall; a faithful map makes it fall faster (smaller area) than a random
  order does.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from .model import Model
from .saliency import attribute

Progress = Callable[[float, str], None]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps (ties get their mean rank)."""
    def ranks(v):
        v = v.ravel()
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def randomization_blocks(model: Model) -> list[str]:
    """Top-level children with parameters, in execution order: the cascade's steps."""
    order = [l.name.split(".")[0].split("#")[0] for l in model.layers]
    seen = list(dict.fromkeys(order))
    mods = dict(model.net.named_children())
    blocks = []
    for top in seen:
        m = mods.get(top)
        if m is None or not any(True for _ in m.parameters()):
            continue
        # Long containers (ModuleList of blocks, Sequential stages) step block by block.
        kids = [f"{top}.{n}" for n, c in m.named_children() if any(True for _ in c.parameters())]
        blocks.extend(kids if len(kids) > 1 else [top])
    return blocks


def _randomize(net: nn.Module, names: list[str], gen: torch.Generator) -> None:
    """New random parameters (same shape and spread) for the named modules. New tensors
    in place of the old: the copy shares its tensors with the model every session uses."""
    for name in names:
        mod = net.get_submodule(name)
        for path, p in list(mod.named_parameters()):
            owner, _, leaf = path.rpartition(".")
            std = float(p.std()) if p.numel() > 1 else 1.0
            new = torch.randn(p.shape, generator=gen) * (std or 1.0)
            setattr(mod.get_submodule(owner) if owner else mod, leaf, nn.Parameter(new, p.requires_grad))


def randomization_check(model: Model, image: Image.Image, methods: list[str], target: int, steps: int = 6,
                        seed: int = 0, progress: Progress | None = None) -> dict:
    """{"steps": [label...], "correlation": {method: [rho per step]}}; step 0 is the
    trained model (rho = 1). The shared model is never modified: a copy is."""
    blocks = randomization_blocks(model)[::-1]  # top first
    cuts = sorted(set(int(round(k)) for k in np.linspace(0, len(blocks), steps + 1)))
    x = model.to_pixels(image)
    originals = {m: attribute(model, x, m, target).map for m in methods}
    shadow = model.private_copy()
    net = shadow.net
    gen = torch.Generator().manual_seed(seed)
    result = {"steps": [], "correlation": {m: [] for m in methods}, "blocks": blocks}
    done = 0
    for i, cut in enumerate(cuts):
        _randomize(net, blocks[done:cut], gen)
        done = cut
        result["steps"].append("trained" if cut == 0 else f"top {cut} of {len(blocks)} blocks random")
        for m in methods:
            result["correlation"][m].append(1.0 if cut == 0 else spearman(originals[m], attribute(shadow, x, m, target).map))
        if progress:
            progress((i + 1) / len(cuts), result["steps"][-1])
    return result


def deletion_curve(model: Model, image: Image.Image, saliency: np.ndarray | None, target: int, steps: int = 20,
                   seed: int = 0, blur: float = 12.0) -> np.ndarray:
    """Target probability as the top 0, 1/steps, ..., 100% of pixels (by `saliency`, or a
    seeded random order when None) are replaced by a blurred copy; one batched pass.
    Blur rather than grey: scattered grey pixels are noise that fails any CNN, and
    would make every order, random included, look equally "faithful"."""
    from PIL import ImageFilter

    x = model.to_pixels(image)[0]
    base = model.input_image(image).filter(ImageFilter.GaussianBlur(blur))
    fill = torch.from_numpy(np.asarray(base, np.float32) / 255).permute(2, 0, 1).reshape(3, -1)
    h, w = x.shape[-2:]
    if saliency is None:
        order = np.random.default_rng(seed).permutation(h * w)
    else:
        order = np.argsort(-saliency.ravel(), kind="stable")
    batch = x.repeat(steps + 1, 1, 1, 1)
    for k in range(1, steps + 1):
        idx = torch.from_numpy(order[: round(k * h * w / steps)])
        flat = batch[k].view(3, -1)
        flat[:, idx] = fill[:, idx]
    with model.lock, torch.no_grad():
        probs = model.pixel_net(batch).softmax(1)[:, target]
    return probs.numpy().astype(np.float64)


def area(curve: np.ndarray) -> float:
    """Area under a deletion curve over [0, 1] (trapezoids): lower = more faithful."""
    xs = np.linspace(0, 1, len(curve))
    return float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(xs)))
