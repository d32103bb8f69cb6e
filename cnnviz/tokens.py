"""Vision transformers' layer outputs as maps, so every view of a CNN's maps shows them.

A ViT block outputs tokens [B, 1 + g*g, C]: the class token first, then the patches row
by row. A Swin stage works channels-last, [B, H, W, C]. `as_map` gives both as
[B, C, h, w], the layout of a CNN's maps (ViT: the class token dropped from the map;
`class_token` gives it apart); any other output passes unchanged. `blocks` names the transformer blocks, which are layers too
(a block's output is what the next block reads), though they are not leaf modules.
This module imports nothing else of cnnviz (`hooks` uses it).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def family(net: nn.Module) -> str | None:
    """"vit", "swin" or None (a CNN), from torchvision's classes (a user's fine-tuned
    ViT or Swin is built from the same ones)."""
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(net, VisionTransformer):
        return "vit"
    if isinstance(net, SwinTransformer):
        return "swin"
    return None


def blocks(net: nn.Module) -> dict[str, nn.Module]:
    """The transformer blocks by module path, in order (empty for a CNN)."""
    from torchvision.models.swin_transformer import SwinTransformerBlock, SwinTransformerBlockV2
    from torchvision.models.vision_transformer import EncoderBlock

    kinds = (EncoderBlock, SwinTransformerBlock, SwinTransformerBlockV2)
    return {name: m for name, m in net.named_modules() if isinstance(m, kinds)}


def grid(n_tokens: int) -> int | None:
    """g for n = 1 + g*g tokens (a class token and a square of patches), else None."""
    g = math.isqrt(max(n_tokens - 1, 0))
    return g if g and g * g == n_tokens - 1 else None


def _vit_grid(name: str, out: torch.Tensor) -> int | None:
    """g where a ViT's output is tokens [B, 1 + g*g, C] (inside the encoder), else None."""
    return grid(out.shape[1]) if name.startswith("encoder") and out.ndim == 3 else None


def mapper(net: nn.Module):
    """`to_map(name, module, output)` for this network: its token outputs as [B, C, h, w]
    (see the module docstring); the identity for a CNN."""
    kind = family(net)
    if kind == "vit":
        def to_map(name: str, module: nn.Module, out: torch.Tensor) -> torch.Tensor:
            if g := _vit_grid(name, out):
                return out[:, 1:].transpose(1, 2).reshape(out.shape[0], out.shape[2], g, g)
            return out
    elif kind == "swin":
        def to_map(name: str, module: nn.Module, out: torch.Tensor) -> torch.Tensor:
            # Everything in the stages (and the final norm) is channels-last but the stem's conv.
            inside = name.startswith("features") or name == "norm"
            if inside and out.ndim == 4 and not isinstance(module, nn.modules.conv._ConvNd):
                return out.permute(0, 3, 1, 2)
            return out
    else:
        return None
    return to_map


def class_token(net: nn.Module):
    """`cls_of(name, module, output)` for a ViT: the class token [B, C] of a token output
    (the one `mapper` drops from the map), None for any other output; None for a network
    without a class token (a CNN, Swin)."""
    if family(net) != "vit":
        return None

    def cls_of(name: str, module: nn.Module, out: torch.Tensor) -> torch.Tensor | None:
        return out[:, 0] if _vit_grid(name, out) else None
    return cls_of


def patch_size(net: nn.Module) -> int | None:
    """The side in pixels of the patch a transformer makes one token of (its patch
    embedding's kernel and stride: ViT-B/16 16, Swin-T 4); None for a CNN."""
    kind = family(net)
    if kind == "vit":
        return int(net.patch_size)
    if kind == "swin":
        return int(net.features[0][0].kernel_size[0])
    return None


def cam_layer(net: nn.Module) -> str | None:
    """Grad-CAM's usual layer where the generic rule (the last spatial layer) is wrong: in
    a ViT only the class token reaches the head, so after the last block's attention the
    patch tokens get no gradient; the last block's input norm is where they still count."""
    if family(net) == "vit":
        last = list(blocks(net))[-1]
        return f"{last}.ln_1"
    return None
