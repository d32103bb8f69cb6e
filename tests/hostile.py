"""Hostile files made inside the tests (none is committed): cheap to build, and importable
by a measuring subprocess without importing streamlit or the test modules."""
import io
import struct
import zlib


def stream_png(w: int, h: int, color_type: int = 0, bit_depth: int = 8) -> bytes:
    """A w x h PNG of one repeated row (a gradient), streamed through zlib: a 40-megapixel
    image in a few hundred KB, made in a second or two."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    n = (w * channels * bit_depth + 7) // 8
    row = b"\x00" + bytes(i * 7 % 256 for i in range(n))
    comp, block = zlib.compressobj(6), row * max(1, 100_000 // len(row))
    rows_per_block = len(block) // len(row)
    parts, left = [], h
    while left >= rows_per_block:
        parts.append(comp.compress(block))
        left -= rows_per_block
    parts += [comp.compress(row * left), comp.flush()]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def ico(payload: bytes, directory_size=(16, 16)) -> bytes:
    """An ICO with one entry whose directory claims `directory_size` and holds `payload`."""
    w, h = directory_size
    return (struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", w % 256, h % 256, 0, 0, 1, 32, len(payload), 22)
            + payload)


def saved(obj, **kw) -> bytes:
    """`obj` as torch.save writes it."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def huge_head() -> bytes:
    """~1 KB: a head weight claiming 8,000,000 classes (a stride-0 view of one float)."""
    import torch

    return saved({"fc.weight": torch.zeros(1).expand(8_000_000, 512), "fc.bias": torch.zeros(1).expand(8_000_000)})


def finetuned(classes=3, arch="resnet18") -> dict:
    """A fine-tuned-like state dict: the architecture with a `classes`-way head, seeded."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None, num_classes=classes).state_dict()
