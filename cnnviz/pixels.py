"""The small conversions every analysis needs, written once: [0, 1] pixels <-> uint8,
PNG bytes, tile grids. Pixels are float tensors [N, 3, H, W] in [0, 1]; images are
uint8 numpy arrays [H, W, 3] (or [N, H, W, 3])."""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] (or [3, H, W]) -> uint8 [H, W, 3]; [N, 3, H, W] with N > 1 -> [N, H, W, 3].
    Rounded half up, so values on the 1/255 grid come back exactly."""
    x = x.detach()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    x = x.movedim(-3, -1)
    return torch.floor(x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def from_uint8(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> pixels [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(rgb, np.uint8)).permute(2, 0, 1)[None].float() / 255


def to_image(x: torch.Tensor) -> Image.Image:
    """Pixels [1, 3, H, W] -> a PIL RGB image."""
    return Image.fromarray(to_uint8(x))


def png_bytes(rgb: np.ndarray | Image.Image, fast: bool = False) -> bytes:
    """An image (uint8 array or PIL) as PNG bytes; `fast` trades size for speed (figures)."""
    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb))
    buf = io.BytesIO()
    im.save(buf, "PNG", **({"compress_level": 1} if fast else {}))
    return buf.getvalue()


def grid(images: list[np.ndarray], cols: int | None = None, gap: int = 4, fill=255) -> np.ndarray:
    """Equal-sized uint8 [h, w, 3] images in a grid, row by row, `gap` pixels of `fill` apart."""
    if not len(images):
        raise ValueError("Nothing to lay out.")
    n, (h, w, _) = len(images), images[0].shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    out = np.empty((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), np.uint8)
    out[:] = fill
    for k, im in enumerate(images):
        r, q = divmod(k, cols)
        out[r * (h + gap): r * (h + gap) + h, q * (w + gap): q * (w + gap) + w] = im
    return out
