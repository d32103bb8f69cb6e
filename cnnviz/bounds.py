"""Server-side bounds on everything a user controls, in one place.

A widget's range is a convenience; these are the limits: a URL, the CLI or a crafted
upload can ask for anything, and the backend refuses (or clamps, saying so) whatever
lies outside them before allocating or running anything.
"""
from __future__ import annotations

MiB = 2 ** 20

# ---------------------------------------------------------------- uploads (checked before parsing)
IMAGE_BYTES = 50 * MiB
WEIGHTS_BYTES = 600 * MiB  # VGG-16's state dict is 528 MB
LABELS_BYTES = 1 * MiB
MAX_CLASSES = 100_000  # a head wider than this is refused before it is built

# ---------------------------------------------------------------- jobs
# Images through the network (forward, or forward+backward) in one job, whatever its knobs.
MAX_PASSES = 20_000
