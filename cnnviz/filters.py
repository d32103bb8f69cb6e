"""Convolution weights as pictures: what a filter looks for, read off the weights.

A first layer sees RGB pixels, so each filter is itself a small colour image (AlexNet's
edges and colour blobs). Deeper filters span many input channels that are not colours:
one filter is shown as one grey tile per input channel. A depthwise filter acts on a
single channel, so a depthwise layer is one grey tile per channel.
The analysis is `run(model, None, FiltersSpec(layer, ...))` (weights only: no image, no
pass) -> `FilterTiles`; below it, pure functions: weights in, uint8 tile images and small
records out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from . import bounds, contract, pixels
from .activations import GAP_RGB, Grid, mosaic
from .contract import CnnvizError, NotFound, closest
from .model import Model

ORDERS = ("norm", "index")


class FilterError(CnnvizError):
    """A layer without convolution weights (the message names what to pick instead)."""


class NotAConvolution(FilterError, NotFound):
    """A layer name that is not a 2-D convolution of the model (a `NotFound`: `candidates`
    are the closest convolutions)."""

    def __init__(self, layer: str, model_id: str, convs: list[str]):
        self.name = layer
        self.candidates = closest(layer, convs)
        hint = (f" Closest: {', '.join(self.candidates)}." if self.candidates
                else f" The first is {convs[0]}." if convs else "")
        CnnvizError.__init__(self, f"{layer!r} is not a convolution layer of {model_id}, so it has no filters "
                                   f"to show.{hint}")


@dataclass(frozen=True)
class Filters:
    layer: str
    weights: np.ndarray  # float32 [out, in / groups, kh, kw]
    groups: int
    kind: str  # "rgb" (3 input channels: colour images), "depthwise" or "channels"

    @property
    def norms(self) -> np.ndarray:
        """L2 norm of each filter [out] (float64)."""
        return np.sqrt((self.weights.astype(np.float64) ** 2).reshape(len(self.weights), -1).sum(1))

    def order(self, by: str = "index") -> np.ndarray:
        """Filter indices: as stored ("index") or strongest first ("norm"; ties by index)."""
        if by == "index":
            return np.arange(len(self.weights))
        return np.lexsort((np.arange(len(self.weights)), -self.norms))


def conv_layers(model: Model) -> list[str]:
    """Names of 2-D convolutions in module order (the layers that have filters)."""
    return [n for n, m in model.layer_modules.items() if isinstance(m, nn.Conv2d)]


def of(model: Model, layer: str) -> Filters:
    """The weights of conv `layer`, and how to draw them."""
    m = model.layer_modules.get(layer)
    if not isinstance(m, nn.Conv2d):
        raise NotAConvolution(layer, model.id, conv_layers(model))
    w = m.weight.detach().float().cpu().numpy()
    if m.groups > 1 and w.shape[1] == 1:
        kind = "depthwise"
    elif w.shape[1] == 3 and m.groups == 1:
        kind = "rgb"
    else:
        kind = "channels"
    return Filters(layer, w, m.groups, kind)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement: every weight stays a sharp square."""
    return np.repeat(np.repeat(img, factor, 0), factor, 1) if factor > 1 else img


