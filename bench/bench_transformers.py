"""Vision transformers (issue #15): what recording, attention and Grad-CAM cost on ViT-B/16.

Random-init ViT-B/16 (the same architecture and cost as the pretrained one, no download),
one 224x224 image, medians of interleaved repeats, each as a ratio to its bare pass:

- recording every encoder block's output (as patch-grid maps) vs a bare forward (goal <= 1.2),
  and the same keeping each block's class token apart (the Activations page's recording);
- attention rollout over all 12 blocks vs a bare forward (goal: one forward pass; the
  number of forward passes is counted);
- Grad-CAM through the job runner vs one forward + backward of the class score to the
  input (goal <= 1.0), beside pytorch-grad-cam's GradCAM with its hand-written
  `reshape_transform` (the peer, if installed) on the same layer.

    python bench/bench_transformers.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import interleaved, median, report  # noqa: E402

from cnnviz import attention, jobs, models, saliency, tokens  # noqa: E402
from cnnviz.hooks import record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    model = models.load("torchvision:vit_b_16@random")
    gen = torch.Generator().manual_seed(0)
    px = torch.rand(1, 3, *model.input_size, generator=gen)
    x = model.normalize(px)
    blocks = list(tokens.blocks(model.net))
    target = 3
    layer = model.gradcam_layer

    def bare():
        with torch.inference_mode():
            model.net(x)

    def recorded():
        return record(model, x, blocks)[1]

    def recorded_cls():  # as the Activations page records: the maps and, apart, each class token
        return record(model, x, blocks, cls_tokens={})[1]

    def rollout():
        return jobs.run(model, px, attention.AttentionSpec(rollout=True))

    def fwd_bwd():
        xi = px.clone().requires_grad_(True)
        with torch.enable_grad():
            model.pixel_net(xi)[0, target].backward()

    def gradcam():
        return jobs.run(model, px, saliency.SaliencySpec("gradcam", target=target, layer=layer))

    fns = {"bare": bare, "recorded": recorded, "recorded_cls": recorded_cls, "rollout": rollout, "fwd_bwd": fwd_bwd, "gradcam": gradcam}
    peer = None
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def reshape(t):  # the user-written part pytorch-grad-cam asks for
            return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)

        target_layer = dict(model.pixel_net.named_modules())[f"1.{layer}"]
        peer = GradCAM(model=model.pixel_net, target_layers=[target_layer], reshape_transform=reshape)

        def peer_gradcam():  # our weights are frozen: the input carries its graph
            return peer(input_tensor=px.clone().requires_grad_(True), targets=[ClassifierOutputTarget(target)])

        fns["peer"] = peer_gradcam
    except ImportError:
        pass

    calls = []
    h = model.net.register_forward_hook(lambda *a: calls.append(1))
    rollout()
    h.remove()
    t = interleaved(fns, args.repeats)
    med = {k: median(v) * 1e3 for k, v in t.items()}
    rows = [
        {"case": f"record all {len(blocks)} blocks (patch-grid maps)", "baseline_ms": med["bare"],
         "measured_ms": med["recorded"], "ratio": med["recorded"] / med["bare"], "goal": "<= 1.2 (vs forward)"},
        {"case": "  and each block's class token apart", "baseline_ms": med["bare"],
         "measured_ms": med["recorded_cls"], "ratio": med["recorded_cls"] / med["bare"], "goal": "<= 1.2 (vs forward)"},
        {"case": f"attention rollout, {len(blocks)} blocks ({len(calls)} forward pass)", "baseline_ms": med["bare"],
         "measured_ms": med["rollout"], "ratio": med["rollout"] / med["bare"], "goal": "one forward pass"},
        {"case": f"Grad-CAM at {layer}", "baseline_ms": med["fwd_bwd"], "measured_ms": med["gradcam"],
         "ratio": med["gradcam"] / med["fwd_bwd"], "goal": "<= 1.0 (vs forward+backward)"},
    ]
    if "peer" in med:
        rows.append({"case": "  peer: pytorch-grad-cam GradCAM + reshape_transform", "baseline_ms": med["fwd_bwd"],
                     "measured_ms": med["peer"], "ratio": med["peer"] / med["fwd_bwd"], "goal": "report"})
    report("transformers", rows, {"repeats": args.repeats, "forward_passes_in_rollout": len(calls)})


if __name__ == "__main__":
    main()
