"""Deletion and insertion: does a map's ranking of pixels find what the model uses?

Deletion (Petsiuk et al. 2018): the most salient pixels are replaced first by a blurred
copy of the image; the target's probability should fall fast (a small area under the
curve). Insertion: start from the blurred image and put the most salient pixels back
first; the probability should rise fast (a large area). A seeded random order is the
baseline of both. Blur rather than grey: scattered grey pixels are noise that fails any
CNN, and would make every order, random included, look equally "faithful".

`curves` scores any number of maps (and the random order) in one batched set of
passes: the image and its blurred copy are shared by every curve's ends, so k orders
cost `passes(k, steps, kinds)` images. Used by the trust report (deletion), the layer
advisor and the method comparison (both).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from .contract import Progress
from .model import Model
from .predict import classify

STEPS = 20
RANDOM = "random"  # the curves of a seeded random order, next to the maps'
KINDS = ("deletion", "insertion")
BATCH = 16  # images per classifying pass: memory stays flat for VGG's 224x224x64 maps


def passes(orders: int, steps: int = STEPS, kinds: tuple[str, ...] = KINDS) -> int:
    """Images `curves` runs for `orders` rankings: the shared ends, then each curve's inside."""
    return 2 + orders * len(kinds) * (steps - 1)


def order_of(saliency: np.ndarray | None, n: int, seed: int = 0) -> np.ndarray:
    """Pixel indices, most salient first (ties in reading order); a seeded permutation for None."""
    if saliency is None:
        return np.random.default_rng(seed).permutation(n)
    return np.argsort(-saliency.ravel(), kind="stable")


def curves(model: Model, image: Image.Image | torch.Tensor, maps: dict[str, np.ndarray | None], target: int,
           steps: int = STEPS, seed: int = 0, kinds: tuple[str, ...] = KINDS, blur: float = 12.0,
           progress: Progress | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{name: {kind: probability of `target` at 0, 1/steps, ..., 100% of the pixels}} for
    each map (None: the random order of `seed`) at input resolution [H, W]."""
    progress = Progress.of(progress)
    x = model.to_pixels(image)[0]
    base = model.input_image(image).filter(ImageFilter.GaussianBlur(blur))
    fill = torch.from_numpy(np.asarray(base, np.float32) / 255).permute(2, 0, 1).reshape(3, -1)
    h, w = x.shape[-2:]
    flat_x = x.reshape(3, -1)
    jobs = [(name, kind) for name in maps for kind in kinds]
    ranks = {}  # pixel -> its place in the map's order: the top `c` pixels are those ranked below c
    for name in maps:
        r = np.empty(h * w, np.int64)
        r[order_of(maps[name], h * w, seed)] = np.arange(h * w)
        ranks[name] = torch.from_numpy(r)

    def image(i: int) -> torch.Tensor:
        """The i-th image: 0 the image itself, 1 all blurred, then each curve's inside cuts."""
        if i < 2:
            return (x, fill.view(3, h, w))[i]
        (name, kind), k = jobs[(i - 2) // (steps - 1)], (i - 2) % (steps - 1) + 1
        start, put = (flat_x, fill) if kind == "deletion" else (fill, flat_x)
        return torch.where(ranks[name] < round(k * h * w / steps), put, start).view(3, h, w)

    # Made a batch at a time: memory stays that of one batch however many curves a job asks for.
    n = passes(len(maps), steps, kinds)
    probs = np.empty(n)
    for i in range(0, n, BATCH):
        progress(i / n, f"{i} of {n} images")
        probs[i: i + BATCH] = classify(model, torch.stack([image(j) for j in range(i, min(i + BATCH, n))]))[:, target]
    progress(1.0, f"{n} of {n} images")
    whole, blurred, inside = probs[0], probs[1], probs[2:].reshape(len(jobs), steps - 1)
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in maps}
    for (name, kind), row in zip(jobs, inside):
        ends = (whole, blurred) if kind == "deletion" else (blurred, whole)
        out[name][kind] = np.concatenate([[ends[0]], row, [ends[1]]])
    return out


def deletion_curve(model: Model, image, saliency: np.ndarray | None, target: int, steps: int = STEPS,
                   seed: int = 0, blur: float = 12.0) -> np.ndarray:
    """One map's (or the random order's) deletion curve."""
    return curves(model, image, {"map": saliency}, target, steps, seed, ("deletion",), blur)["map"]["deletion"]


def insertion_curve(model: Model, image, saliency: np.ndarray | None, target: int, steps: int = STEPS,
                    seed: int = 0, blur: float = 12.0) -> np.ndarray:
    """One map's (or the random order's) insertion curve."""
    return curves(model, image, {"map": saliency}, target, steps, seed, ("insertion",), blur)["map"]["insertion"]


def area(curve: np.ndarray) -> float:
    """Area under a curve over [0, 1] (trapezoids): deletion lower and insertion higher = more faithful."""
    curve = np.asarray(curve, np.float64)
    xs = np.linspace(0, 1, len(curve))
    return float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(xs)))
