"""The bundled sample images (assets/samples): names and paths."""
from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"
_SUFFIXES = (".jpg", ".jpeg", ".png")


def sample_paths() -> dict[str, Path]:
    """Sample name (file stem) -> path, sorted by name."""
    return {p.stem: p for p in sorted(SAMPLES_DIR.iterdir()) if p.suffix.lower() in _SUFFIXES}
