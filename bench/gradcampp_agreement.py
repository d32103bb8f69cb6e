"""Grad-CAM++ agreement (issue #18): Pearson of our layer map with the published formula
(Chattopadhyay et al. 2018, eq. 19, float64 from a plain forward hook), pytorch-grad-cam's
GradCAMPlusPlus and torchcam's GradCAMpp, per architecture and layer (the model's default
Grad-CAM layer and the last layer of the stage before it), on every sample image, for the
network's top-1 class on each; medians (and minima) over the images whose map is not flat
(std > 5% of its maximum, as the test requires; the rows list each image, flat or not). Also the largest
difference from the formula (max |ours - formula| / max formula) and torchcam against the
cubed-gradient map it actually computes. The maps and references are the ones
tests/test_gradcampp_reference.py holds (its helpers), all at the layer's resolution.

    pip install -r bench/requirements.txt && python bench/gradcampp_agreement.py
    python bench/gradcampp_agreement.py --models resnet --images cat horse
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import report  # noqa: E402

from cnnviz import models  # noqa: E402
from cnnviz.images import load_image  # noqa: E402
from cnnviz.samples import sample_paths  # noqa: E402
from tests.test_gradcampp_reference import case_layer, compare, max_rel_diff, pearson  # noqa: E402

MODELS = {"resnet": "torchvision:resnet18@random", "vgg": "torchvision:vgg16@random", "bundled": models.BUNDLED_ID}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--images", nargs="+", default=None, help="sample names (default: all)")
    args = ap.parse_args()
    paths = sample_paths()
    images = {n: load_image(paths[n]) for n in (args.images or paths)}
    rows, per_image = [], []
    for name in args.models:
        model = models.load(MODELS[name])
        for role in ("default", "earlier"):
            layer = case_layer(model, role)
            got: dict[str, list[float]] = {k: [] for k in ("formula", "pgc", "torchcam", "dmax", "tc_cubed")}
            for img, image in images.items():
                m = compare(model, image, layer)
                flat = float(m["ours"].max()) <= 0 or float(m["ours"].std()) <= 0.05 * float(m["ours"].max())
                r = {"model": name, "layer": layer, "image": img, "target": m["target"],
                     "formula": pearson(m["ours"], m["formula"]), "pgc": pearson(m["ours"], m["pytorch_grad_cam"]),
                     "torchcam": pearson(m["ours"], m["torchcam"]), "dmax": max_rel_diff(m["ours"], m["formula"]),
                     "tc_cubed": pearson(m["torchcam"], m["cubed"]), "flat": flat}
                per_image.append(r)
                print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                      flush=True)
                if not flat:
                    for k in got:
                        got[k].append(r[k])
            n = len(got["formula"])
            r5 = lambda v: f"{v:.5f}"  # noqa: E731  (the table's 4 significant digits would round 0.99995 to 1)
            rows.append({"model": name, "layer": layer, "images": n,
                         "r_formula_med": r5(statistics.median(got["formula"])),
                         "r_formula_min": r5(min(got["formula"])),
                         "r_pgc_med": r5(statistics.median(got["pgc"])), "r_pgc_min": r5(min(got["pgc"])),
                         "r_torchcam_med": r5(statistics.median(got["torchcam"])),
                         "r_torchcam_min": r5(min(got["torchcam"])),
                         "dmax_formula_med": statistics.median(got["dmax"]), "dmax_formula_max": max(got["dmax"]),
                         "r_torchcam_vs_cubed_min": r5(min(got["tc_cubed"]))})
        del model
    report("gradcampp_agreement", rows, {"images": list(images), "per_image": per_image})


if __name__ == "__main__":
    main()
