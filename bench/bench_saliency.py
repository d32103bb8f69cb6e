"""Saliency benchmarks (issue #4), medians and ratios from one run.

Grad-CAM against a bare forward+backward pass (to the input) of the same model, and
against pytorch-grad-cam's GradCAM, torchcam's GradCAM and Captum's LayerGradCam on
the same layer and target; the layer sweep against one Grad-CAM; Score-CAM on the
bundled model's last layer (1280 channels) against pytorch-grad-cam's ScoreCAM at the
1280-channel layer it can reach (`_conv_head`; it cannot name the shared ReLU6's second
call); IG, SmoothGrad and Occlusion per pass against a bare forward(+backward).

Ours is timed through the analysis' entry point (`saliency.run` with a `SaliencySpec`,
which also reports the target's probability), as the page and the CLI run it; on a
checkout from before the contract, through `saliency.attribute`.

    pip install -r bench/requirements.txt && python bench/bench_saliency.py
    python bench/bench_saliency.py --only gradcam multipass --methods ig smoothgrad   # some rows
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import interleaved, median, peak_rss_mb, report  # noqa: E402

from cnnviz import models  # noqa: E402
from cnnviz import saliency as S  # noqa: E402
from cnnviz.images import load_image  # noqa: E402

SAMPLE = ROOT / "assets" / "samples" / "cat.jpg"
MULTIPASS = ("ig", "smoothgrad", "occlusion")


def ours(model, x, method: str, target: int, layer: str | None = None):
    """One attribution as the app computes it (see the module docstring)."""
    if hasattr(S, "SaliencySpec"):
        return S.run(model, x, S.SaliencySpec(method, target, layer))
    return S.attribute(model, x, method, target, layer)


def gradcam_rows(model_id: str, layer: str, repeats: int) -> list[dict]:
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchcamGradCAM

    model = models.load(model_id)
    image = load_image(SAMPLE)
    x = model.to_pixels(image)
    target = int(model.pixel_net(x).argmax())
    peer_net = copy.deepcopy(model.pixel_net).requires_grad_(True)  # the peers need trainable weights
    module = dict(peer_net[1].named_modules())[layer]
    pgc = GradCAM(model=peer_net, target_layers=[module])
    tc = TorchcamGradCAM(peer_net, target_layer=module)
    cap = LayerGradCam(model.pixel_net, dict(model.net.named_modules())[layer])

    def bare():
        xi = x.detach().requires_grad_(True)
        model.pixel_net(xi)[0, target].backward()

    def pytorch_grad_cam():
        pgc(input_tensor=x, targets=[ClassifierOutputTarget(target)])

    # Same output for all: a map at the input's resolution, ready to overlay (ours and
    # pytorch-grad-cam upsample inside; torchcam and Captum return the layer-sized map).
    def torchcam():
        out = peer_net(x)
        cam = tc(target, out)[0]
        torch.nn.functional.interpolate(cam[None], size=x.shape[-2:], mode="bilinear", align_corners=True)

    def captum():
        a = cap.attribute(x.detach().requires_grad_(True), target=target)
        LayerAttribution.interpolate(a, x.shape[-2:], "bilinear")

    t = interleaved({"bare": bare, "ours": lambda: ours(model, x, "gradcam", target, layer),
                     "pytorch-grad-cam": pytorch_grad_cam, "torchcam": torchcam, "captum": captum}, repeats)
    b = median(t["bare"])
    rows = [{"case": f"{name}: {model_id} @ {layer}", "baseline_ms": b * 1e3, "measured_ms": median(v) * 1e3,
             "ratio": median(v) / b, "goal": "<= 1.2 and fastest" if name == "ours" else "peer"}
            for name, v in t.items() if name != "bare"]
    tc.remove_hooks()
    return rows


def sweep_row(repeats: int) -> dict:
    model = models.load(models.BUNDLED_ID)
    image = load_image(SAMPLE)
    layers = S.stage_layers(model)
    t = interleaved({"one": lambda: ours(model, image, "gradcam", 285),
                     "sweep": lambda: S.gradcam_sweep(model, image, 285)}, repeats)
    o, s = median(t["one"]), median(t["sweep"])
    return {"case": f"layer sweep over {len(layers)} stages vs one Grad-CAM", "baseline_ms": o * 1e3,
            "measured_ms": s * 1e3, "ratio": s / o, "goal": "one forward + one backward"}


def scorecam_run(who: str) -> dict:
    """One Score-CAM in this (fresh) process: seconds and peak memory above the loaded model."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = models.load(models.BUNDLED_ID)
    x = model.to_pixels(load_image(SAMPLE))
    with torch.no_grad():
        model.pixel_net(x)  # warm up
    if who == "ours":
        fn = lambda: ours(model, x, "scorecam", 285, "_swish#1")  # noqa: E731
    else:
        peer = copy.deepcopy(model.pixel_net)
        cam = ScoreCAM(model=peer, target_layers=[peer[1]._conv_head])
        fn = lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(285)])  # noqa: E731
    t = time.perf_counter()
    mb = peak_rss_mb(fn)
    return {"seconds": time.perf_counter() - t, "peak_mb": mb}


