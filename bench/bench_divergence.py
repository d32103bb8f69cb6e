"""Where the attack takes over (issue #18): the divergence job against bare forward passes.

The job (`DivergenceSpec` through `jobs.run`, as the page and `attack --layers` run it) is
one recorded pass of [clean, adversarial, noise] as one batch, every layer reduced inside
its hook. Timed against a bare forward (inference mode) of a batch of 3 (the same work
without the hooks) and of a batch of 1; medians of interleaved runs. The click view's
job (`LayerPairSpec`: one layer for [clean, adversarial], the pass stops there) too.

    python bench/bench_divergence.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import interleaved, median, report  # noqa: E402

from cnnviz import adversarial as A  # noqa: E402
from cnnviz import divergence as D  # noqa: E402
from cnnviz import jobs, models  # noqa: E402
from cnnviz.images import load_image  # noqa: E402
from cnnviz.pixels import from_uint8  # noqa: E402

SAMPLE = ROOT / "assets" / "samples" / "cat.jpg"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    model = models.load(models.BUNDLED_ID)
    image = load_image(SAMPLE)
    res = A.run(model, image, A.AttackSpec("fgsm", 2))
    ctl = A.run(model, image, A.NoiseSpec(2, 0))
    spec = D.DivergenceSpec(D.Picture.of(res.adversarial), D.Picture.of(ctl.adversarial))
    pair = D.LayerPairSpec("_swish#1", D.Picture.of(res.adversarial))  # the deepest map: the longest pair pass
    x3 = model.normalize(torch.cat([A.pixels(model, image), from_uint8(res.adversarial), from_uint8(ctl.adversarial)]))
    x1 = x3[:1].clone()

    def bare(x):
        def f():
            with torch.inference_mode():
                model.net(x)
        return f

    model.layers  # the layer list's probe, once per model
    px = [A.pixels(model, image), from_uint8(res.adversarial), from_uint8(ctl.adversarial)]
    times = interleaved({"divergence job": lambda: jobs.run(model, image, spec),
                         "divergence() on pixels": lambda: D.divergence(model, *px),
                         "layer pair job (_swish#1)": lambda: jobs.run(model, image, pair),
                         "bare forward, batch 3": bare(x3), "bare forward, batch 1": bare(x1)}, args.repeats)
    med = {k: median(v) for k, v in times.items()}
    b3, b1 = med["bare forward, batch 3"], med["bare forward, batch 1"]
    rows = [{"case": k, "median_s": v, "vs_bare_batch3": v / b3, "vs_bare_batch1": v / b1} for k, v in med.items()]
    report("divergence", rows, {"repeats": args.repeats, "layers": len(D.layer_names(model)),
                                "divergence_vs_batch3": med["divergence job"] / b3,
                                "divergence_vs_batch1": med["divergence job"] / b1})


if __name__ == "__main__":
    main()
