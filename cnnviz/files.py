"""Bytes a user hands in (a path on the command line, an upload), within their kind's limit.

One place for the size checks every kind shares (images, weight files, labels files; the
limits are in `cnnviz.bounds`): a path is checked before anything is read, a read never
takes more than the limit plus one byte (a device such as /dev/zero, or a file that grows,
has no trustworthy size), and every failure is the caller's own `CnnvizError` subclass
with a message that says what is wrong, the limit, and what to do.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .contract import CnnvizError

# kind -> (what the limit is for, what to give instead of a folder)
KINDS = {
    "image": ("images", "an image file (PNG, JPEG, ...)"),
    "weights": ("weight files", "a state dict file (.pt, .pth, .safetensors)"),
    "labels": ("labels files", "a text file with one class name per line"),
}


def size_text(n: int) -> str:
    """A byte count as people read it: 612 bytes, 48 KB, 50 MB, 1.2 GB."""
    if n < 1024:
        return f"{n} bytes"
    if n < 2 ** 20:
        return f"{n / 1024:.0f} KB"
    if n < 2 ** 30:
        return f"{n / 2 ** 20:.0f} MB"
    return f"{n / 2 ** 30:.1f} GB"


def too_large(name: str, n: int | None, limit: int, kind: str, hint: str = "") -> str:
    """`name` is `n` bytes (None: more than `limit`, its size unknown) over `kind`'s `limit`."""
    got, lim = (f"larger than {size_text(limit)}" if n is None else size_text(n)), size_text(limit)
    if got == lim:  # just over: rounded, both would read the same
        got, lim = f"{n:,} bytes", f"{limit:,} bytes"
    return f"{name} is {got}; the limit is {lim} for {KINDS[kind][0]}.{(' ' + hint) if hint else ''}"


def check_size(n: int, limit: int, name: str, kind: str, error: type[CnnvizError], hint: str = "") -> None:
    """Refuse `n` bytes over `limit` before anything parses them."""
    if n > limit:
        raise error(too_large(name, n, limit, kind, hint))


def check_readable(path: str | Path, kind: str, error: type[CnnvizError], name: str | None = None) -> os.stat_result:
    """`path` names something that reads as a file (nothing is read yet): it exists and is
    not a folder. Returns its stat."""
    p = Path(path)
    name = name or p.name or str(p)
    try:
        st = p.stat()
    except OSError as e:
        raise error(f"Cannot read {name}: {e.strerror or e}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{name} is a folder, not a file; give {KINDS[kind][1]}.")
    return st


def read(path: str | Path, limit: int, kind: str, error: type[CnnvizError], name: str | None = None,
         hint: str = "") -> bytes:
    """The bytes of `path`, at most `limit`: refused from its size when the file states one,
    else after reading `limit + 1` bytes (devices, pipes, files that grow)."""
    p = Path(path)
    name = name or p.name or str(p)
    st = check_readable(p, kind, error, name)
    if stat.S_ISREG(st.st_mode):
        check_size(st.st_size, limit, name, kind, error, hint)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"Cannot read {name}: {e.strerror or e}.") from None
    if len(data) > limit:
        raise error(too_large(name, None, limit, kind, hint))
    return data
