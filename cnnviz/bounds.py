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

# ---------------------------------------------------------------- memory (per process, every session together)
# The caches are bounded in bytes (cnnviz.lru.nbytes), not only in entries: one entry can be a
# 120 MB decoded image or a recording of every layer (~75 MB for the bundled model). The sums
# below keep a server with a few models loaded under ~3 GB whatever the sessions ask for.
RESULT_BYTES = 512 * MiB  # analysis results (pickled, copied per read): hundreds of maps and curves
SHARED_RESULT_BYTES = 512 * MiB  # large read-only results (layer recordings): about 6 of ~75 MB
IMAGE_CACHE_BYTES = 256 * MiB  # decoded images: two at the 40-megapixel limit (120 MB each), or many photos
THUMBNAIL_BYTES = 16 * MiB  # the sample picker's JPEG thumbnails (~5 KB each)
MODELS = 3  # zoo and bundled models kept loaded: three of the largest (VGG-16, 528 MB) are 1.6 GB
MODEL_BYTES = 2 * 2 ** 30  # ... and never more than this in all (a model above it is used, not kept)
OWN_MODELS = 4  # uploaded checkpoints kept for their sessions (one copy per file, whoever loaded it)
OWN_MODEL_BYTES = 1280 * MiB  # more than two of the largest upload (WEIGHTS_BYTES), so each one fits
FEATUREVIS_MEMORY_BYTES = 64 * MiB  # finished synthetic images: ~1300 at 128 px, 80 at 512 px
FEATUREVIS_NATURAL_BYTES = 256 * MiB  # the sample photos' recordings of a layer (~4-15 MB; early VGG layers ~130 MB)

# ---------------------------------------------------------------- disk
# Feature visualizations kept between runs ($CNNVIZ_CACHE/featurevis), least recently used out
# first: a 128 px render is ~50 KB, so this keeps about 5000 of them.
FEATUREVIS_DISK_BYTES = 256 * MiB
