"""Activation maps: what each layer computes, channel by channel.

Pure functions from a model and an image to numpy arrays and small records; the
page, the CLI and the tests all read the same numbers from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .contract import NotFound
from .hooks import record
from .model import Model

SORTS = ("mean", "max", "sparsity")
GAP_RGB = (31, 78, 121)


class LayerNotFound(NotFound):
    """A layer name the model does not have (or without a spatial output)."""

    def __init__(self, layer: str, known: list[str], fallback: bool = False):
        self.layer = layer
        super().__init__("layer", layer, known, "List them with `python -m cnnviz layers`.",
                         where="with a spatial output", fallback=fallback)


def spatial_layers(model: Model) -> list[str]:
    """Layers whose output is a stack of maps [C, H, W], in execution order."""
    return [l.name for l in model.layers if len(l.shape) == 3]


def check_layer(model: Model, layer: str) -> str:
    names = spatial_layers(model)
    if layer not in names:
        raise LayerNotFound(layer, names)
    return layer


def compute(model: Model, image: Image.Image, layers: list[str] | None = None) -> dict[str, np.ndarray]:
    """One forward pass; {layer call name: float32 [C, H, W]} for spatial layers
    (all of them when `layers` is None)."""
    wanted = spatial_layers(model) if layers is None else [check_layer(model, l) for l in layers]
    _, outs = record(model, model.preprocess(image), wanted)
    return {n: outs[n][0].numpy() for n in wanted}


@dataclass(frozen=True)
class ChannelStats:
    mean: np.ndarray  # [C]
    max: np.ndarray
    min: np.ndarray
    zeros: np.ndarray  # fraction of exactly-zero values

    @classmethod
    def of(cls, acts: np.ndarray) -> "ChannelStats":
        flat = acts.reshape(acts.shape[0], -1)
        return cls(flat.mean(1, dtype=np.float64), flat.max(1), flat.min(1), (flat == 0).mean(1))

    def order(self, by: str = "mean") -> np.ndarray:
        """Channel indices, strongest (or, for sparsity, emptiest) first; ties by index."""
        key = {"mean": -self.mean, "max": -self.max.astype(np.float64), "sparsity": -self.zeros}[by]
        return np.lexsort((np.arange(len(key)), key))

    def rows(self) -> list[dict]:
        return [{"index": i, "mean": float(self.mean[i]), "max": float(self.max[i]), "zeros": float(self.zeros[i])}
                for i in range(len(self.mean))]


def depth_summary(acts: dict[str, np.ndarray]) -> list[dict]:
    """Per layer: mean activation, fraction of zeros, channels and spatial size."""
    return [{"layer": n, "mean": float(a.mean(dtype=np.float64)), "zeros": float((a == 0).mean()),
             "channels": a.shape[0], "height": a.shape[1], "width": a.shape[2]} for n, a in acts.items()]


def mosaic(acts: np.ndarray, order: np.ndarray | None = None, scale: str = "global",
           max_pixels: int = 400_000) -> tuple[np.ndarray, "Grid"]:
    """All channels as one tile image (white = strong), RGB uint8 [H, W, 3].

    `scale`: "global" maps the layer's min..max to black..white for every tile (tiles
    comparable), "channel" stretches each tile on its own (shape of weak maps visible).
    Tiles wider than the pixel budget allows are shrunk by block averaging.
    """
    c, h, w = acts.shape
    order = np.arange(c) if order is None else np.asarray(order)
    f = 1
    while c * (h // f + 1) * (w // f + 1) > max_pixels and min(h, w) // (f + 1) >= 4:
        f += 1
    th, tw = h // f, w // f
    tiles = acts[order, : th * f, : tw * f].reshape(c, th, f, tw, f).mean((2, 4)) if f > 1 else acts[order]
    if scale == "channel":
        lo = tiles.min((1, 2), keepdims=True)
        hi = tiles.max((1, 2), keepdims=True)
    else:
        lo, hi = acts.min(), acts.max()
    norm = (tiles - lo) / np.maximum(hi - lo, 1e-12)
    cols = int(np.ceil(np.sqrt(c * tw / th) if th and tw else 1)) or 1
    cols = min(cols, c)
    rows = int(np.ceil(c / cols))
    gap = 1
    grey = np.zeros((rows * (th + gap) - gap, cols * (tw + gap) - gap), np.float32)
    empty = np.ones(grey.shape, bool)
    for k in range(c):
        r, q = divmod(k, cols)
        y, x = r * (th + gap), q * (tw + gap)
        grey[y: y + th, x: x + tw] = norm[k]
        empty[y: y + th, x: x + tw] = False
    out = np.repeat((np.clip(grey, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    out[empty] = GAP_RGB  # separators in a colour no activation takes
    return out, Grid(rows=rows, cols=cols, tile_h=th, tile_w=tw, gap=gap, order=order)


@dataclass(frozen=True)
class Grid:
    """Where each channel sits in a mosaic (tile k shows channel order[k])."""
    rows: int
    cols: int
    tile_h: int
    tile_w: int
    gap: int
    order: np.ndarray

    def centre(self, k: int) -> tuple[float, float]:
        r, q = divmod(k, self.cols)
        return (r * (self.tile_h + self.gap) + (self.tile_h - 1) / 2, q * (self.tile_w + self.gap) + (self.tile_w - 1) / 2)


def compare(a: np.ndarray, b: np.ndarray) -> list[dict]:
    """Channels ranked by how much their mean activation differs between two images."""
    ma, mb = a.reshape(a.shape[0], -1).mean(1), b.reshape(b.shape[0], -1).mean(1)
    d = mb - ma
    order = np.lexsort((np.arange(len(d)), -np.abs(d)))
    return [{"index": int(i), "mean_a": float(ma[i]), "mean_b": float(mb[i]), "diff": float(d[i])} for i in order]


def nbytes(acts: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in acts.values())
