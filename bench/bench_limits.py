"""CNN limits benchmarks (issue #7), medians and ratios from one run.

A 24-point sweep (24 transformed images, none of them the identity, so all 24 go
through the network) against one batched forward of 24 images of the same size on
the same model: the goal is <= 1.3x, i.e. the transforms, thumbnails and bookkeeping
cost under a third of the forward pass. The smallest-flip search is reported per
image it classifies, against the same forward.

    python bench/bench_limits.py [--repeats 3] [--model torchvision:resnet18@random ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import interleaved, median, report  # noqa: E402

from cnnviz import limits as L  # noqa: E402
from cnnviz import models  # noqa: E402
from cnnviz.images import load_image  # noqa: E402
from cnnviz.predict import probabilities  # noqa: E402

SAMPLE = ROOT / "assets" / "samples" / "cat.jpg"
# 24 values each, none the identity (360 degrees is computed, not short-cut)
SWEEPS = {
    "rotate": [15.0 * i for i in range(1, 25)],
    "scale": [round(-3 + 0.25 * i, 2) for i in range(25) if i != 12],
    "noise": [0.02 * i for i in range(1, 25)],
    "shuffle": [2 + i % 15 for i in range(24)],
}


def sweep_rows(model_id: str, repeats: int) -> list[dict]:
    model = models.load(model_id)
    image = load_image(SAMPLE)
    probs = probabilities(model, image)
    batch = model.preprocess(image).repeat(24, 1, 1, 1) + 0.01 * torch.randn(24, 3, *model.input_size)

    def bare():
        with torch.inference_mode():
            model.net(batch)

    fns = {"bare": bare}
    for name, values in SWEEPS.items():
        assert len(values) == 24 and 0 not in values
        spec = L.SweepSpec(name, tuple(values), probs=probs)
        fns[name] = lambda spec=spec: L.run(model, image, spec)
    t = interleaved(fns, repeats, warmup=1)
    b = median(t["bare"])
    return [{"case": f"24-point {name} sweep vs one forward of 24 images: {model_id}", "baseline_ms": b * 1e3,
             "measured_ms": median(v) * 1e3, "ratio": median(v) / b, "goal": "<= 1.3"}
            for name, v in t.items() if name != "bare"]


def min_flip_row(model_id: str) -> dict:
    """Wall time of the search, per image it classified, against the bare batched forward per image."""
    model = models.load(model_id)
    image = load_image(SAMPLE)
    probs = probabilities(model, image)
    seen = []
    real = model.net.forward
    model.net.forward = lambda x: seen.append(len(x)) or real(x)
    t = time.perf_counter()
    flip = L.run(model, image, L.FlipSpec("noise", probs=probs))
    s = time.perf_counter() - t
    del model.net.forward
    n = sum(seen)
    batch = model.preprocess(image).repeat(24, 1, 1, 1)
    t = time.perf_counter()
    with torch.inference_mode():
        model.net(batch)
    per = (time.perf_counter() - t) / 24
    return {"case": f"min flip, noise ({n} images in {len(seen)} passes, found {flip.value}): {model_id}",
            "baseline_ms": per * n * 1e3, "measured_ms": s * 1e3, "ratio": s / (per * n), "goal": "info"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", action="append", help="model ids (default: the bundled model)")
    args = ap.parse_args()
    ids = args.model or [models.BUNDLED_ID]
    rows = [row for mid in ids for row in sweep_rows(mid, args.repeats)] + [min_flip_row(models.BUNDLED_ID)]
    report("limits", rows)


if __name__ == "__main__":
    main()
