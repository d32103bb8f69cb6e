"""Activations page benchmarks (issue #3), medians and ratios from one run.

1. Mosaic of the bundled model's widest layer (`_swish#1`, 1280 channels): building
   the tile image and the Plotly figure (serialized, as Streamlit sends it) against
   the bare forward pass that produced the activations.
2. Page reruns that change only the view (channel, sort, colour scale, opacity):
   AppTest time, and the forward passes they made (should be 0).
3. Memory: the cached activations of all layers for one image at 224x224.

    python bench/bench_activations.py [--repeats 30]
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

from cnnviz import activations as A  # noqa: E402
from cnnviz import models, render  # noqa: E402
from cnnviz.images import load_image  # noqa: E402

SAMPLE = ROOT / "assets" / "samples" / "cat.jpg"


def mosaic_vs_forward(repeats: int) -> dict:
    model = models.load(models.BUNDLED_ID)
    image = load_image(SAMPLE)
    x = model.preprocess(image)
    acts = A.compute(model, image, ["_swish#1"])["_swish#1"]

    def forward():
        with torch.inference_mode():
            model.net(x)

    def mosaic():
        stats = A.ChannelStats.of(acts)
        rgb, grid = A.mosaic(acts, stats.order("mean"))
        return render.mosaic_figure(rgb, grid, stats, 0).to_json()

    t = interleaved({"forward": forward, "mosaic": mosaic}, repeats)
    f, m = median(t["forward"]), median(t["mosaic"])
    return {"case": f"mosaic of _swish#1 {list(acts.shape)} (figure JSON)", "baseline_ms": f * 1e3,
            "measured_ms": m * 1e3, "ratio": m / f, "goal": "<= 2 (vs its forward pass)"}


def view_reruns(repeats: int) -> list[dict]:
    from streamlit.testing.v1 import AppTest

    from cnnviz.app import cache

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    at.switch_page("pages/activations.py").run()
    at.selectbox(key="act_layer").set_value("_swish#1").run()
    calls = []
    handle = cache.model(models.BUNDLED_ID).net.register_forward_pre_hook(lambda *a: calls.append(1))
    changes = {
        "channel": lambda i: at.number_input(key="act_channel").set_value(i % 50),
        "sort": lambda i: at.radio(key="act_sort").set_value(A.SORTS[i % 3]),
        "colour scale": lambda i: at.radio(key="act_scale").set_value(("global", "channel")[i % 2]),
        "opacity": lambda i: at.slider(key="act_opacity").set_value(round(0.1 + (i % 9) / 10, 2)),
    }
    rows = []
    for name, change in changes.items():
        times = []
        for i in range(1, repeats + 1):
            change(i)
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
        assert not at.exception, at.exception
        rows.append({"case": f"rerun after {name} change (AppTest)", "baseline_ms": "",
                     "measured_ms": median(times) * 1e3, "ratio": "", "goal": f"0 forward passes (saw {len(calls)})"})
    handle.remove()
    return rows


def memory() -> dict:
    model = models.load(models.BUNDLED_ID)
    acts = A.compute(model, load_image(SAMPLE))
    mb = A.nbytes(acts) / 2**20
    return {"case": f"cached activations, all {len(acts)} spatial layers, 224x224", "baseline_ms": "",
            "measured_ms": "", "ratio": "", "goal": f"{mb:.1f} MB per image; cache holds 3 (<= {3 * mb:.0f} MB)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rows = [mosaic_vs_forward(args.repeats), *view_reruns(10), memory()]
    report("activations", rows)


if __name__ == "__main__":
    main()