def _factor(tile: int, target: int) -> int:
    return max(1, target // max(tile, 1))


def rgb_tiles(f: Filters, order: np.ndarray | None = None, tile_px: int = 48) -> tuple[np.ndarray, Grid]:
    """First-layer filters as colour tiles, each stretched min..max on its own (the
    weights' scale differs per filter; shape and colour are what one reads), RGB uint8."""
    w = f.weights if order is None else f.weights[np.asarray(order)]
    order = np.arange(len(w)) if order is None else np.asarray(order)
    lo = w.min((1, 2, 3), keepdims=True)
    hi = w.max((1, 2, 3), keepdims=True)
    norm = (w - lo) / np.maximum(hi - lo, 1e-12)  # [out, 3, kh, kw]
    tiles = (norm.transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8)
    n, kh, kw, _ = tiles.shape
    s = _factor(max(kh, kw), tile_px)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    th, tw, gap = kh * s, kw * s, max(1, s // 4)
    out = pixels.grid([upscale(t, s) for t in tiles], cols, gap, fill=GAP_RGB)
    return out, Grid(rows=rows, cols=cols, tile_h=th, tile_w=tw, gap=gap, order=order)


def grey_tiles(maps: np.ndarray, order: np.ndarray | None = None, scale: str = "global",
               tile_px: int = 40) -> tuple[np.ndarray, Grid]:
    """Tiles of [n, kh, kw] weights in grey (black = most negative, white = most positive),
    one scale for all ("global": tiles comparable) or per tile ("channel")."""
    rgb, grid = mosaic(maps, order, scale, max_pixels=10 ** 9)
    s = _factor(max(grid.tile_h, grid.tile_w), tile_px)
    big = upscale(rgb, s)
    return big, Grid(rows=grid.rows, cols=grid.cols, tile_h=grid.tile_h * s, tile_w=grid.tile_w * s,
                     gap=grid.gap * s, order=grid.order)


def filter_tiles(f: Filters, index: int) -> tuple[np.ndarray, Grid]:
    """One deeper filter, one grey tile per input channel on one shared scale."""
    if not 0 <= index < len(f.weights):
        raise FilterError(f"{f.layer} has filters 0 to {len(f.weights) - 1}; {index} does not exist.")
    return grey_tiles(f.weights[index], scale="global")


def depthwise_tiles(f: Filters, order: np.ndarray | None = None) -> tuple[np.ndarray, Grid]:
    """A depthwise layer: filter k acts on channel k alone, one grey tile each."""
    return grey_tiles(f.weights[:, 0], order, scale="channel")


def tiles(f: Filters, order: np.ndarray | None = None, index: int = 0) -> tuple[np.ndarray, Grid]:
    """The picture for a layer: colour tiles, depthwise tiles, or filter `index`'s channels."""
    if f.kind == "rgb":
        return rgb_tiles(f, order)
    if f.kind == "depthwise":
        return depthwise_tiles(f, order)
    return filter_tiles(f, index)


# ---------------------------------------------------------------- the analysis

@dataclass(frozen=True)
class FiltersSpec(contract.Spec):
    """A convolution's filters as a picture: tiles in `sort` order ("norm": strongest
    first, "index": as stored); for a layer over many channels, filter `index`'s input
    channels (None: the strongest filter)."""
    layer: str
    sort: str = "norm"
    index: int | None = None

    def passes(self, model) -> int:
        return 0  # the weights alone

    def check(self, model: Model) -> "FiltersSpec":
        if self.sort not in ORDERS:
            raise FilterError(f"Unknown order {self.sort!r}; use one of {', '.join(ORDERS)}.")
        f = of(model, self.layer)
        if f.kind == "channels" and self.index is not None:
            try:
                bounds.whole(self.index, "", 0, len(f.weights) - 1, FilterError)
            except FilterError:
                raise FilterError(f"{f.layer} has filters 0 to {len(f.weights) - 1}; {bounds._shown(self.index)} does "
                                  "not exist.") from None
        return self


@dataclass
class FilterTiles(contract.Result):
    """A layer's filters, its picture, and a hover text per tile."""
    filters: Filters = field(repr=False)
    order: np.ndarray  # the filter shown by each tile ("rgb", "depthwise")
    index: int  # the filter whose input channels are shown ("channels"); else the strongest
    tiles: np.ndarray = field(repr=False)  # uint8 [H, W, 3]
    grid: Grid = field(repr=False)
    texts: list[str] = field(repr=False)  # one per tile, in tile order

    @property
    def layer(self) -> str:
        return self.filters.layer

    @property
    def kind(self) -> str:
        return self.filters.kind

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.filters.weights.shape)

    @property
    def norms(self) -> np.ndarray:
        return self.filters.norms

    def to_dict(self) -> dict:
        """What `python -m cnnviz filters --json` prints (no "model"/"seconds": the keys it
        always had)."""
        return {"layer": self.layer, "shape": list(self.shape), "norms": [float(v) for v in self.norms]}


def run(model: Model, image, spec: FiltersSpec, *, progress: contract.Progress | None = None) -> FilterTiles:
    """`spec`'s layer's filters as tiles (weights only: `image` is not used)."""
    progress = contract.Progress.of(progress)
    spec = spec.check(model)
    f = of(model, spec.layer)
    norms = f.norms
    order = f.order(spec.sort)
    strongest = int(f.order("norm")[0])
    index = strongest if spec.index is None else spec.index
    if f.kind == "rgb":
        rgb, grid = rgb_tiles(f, order)
        texts = [f"filter {k}<br>norm {norms[k]:.3g}" for k in grid.order]
    elif f.kind == "depthwise":
        rgb, grid = depthwise_tiles(f, order)
        texts = [f"filter {k} (on channel {k})<br>norm {norms[k]:.3g}" for k in grid.order]
    else:
        rgb, grid = filter_tiles(f, index)
        w = f.weights[index]
        texts = [f"input channel {c}<br>sum {w[c].sum():.3g}, max |w| {np.abs(w[c]).max():.3g}" for c in grid.order]
    progress(1.0, spec.layer)
    return FilterTiles(f, order, index, rgb, grid, texts, model=model.id)
