"""Turn untrusted image bytes (uploads, paths) into a clean, bounded RGB PIL image.

Every failure a person can cause (empty, truncated, not an image, too big, odd
format) becomes one `ImageError` whose message says what is wrong and what to do.
Checked before any pixel is decoded: the bytes (`MAX_BYTES`), the pixel count from the
header (`MAX_PIXELS`), and for ICO, which Pillow decodes inside `Image.open`, every
payload's size from its header. At intake, once per image, an extreme aspect ratio is
cut about the centre and an oversized image scaled down (`bounds.IMAGE_ASPECT`,
`bounds.IMAGE_SIDE`); what was changed is said in a note (`intake(...).note`, also
`note(image)`), which the sidebar and the CLI show.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import bounds, files
from .contract import CnnvizError

MAX_BYTES = bounds.IMAGE_BYTES
MAX_PIXELS = bounds.IMAGE_PIXELS  # ~6300 x 6300; far above what a 224-pixel CNN needs
MAX_SIDE = bounds.IMAGE_SIDE
MAX_ASPECT = bounds.IMAGE_ASPECT
FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
NOTE = "cnnviz.intake"  # the key of the intake note in the returned image's `info`
# Modes Pillow resamples properly (RGBA and LA with premultiplied alpha); others are
# converted to RGB before they are scaled (palette and bilevel images resample as nearest).
_RESAMPLES = ("RGB", "RGBA", "L", "LA")
_CHUNK = 1 << 20  # pixels per step of the high-bit-depth conversion (4 MB of float32)


class ImageError(CnnvizError):
    """An image could not be used; the message is meant for the user."""


@dataclass(frozen=True)
class Intake:
    """A decoded image and what intake changed about it (None: nothing)."""
    image: Image.Image
    note: str | None = None


def load_image(source: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Decode `source` (bytes or a path) into a bounded RGB image, EXIF orientation
    applied; `note(image)` says what intake changed, if anything."""
    return intake(source, name).image


def intake(source: bytes | str | Path, name: str | None = None) -> Intake:
    """As `load_image`, with the note beside the image."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name
        data = files.read(path, MAX_BYTES, "image", ImageError, name, hint=_SMALLER)
    else:
        data = bytes(source)
    im = decode(data, name or "the image")
    return Intake(im, note(im))


def note(image: Image.Image) -> str | None:
    """What intake changed about `image` (cropped, scaled), for the user; None if nothing."""
    return image.info.get(NOTE)


def check_size(n: int, name: str = "the image") -> None:
    """Refuse `n` bytes over `MAX_BYTES`, before they are hashed or parsed."""
    files.check_size(n, MAX_BYTES, name, "image", ImageError, _SMALLER)


def decode(data: bytes, name: str = "the image") -> Image.Image:
    if not data:
        raise ImageError(f"{name} is empty (0 bytes). Choose an image file such as PNG or JPEG.")
    check_size(len(data), name)
    if data[:4] == b"\x00\x00\x01\x00":  # ICO: Pillow decodes a payload inside Image.open
        _check_ico(data, name)
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
        ImageOps.exif_transpose(im, in_place=True)  # in place: no second copy of a big image
    except Exception:
        raise ImageError(
            f"{name} is truncated or corrupt and cannot be decoded. Re-export or re-download it."
        ) from None
    return bound(im, name)


def bound(im: Image.Image, name: str = "the image") -> Image.Image:
    """`im` as RGB within the intake bounds: cut to `MAX_ASPECT`:1 about its centre, then
    scaled to at most `MAX_SIDE` pixels a side; the note (`note(...)`) says what changed.
    Every model resizes the shortest side to its input and centre-crops a square, so the
    cut never removes what a network sees."""
    w, h = im.size
    done = []
    long, short = max(w, h), min(w, h)
    if long > short * MAX_ASPECT:
        keep = short * MAX_ASPECT
        x0, y0 = ((w - keep) // 2, 0) if w > h else (0, (h - keep) // 2)
        im = im.crop((x0, y0, x0 + (keep if w > h else w), y0 + (h if w > h else keep)))
        done.append(f"cropped to its centre, {im.width}x{im.height} (the limit is {MAX_ASPECT}:1)")
    if max(im.size) > MAX_SIDE:
        s = MAX_SIDE / max(im.size)
        size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
        if im.mode not in _RESAMPLES:
            im = to_rgb(im)
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        done.append(f"scaled to {size[0]}x{size[1]} (the limit is {MAX_SIDE} pixels a side)")
    rgb = to_rgb(im)
    if done:
        rgb.info[NOTE] = (f"{name} was {w}x{h} pixels; " + " and ".join(done)
                          + ". The network sees its centre at its own input size either way.")
    return rgb


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency onto white, high bit depth rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _to_8bit(im).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float greyscale -> 8-bit "L": 16-bit over its full range,
    the others from their finite minimum to maximum. In chunks of rows through float32,
    never a float64 copy of the whole image (~1 GB near the pixel limit)."""
    a = np.asarray(im)  # one copy at the image's own depth (2 or 4 bytes a pixel)
    if a.ndim != 2:
        a = a.reshape(im.height, im.width)
    rows = max(1, _CHUNK // max(1, a.shape[1]))
    if im.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = np.inf, -np.inf
        for r in range(0, a.shape[0], rows):
            c = a[r:r + rows]
            if c.dtype.kind == "f":
                c = c[np.isfinite(c)]
            if c.size:
                lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        if lo > hi:  # nothing finite
            lo, hi = 0.0, 1.0
    scale = np.float32(255.0 / max(hi - lo, 1e-12))
    out = np.empty(a.shape, np.uint8)
    for r in range(0, a.shape[0], rows):
        c = a[r:r + rows].astype(np.float32)
        c -= np.float32(lo)
        c *= scale
        np.nan_to_num(c, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(c, 0, 255, out=c)
        c += np.float32(0.5)
        out[r:r + rows] = c  # truncates: rounded half up
    return Image.fromarray(out, "L")


def _check_ico(data: bytes, name: str) -> None:
    """Every payload of an ICO within `bounds.ICO_SIDE`, from the directory and each
    payload's own header (a PNG's IHDR, a bitmap's DIB header), before Pillow decodes one."""
    count = int.from_bytes(data[4:6], "little")
    for i in range(count):
        entry = data[6 + 16 * i: 22 + 16 * i]
        if len(entry) < 16:
            break  # a short directory: Pillow refuses it as corrupt
        offset = struct.unpack("<I", entry[12:16])[0]
        head = data[offset: offset + 26]
        w = h = 0
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            w, h = struct.unpack(">II", head[16:24])
        elif len(head) >= 12 and struct.unpack("<I", head[:4])[0] == 12:  # BITMAPCOREHEADER
            w, h = struct.unpack("<HH", head[4:8])
            h //= 2  # the colour image and its mask
        elif len(head) >= 12:  # BITMAPINFOHEADER and later
            w, h = struct.unpack("<ii", head[4:12])
            w, h = abs(w), abs(h) // 2
        if max(w, h) > bounds.ICO_SIDE:
            raise ImageError(
                f"{name} is an icon (ICO) holding a {w}x{h} picture; icons are limited to "
                f"{bounds.ICO_SIDE}x{bounds.ICO_SIDE}. Save the picture as PNG or JPEG instead."
            )


_SMALLER = "Save a smaller copy (a few megapixels is plenty)."


def _too_many_pixels(name: str, size: tuple[int, int] | None) -> str:
    dims = f" ({size[0]}x{size[1]} pixels)" if size else ""
    return (
        f"{name} is too large{dims}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels. "
        "Resize it before uploading."
    )
