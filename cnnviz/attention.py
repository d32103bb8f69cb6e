"""Where a vision transformer's tokens look: attention maps and attention rollout.

A ViT block attends over all its tokens from the first layer on (a CNN unit sees a
small window that grows with depth). `run(model, image, AttentionSpec(...))` records,
in one forward pass, the attention weights of the blocks it needs and returns one map on
the patch grid:

- one block (`block`, default the last), one head (`head`) or the mean of its heads,
  for one query: the class token (`patch=None`) or the patch at `patch = (row, col)`;
- `rollout=True`: attention rollout (Abnar and Zuidema, 2020, "Quantifying Attention
  Flow in Transformers"): each block's head-averaged attention with the residual
  connection as an identity, (A + I) / 2 with rows renormalised, multiplied from the
  first block to `block`: how much each input patch reaches the query through all of them.

The weights are those of torchvision's `nn.MultiheadAttention` inside each
`EncoderBlock`, recomputed from the block's normalised input (`ln_1`'s output) as
softmax(q k^T / sqrt(d)): torchvision's block asks the module for no weights. Swin's
attention is local to shifted 7x7 windows: no whole-image map, refused with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import bounds, tokens
from .contract import CnnvizError, Progress, Result, Spec
from .hooks import Recorder
from .model import Model


class AttentionError(CnnvizError):
    """An attention request the model cannot answer (a CNN, a block or head it lacks)."""


def blocks(model: Model) -> list[str]:
    """The ViT's encoder blocks by module path, in order; an `AttentionError` for others."""
    kind = tokens.family(model.net)
    if kind != "vit":
        why = ("Swin's attention is local to shifted 7x7 windows, so no block has a whole-image map"
               if kind == "swin" else "a CNN has no attention: its units see a window that grows with depth")
        raise AttentionError(f"Attention maps are for vision transformers (ViT); {model.label or model.id}: {why}.")
    return list(tokens.blocks(model.net))


def attention_weights(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of a batch-first self-attention on tokens x [B, N, E]:
    [B, heads, N, N], each row a distribution over the keys."""
    b, n, e = x.shape
    h = mha.num_heads
    d = e // h
    qk = nn.functional.linear(x, mha.in_proj_weight[: 2 * e], mha.in_proj_bias[: 2 * e])
    q, k = (t.reshape(b, n, h, d).transpose(1, 2) for t in qk.chunk(2, dim=-1))
    return (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1)


def rollout(weights: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout of head-averaged weights [N, N] per block, first block first:
    prod over blocks of rownorm((A + I) / 2), later blocks on the left. [N, N]."""
    n = weights[0].shape[-1]
    eye = torch.eye(n, dtype=weights[0].dtype)
    out = eye
    for a in weights:
        a = (a + eye) / 2
        out = (a / a.sum(dim=-1, keepdim=True)) @ out
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two maps on the same grid (None if either is constant): how
    far attention and Grad-CAM point at the same patches."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True)
class AttentionSpec(Spec):
    """`block`: index of the encoder block (None: the last); `head`: one head (None: the
    mean of all); `patch`: the query (row, col) on the patch grid (None: the class token);
    `rollout`: through every block up to `block` (heads averaged; `head` must be None)."""
    block: int | None = None
    head: int | None = None
    patch: tuple[int, int] | None = None
    rollout: bool = False

    def check(self, model: Model) -> "AttentionSpec":
        names = blocks(model)
        block = len(names) - 1 if self.block is None else bounds.whole(
            self.block, "The block", 0, len(names) - 1, AttentionError)
        mha = _mha(model, names[block])
        head = None if self.head is None else bounds.whole(self.head, "The head", 0, mha.num_heads - 1, AttentionError)
        if self.rollout and head is not None:
            raise AttentionError("Rollout averages the heads of every block; leave the head out.")
        patch = self.patch
        if patch is not None:
            g = grid_side(model)
            if len(tuple(patch)) != 2:
                raise AttentionError(f"A patch is (row, column) on the {g}x{g} grid, not {bounds._shown(patch)}.")
            patch = tuple(bounds.whole(v, what, 0, g - 1, AttentionError) for v, what in zip(patch, ("The row", "The column")))
        return AttentionSpec(block, head, patch, bool(self.rollout))


def heads(model: Model) -> int:
    """Attention heads per block (the same in every block of a ViT)."""
    return _mha(model, blocks(model)[-1]).num_heads


def grid_side(model: Model) -> int:
    """Patches per side at the model's input size (14 for ViT-B/16 at 224)."""
    return model.input_size[0] // model.net.patch_size


def _mha(model: Model, block: str) -> nn.MultiheadAttention:
    return dict(model.net.named_modules())[f"{block}.self_attention"]


@dataclass
class AttentionMap(Result):
    block: int
    head: int | None  # None: the mean of the heads
    query: str  # "class token" or "patch (row, col)"
    rollout: bool
    grid: list[int]  # [rows, cols]
    map: np.ndarray = field(repr=False)  # float32 [rows, cols], a distribution over the patches (sums to <= 1)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "map": self.map.round(6).tolist()}


def run(model: Model, image, spec: AttentionSpec, *, progress: Progress | None = None) -> AttentionMap:
    progress = Progress.of(progress)
    spec = spec.check(model)
    names = blocks(model)
    wanted = names[: spec.block + 1] if spec.rollout else [names[spec.block]]
    x = model.preprocess(image)
    # The attention input of each wanted block (its ln_1 output), recorded as tokens.
    with Recorder(model, [f"{b}.ln_1" for b in wanted], detach=False, raw=True) as rec, torch.inference_mode():
        model.net(x)
        weights = [attention_weights(_mha(model, b), rec.outputs[f"{b}.ln_1"])[0] for b in wanted]
    progress(1.0, "Attention recorded")
    if spec.rollout:
        a = rollout([w.mean(dim=0).double() for w in weights])
    else:
        w = weights[-1].double()
        a = w.mean(dim=0) if spec.head is None else w[spec.head]
    g = grid_side(model)
    row = 0 if spec.patch is None else 1 + spec.patch[0] * g + spec.patch[1]
    m = a[row, 1:].reshape(g, g).float().numpy()
    query = "class token" if spec.patch is None else f"patch ({spec.patch[0]}, {spec.patch[1]})"
    return AttentionMap(spec.block, spec.head, query, spec.rollout, [g, g], m)
