"""Feature-visualization benchmark (issue #8), medians and ratios from one run.

Seconds per optimization step of `featurevis.run` on a `FeatureVisSpec` with
`cache=False` (what `python -m cnnviz featurevis` times: Fourier image, colour
decorrelation, jitter/scale/rotation, Adam; the first steps with redirected ReLU
gradients) against a bare forward+backward of the same model at the same size (the
logit of one class back to the input), and against torch-lucent's `render_vis` with
matching settings in the same run: the same network taking [0, 1] pixels, a 128x128
FFT-parameterized, colour-decorrelated image, Adam at lr 0.05, the same channel
objective, the same number of steps.

What had to be adapted for lucent 0.1.8:
- kornia >= 0.6 moved `get_rotation_matrix2d` and `warp_affine` out of the top-level
  package that lucent's `random_rotate` calls; they are aliased back (the same functions).
- `render_vis` upsamples anything below 224 to 224 before the model: `fixed_image_size=128`
  keeps it at our size. `preprocess=False`, since the pixel-space network normalizes.
- lucent names layers by joining module paths with "_" and keeps the last call of a
  shared module, which is our `_swish#1`; its hooks stay on the model, so it gets a copy.
- Its transforms are its own `standard_transforms` (pad 12, jitter 8, scale 0.95-1.05,
  rotate +-5 deg, jitter 4), ours one affine resample; both per step.

Without torch-lucent installed the peer rows are left out. `--runner` adds a row through
`cnnviz.jobs.run` (the private copy, and the runner's torch threads for a long job).

    pip install -r bench/requirements.txt && pip install --no-deps torch-lucent==0.1.8
    python bench/bench_featurevis.py [--steps 128] [--repeats 3] [--runner]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import interleaved, median, report  # noqa: E402

from cnnviz import featurevis as FV  # noqa: E402
from cnnviz import jobs, models  # noqa: E402

CASES = (("_blocks.3._swish#1", 5), ("_blocks.8._swish#1", 7), ("_blocks.14._swish#1", 3))
SIZE = 128


def lucent_render(net, layer: str, channel: int, steps: int):
    import kornia
    from kornia.geometry import transform as KT
    from lucent.optvis import param, render

    kornia.get_rotation_matrix2d = getattr(kornia, "get_rotation_matrix2d", KT.get_rotation_matrix2d)
    kornia.warp_affine = getattr(kornia, "warp_affine", KT.warp_affine)
    name = "1_" + layer.split("#")[0].replace(".", "_")  # Sequential(normalize, net): child "1"

    def run():
        render.render_vis(net, f"{name}:{channel}", param_f=lambda: param.image(SIZE), thresholds=(steps,),
                          preprocess=False, progress=False, show_image=False, fixed_image_size=SIZE)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runner", action="store_true", help="also time the run through cnnviz.jobs.run")
    args = ap.parse_args()
    try:
        import lucent  # noqa: F401
        peer = True
    except ImportError:
        print("torch-lucent is not installed: no peer rows", file=sys.stderr)
        peer = False
    model = models.load(models.BUNDLED_ID)
    x = torch.rand(1, 3, SIZE, SIZE)
    peer_net = copy.deepcopy(model.pixel_net)

    def bare():
        xi = x.detach().requires_grad_(True)
        model.pixel_net(xi)[0, 1].backward()

    rows = []
    for layer, channel in CASES:
        spec = FV.FeatureVisSpec(layer, channel, "channel", size=SIZE, steps=args.steps, cache=False)
        fns = {"bare": bare, "ours": lambda s=spec: FV.run(model, None, s)}
        if peer:
            fns["lucent"] = lucent_render(peer_net, layer, channel, args.steps)
        if args.runner:
            fns["runner"] = lambda s=spec: jobs.run(model, None, s)
        t = interleaved(fns, args.repeats, warmup=1)
        b = median(t["bare"])
        ours = median(t["ours"]) / args.steps
        rows.append({"case": f"ours: {layer}:{channel}", "bare_fwd_bwd_ms": b * 1e3, "ms_per_step": ours * 1e3,
                     "ratio_vs_bare": ours / b, "goal": "<= 1.25 and faster than lucent"})
        if peer:
            luc = median(t["lucent"]) / args.steps
            rows.append({"case": f"lucent render_vis: {layer}:{channel}", "bare_fwd_bwd_ms": b * 1e3,
                         "ms_per_step": luc * 1e3, "ratio_vs_bare": luc / b, "goal": f"peer ({luc / ours:.2f}x ours)"})
        if args.runner:
            run = median(t["runner"]) / args.steps
            rows.append({"case": f"ours via jobs.run ({jobs.RUNNER.heavy_threads} threads): {layer}:{channel}",
                         "bare_fwd_bwd_ms": b * 1e3, "ms_per_step": run * 1e3, "ratio_vs_bare": run / b,
                         "goal": "info"})
        print(*rows[-1 - peer - args.runner:], flush=True)
    spec = FV.FeatureVisSpec(None, 1, "class", size=SIZE, steps=args.steps, cache=False)
    t = interleaved({"bare": bare, "ours": lambda: FV.run(model, None, spec)}, args.repeats, warmup=1)
    b, ours = median(t["bare"]), median(t["ours"]) / args.steps
    rows.append({"case": "ours: class logit 1", "bare_fwd_bwd_ms": b * 1e3, "ms_per_step": ours * 1e3,
                 "ratio_vs_bare": ours / b, "goal": "<= 1.25"})
    report("featurevis", rows, {"steps": args.steps, "size": SIZE, "repeats": args.repeats})


if __name__ == "__main__":
    main()
