"""Receptive-field benchmarks (issue #5), medians and ratios from one run.

The architecture table (torch.fx trace + one forward on a blank input carrying the
field arithmetic) against one bare forward pass of the same model; one unit's effective
field (forward, then backward from that unit to the input) against a bare
forward+backward from the top logit to the input.

    python bench/bench_receptive.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import interleaved, median, report  # noqa: E402

from cnnviz import models  # noqa: E402
from cnnviz import receptive as R  # noqa: E402
from cnnviz.images import load_image  # noqa: E402

SAMPLE = ROOT / "assets" / "samples" / "cat.jpg"


def table_row(model_id: str, repeats: int) -> dict:
    model = models.load(model_id)
    x = torch.zeros(1, 3, *model.input_size)

    def forward():
        with torch.no_grad():
            model.net(x)

    t = interleaved({"table": lambda: R.architecture(model), "forward": forward}, repeats)
    table, fwd = median(t["table"]), median(t["forward"])
    return {"case": f"architecture table {model_id}", "ours_s": table, "baseline_s": fwd,
            "baseline": "one forward", "ratio": table / fwd}


def erf_row(model_id: str, layer: str, repeats: int) -> dict:
    model = models.load(model_id)
    pixels = model.to_pixels(load_image(SAMPLE))  # the effective field normalizes inside
    x = model.preprocess(pixels)
    u = R.unit(R.architecture(model), layer, input_size=model.input_size)

    def bare():
        xi = x.detach().requires_grad_(True)
        model.net(xi).max().backward()

    t = interleaved({"erf": lambda: R.effective(model, pixels, u), "bare": bare}, repeats)
    erf, fb = median(t["erf"]), median(t["bare"])
    return {"case": f"one unit's ERF {model_id} {layer}", "ours_s": erf, "baseline_s": fb,
            "baseline": "forward+backward to the input", "ratio": erf / fb}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rows = [
        table_row("torchvision:resnet50@random", args.repeats),
        table_row(models.BUNDLED_ID, args.repeats),
        table_row("torchvision:densenet121@random", args.repeats),
        erf_row(models.BUNDLED_ID, "_blocks.8._project_conv", args.repeats),
        erf_row("torchvision:resnet50@random", "layer3.5.conv2", args.repeats),
    ]
    report("receptive", rows, {"goals": {"resnet50 table": "under 1 s", "erf": "one forward+backward"}})


if __name__ == "__main__":
    main()
