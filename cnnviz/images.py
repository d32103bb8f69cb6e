"""Turn untrusted image bytes (uploads, paths) into a clean RGB PIL image.

Every failure a person can cause (empty, truncated, not an image, too big, odd
format) becomes one `ImageError` whose message says what is wrong and what to do.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .contract import CnnvizError

MAX_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~6300 x 6300; far above what a 224-pixel CNN needs
FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")


class ImageError(CnnvizError):
    """An image could not be used; the message is meant for the user."""


def load_image(source: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Decode `source` (bytes or a path) into an RGB image, EXIF orientation applied."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ImageError(f"Cannot read {name}: {e.strerror or e}.") from None
        if size > MAX_BYTES:
            raise ImageError(_too_large_bytes(name, size))
        data = path.read_bytes()
    else:
        data = bytes(source)
    return decode(data, name or "the image")


def decode(data: bytes, name: str = "the image") -> Image.Image:
    if not data:
        raise ImageError(f"{name} is empty (0 bytes). Choose an image file such as PNG or JPEG.")
    if len(data) > MAX_BYTES:
        raise ImageError(_too_large_bytes(name, len(data)))
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x its own limit; ours is lower and checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(_too_many_pixels(name, None)) from None
    except Exception:  # UnidentifiedImageError and friends: not something Pillow can read
        raise ImageError(
            f"{name} is not an image this app can read. Use PNG, JPEG, GIF, BMP, TIFF or WebP."
        ) from None
    if im.format not in FORMATS:
        raise ImageError(
            f"{name} is a {im.format} file, which is not supported. "
            "Use PNG, JPEG, GIF, BMP, TIFF or WebP."
        )
    w, h = im.size
    if w * h > MAX_PIXELS:  # checked from the header, before any pixel is decoded
        raise ImageError(_too_many_pixels(name, (w, h)))
    if w < 1 or h < 1:
        raise ImageError(f"{name} has no pixels ({w}x{h}).")
    try:
        im.seek(0)  # animations: the first frame
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)
    except Exception:
        raise ImageError(
            f"{name} is truncated or corrupt and cannot be decoded. Re-export or re-download it."
        ) from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency onto white, high bit depth rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1e-12)
        lo = 0.0 if im.mode.startswith("I;16") else float(a.min())
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
        return Image.fromarray((a * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _too_large_bytes(name: str, n: int) -> str:
    return (
        f"{name} is {n / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB. "
        "Save a smaller copy (a few megapixels is plenty)."
    )


def _too_many_pixels(name: str, size: tuple[int, int] | None) -> str:
    dims = f" ({size[0]}x{size[1]} pixels)" if size else ""
    return (
        f"{name} is too large{dims}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels. "
        "Resize it before uploading."
    )
