"""Activations page benchmarks (issue #3), medians and ratios from one run.

1. Mosaic of the bundled model's widest layer (`_swish#1`, 1280 channels): building
   the tile image and the Plotly figure (serialized, as Streamlit sends it) against
   the bare forward pass that produced the activations.
2. Page reruns that change only the view (channel, sort, colour scale, opacity):
   AppTest time, and the forward passes they made (should be 0).
3. Memory: the cached activations of all layers for one image at 224x224.
4. (issue #14) What the page records against a bare forward of the same input: the layer
   on screen (the pass stops there: first, middle, last layer), the depth summary
   (every layer reduced inside its hook, no map kept), and the old all-layers recording;
   and the memory one cached image costs the page (the shown layer's map with every
   mosaic view built, for the widest layer), against the old ~75 MB.

    python bench/bench_activations.py [--repeats 30]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
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


def page_recording(repeats: int) -> list[dict]:
    from cnnviz import jobs

    model = models.load(models.BUNDLED_ID)
    image = load_image(SAMPLE)
    px = model.to_pixels(image)
    x = model.normalize(px)
    names = A.spatial_layers(model)
    shape = {l.name: l.shape for l in model.layers}
    widest = max(names, key=lambda n: int(np.prod(shape[n])))

    def bare():
        with torch.inference_mode():
            model.net(x)

    cases = {"bare": bare,
             f"layer on screen, first ({names[0]})": lambda: A.compute(model, px, [names[0]]),
             f"layer on screen, middle ({names[len(names) // 2]})": lambda: A.compute(model, px, [names[len(names) // 2]]),
             f"layer on screen, last ({names[-1]})": lambda: A.compute(model, px, [names[-1]]),
             "depth summary (all layers reduced in the hooks)": lambda: A.depth_rows(model, px),
             "before: every layer's map kept": lambda: A.compute(model, px)}
    t = interleaved(cases, repeats)
    b = median(t.pop("bare"))
    rows = [{"case": f"page recording: {k}", "baseline_ms": b * 1e3, "measured_ms": median(v) * 1e3,
             "ratio": median(v) / b, "goal": "<= 1.12" if k.startswith("layer") else "report"} for k, v in t.items()]
    res = jobs.run(model, image, A.ActivationsSpec((widest,)))
    for sort in A.SORTS:
        for scale in A.SCALES:
            res.mosaic(widest, sort, scale)
    held = res.nbytes + sum(v[0].nbytes for v in res.mosaics._values.values())
    depth = len(__import__("pickle").dumps(jobs.run(model, image, A.DepthSpec())))
    rows.append({"case": f"page memory per cached image: {widest} map + mosaics, depth rows", "baseline_ms": "",
                 "measured_ms": "", "ratio": "", "goal": f"{held / 2**20:.1f} MB + {depth / 1024:.0f} KB (<= 10 MB)"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rows = [mosaic_vs_forward(args.repeats), *view_reruns(10), memory(), *page_recording(args.repeats)]
    report("activations", rows)


if __name__ == "__main__":
    main()
