import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnviz import images
from cnnviz.images import ImageError, load_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_every_sample_loads_as_rgb(samples):
    assert len(samples) >= 8
    for name, path in samples.items():
        im = load_image(path)
        assert im.mode == "RGB" and min(im.size) >= 100, name


def test_path_and_bytes_give_the_same_pixels(samples):
    path = samples["cat"]
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(path.read_bytes())))


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    im.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(load_image(encode(im, "PNG")))
    assert tuple(out[1, 1]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (0, 0, 255)


def test_la_and_palette_with_transparency():
    la = Image.new("LA", (3, 3), (0, 0))
    assert tuple(np.asarray(load_image(encode(la, "PNG")))[1, 1]) == (255, 255, 255)
    p = Image.new("P", (3, 3), 1)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 0
    assert tuple(np.asarray(load_image(encode(p, "PNG", transparency=0)))[0, 0]) == (0, 255, 0)
    p.putpixel((0, 0), 0)
    assert tuple(np.asarray(load_image(encode(p, "PNG", transparency=0)))[0, 0]) == (255, 255, 255)


def test_cmyk_jpeg():
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = np.asarray(load_image(encode(im, "JPEG", quality=95)))[4, 4]
    assert r > 200 and g < 60 and b < 60


def test_16_bit_greyscale_keeps_its_range():
    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = np.asarray(load_image(encode(Image.fromarray(a), "PNG")))
    assert out.shape == (64, 64, 3)
    assert out[0, 0, 0] < 5 and out[-1, -1, 0] > 250  # not clipped to white
    assert (out[..., 0] == out[..., 1]).all()


def test_float_tiff_and_bilevel():
    f = Image.fromarray(np.linspace(-1, 3, 100, dtype=np.float32).reshape(10, 10), "F")
    out = np.asarray(load_image(encode(f, "TIFF")))
    assert out.min() == 0 and out.max() == 255
    one = Image.new("1", (5, 5), 1)
    assert np.asarray(load_image(encode(one, "PNG"))).min() == 255


def test_animation_gives_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    r, g, b = np.asarray(load_image(buf.getvalue()))[3, 3]
    assert r > 200 and b < 50


def test_exif_orientation_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_image(encode(im, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    a = np.asarray(out).mean(axis=(1, 2))
    assert a[:20].mean() > 200 and a[20:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"this is plainly not an image", "not an image"),
    (b"GIF89a" + b"\x00" * 3, "not an image"),
])
def test_bad_bytes_explained(data, words):
    with pytest.raises(ImageError, match=words):
        load_image(data, "upload.png")


def test_truncated_jpeg():
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], "half.jpg")


def bomb_png(w: int, h: int) -> bytes:
    """A 1-bit w x h PNG streamed through zlib: tiny file, huge image."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageError, match="too large"):
        load_image(bomb_png(20000, 20000), "bomb.png")


def test_over_our_pixel_limit_but_under_pillows(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"too large \(40x40 pixels\)"):
        load_image(encode(Image.new("RGB", (40, 40)), "PNG"))


def test_too_many_bytes(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "MAX_BYTES", 100)
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(ImageError, match="the limit is"):
        load_image(data)
    (tmp_path / "big.png").write_bytes(data)
    with pytest.raises(ImageError, match="big.png is"):
        load_image(tmp_path / "big.png")


def test_unsupported_format():
    with pytest.raises(ImageError, match="TGA file, which is not supported"):
        load_image(encode(Image.new("RGB", (8, 8)), "TGA"), "x.tga")


def test_missing_path():
    with pytest.raises(ImageError, match="Cannot read"):
        load_image("/nonexistent/cat.png")
