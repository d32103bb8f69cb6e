"""The layer advisor and the methods' comparison (issue #18), medians and ratios in one run.

The advisor (`SweepSpec(advise=True)`: Grad-CAM at every stage, each map and a random
order scored by deletion and insertion) against its floor: one bare forward+backward of
the model plus a bare forward of the same number of curve images in the same batches.
The comparison's curves (`faithfulness.curves` for four maps and the random order)
against the bare forward of its images. Run on the analyses' entry points, on one
thread, as the page's worker runs them.

    python bench/bench_advisor.py [--models efficientnet_lite0 torchvision:resnet18@random] [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import interleaved, median, report  # noqa: E402

from cnnviz import faithfulness as F  # noqa: E402
from cnnviz import models  # noqa: E402
from cnnviz import saliency as S  # noqa: E402
from cnnviz.images import load_image  # noqa: E402

SAMPLE = ROOT / "assets" / "samples" / "cat.jpg"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "torchvision:resnet18@random"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    image = load_image(SAMPLE)
    rows = []
    for mid in args.models:
        model = models.load(mid)
        x = model.to_pixels(image)
        spec = S.SweepSpec(1, advise=True).check(model)
        n_curves = F.passes(len(spec.layers) + 1, spec.steps)
        maps = {str(k): np.random.default_rng(k).random(model.input_size) for k in range(4)} | {F.RANDOM: None}
        n_compare = F.passes(len(maps), F.STEPS)
        batch = x.repeat(F.BATCH, 1, 1, 1)

        def bare_forward(n: int) -> None:
            with torch.inference_mode():
                for i in range(0, n, F.BATCH):
                    model.pixel_net(batch[: min(F.BATCH, n - i)])

        def bare_fwd_bwd() -> None:
            xg = x.clone().requires_grad_(True)
            model.pixel_net(xg)[0, 1].backward()

        times = interleaved({
            "advisor": lambda: S.run(model, image, spec),
            "floor": lambda: (bare_fwd_bwd(), bare_forward(n_curves)),
            "curves": lambda: F.curves(model, image, maps, 1),
            "curves floor": lambda: bare_forward(n_compare),
        }, args.repeats, warmup=0)
        med = {k: median(v) for k, v in times.items()}
        rows.append({"model": mid, "stages": len(spec.layers), "curve images": n_curves,
                     "advisor s": med["advisor"], "floor s": med["floor"],
                     "advisor / floor": med["advisor"] / med["floor"],
                     "compare curves s": med["curves"], "compare / bare forward": med["curves"] / med["curves floor"]})
    report("bench_advisor", rows)


if __name__ == "__main__":
    main()