def scorecam_rows() -> list[dict]:
    import json
    import subprocess

    runs = {who: json.loads(subprocess.run([sys.executable, __file__, "--scorecam", who], check=True,
                                           capture_output=True, text=True).stdout.splitlines()[-1])
            for who in ("ours", "peer")}
    o, p = runs["ours"], runs["peer"]
    case = "Score-CAM, 1280 channels (ours @ _swish#1, peer @ _conv_head)"
    return [{"case": case + ", time", "baseline_ms": p["seconds"] * 1e3, "measured_ms": o["seconds"] * 1e3,
             "ratio": o["seconds"] / p["seconds"], "goal": "<= 0.5 of pytorch-grad-cam"},
            {"case": case + ", peak MB above the model (ms columns hold MB)", "baseline_ms": p["peak_mb"],
             "measured_ms": o["peak_mb"], "ratio": o["peak_mb"] / p["peak_mb"], "goal": "<= 1.0 of pytorch-grad-cam"}]


def multipass_rows(methods=MULTIPASS, repeats: int = 3) -> list[dict]:
    """Each method `repeats` times after a warm-up run (Captum's imports, the folded
    network), interleaved with bare passes; per pass = the median run / its passes."""
    model = models.load(models.BUNDLED_ID)
    x = model.to_pixels(load_image(SAMPLE))

    def fwd():
        with torch.no_grad():
            model.pixel_net(x)

    def fwd_bwd():
        xi = x.detach().requires_grad_(True)
        model.pixel_net(xi)[0, 285].backward()

    passes = {"ig": 32, "smoothgrad": 24, "occlusion": 13 * 13 + 1}
    t = interleaved({"f": fwd, "fb": fwd_bwd, **{m: (lambda m=m: ours(model, x, m, 285)) for m in methods}},
                    repeats, warmup=1)
    f, fb = median(t["f"]), median(t["fb"])
    rows = []
    for method in methods:
        per, s = (f if method == "occlusion" else fb), median(t[method])
        rows.append({"case": f"{method}: {passes[method]} passes, per pass", "baseline_ms": per * 1e3,
                     "measured_ms": s / passes[method] * 1e3, "ratio": s / passes[method] / per,
                     "goal": "batched; vs bare forward" + ("" if method == "occlusion" else "+backward")
                             + ("; <= 0.8" if method != "occlusion" else "")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scorecam", choices=["ours", "peer"], help=argparse.SUPPRESS)  # one run, in a child process
    groups = {"gradcam": lambda: gradcam_rows(models.BUNDLED_ID, "_bn1", args.repeats),
              "gradcam-resnet": lambda: gradcam_rows("torchvision:resnet18@random", "layer4.1.conv2", args.repeats),
              "sweep": lambda: [sweep_row(args.repeats)],
              "multipass": lambda: multipass_rows(tuple(args.methods), args.multipass_repeats),
              "scorecam": scorecam_rows}
    ap.add_argument("--only", nargs="+", choices=list(groups), help="run these groups of rows (default: all)")
    ap.add_argument("--methods", nargs="+", choices=MULTIPASS, default=list(MULTIPASS),
                    help="the multipass group's methods (default: all)")
    ap.add_argument("--multipass-repeats", type=int, default=3, help="timed runs of each multi-pass method")
    args = ap.parse_args()
    if args.scorecam:
        import json

        print(json.dumps(scorecam_run(args.scorecam)))
        return
    chosen = args.only or list(groups)
    rows = [r for g in chosen for r in groups[g]()]
    report("saliency" if not args.only else "saliency-" + "-".join(chosen), rows)


if __name__ == "__main__":
    main()
