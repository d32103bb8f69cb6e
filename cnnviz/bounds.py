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
# A state dict's index (the pickle naming its tensors) takes ~150 bytes a tensor: a few hundred
# KB for the largest torchvision model. One far larger makes millions of tensor objects from a
# small file (views of one shared storage), so it is refused before torch.load reads it.
CHECKPOINT_INDEX_BYTES = 4 * MiB
# Zip records in a torch.save file: one per tensor storage (~1,000 for DenseNet-121).
CHECKPOINT_RECORDS = 65_536
# A classifier needs two classes to have a decision: with one, every softmax is 1.0 and
# top-k, attacks ("away from the top-1") and flips have nothing to compare.
MIN_CLASSES = 2
# One class name: torchvision's longest (ImageNet, Kinetics) are under 40 characters;
# a line past this is not a name (a binary or minified file given by mistake).
LABEL_CHARS = 256
# The largest upload kind: `server.maxUploadSize` in .streamlit/config.toml (in MB) is
# this, and each kind is then checked against its own limit above (a test keeps them equal).
UPLOAD_BYTES = max(IMAGE_BYTES, WEIGHTS_BYTES, LABELS_BYTES)

# ---------------------------------------------------------------- images (at intake, once per upload)
# Decoded pixels, from the header before any pixel is decoded (~6300 x 6300, 120 MB as RGB).
IMAGE_PIXELS = 40_000_000
# After decoding, an image is cut to at most IMAGE_ASPECT : 1 about its centre, then scaled
# so its longest side is at most IMAGE_SIDE, and the user is told. Every model resizes the
# shortest side to its input (224-600 pixels) and centre-crops a square, so the crop never
# removes what a network sees, and 4096 keeps a photo sharp well past any model's input;
# without the bound a 40 x 1,000,000 image became 256 x 6,400,000 (6.5 GB) on every rerun.
IMAGE_ASPECT = 8
IMAGE_SIDE = 4096
# ICO decodes its payload inside Image.open, before any check of ours: every payload's
# size is read from the directory and the payload's own header first. 256 is the format's
# largest directory size; a bigger "icon" is a disguised bitmap.
ICO_SIDE = 1024

# ---------------------------------------------------------------- jobs
# Images through the network (forward, or forward+backward) in one job, whatever its knobs.
MAX_PASSES = 20_000
