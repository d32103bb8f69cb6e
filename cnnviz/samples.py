"""The bundled sample images (assets/samples): names and paths."""
from __future__ import annotations

import functools
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"
_SUFFIXES = (".jpg", ".jpeg", ".png")


def sample_paths() -> dict[str, Path]:
    """Sample name (file stem) -> path, sorted by name (a new dict: callers may change it)."""
    return dict(_scan())


@functools.cache
def _scan() -> tuple[tuple[str, Path], ...]:
    # Once per process: the sidebar asks on every rerun, and on a crowded server each
    # directory read gives up the interpreter lock and waits to take it back.
    return tuple((p.stem, p) for p in sorted(SAMPLES_DIR.iterdir()) if p.suffix.lower() in _SUFFIXES)
