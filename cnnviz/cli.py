"""`python -m cnnviz`: the command-line twin of the pages (same backend, same numbers).

With --json each subcommand prints exactly one JSON object on stdout. Exit status 2
for bad input (one line on stderr), 1 for an internal failure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import models
from .images import ImageError, load_image
from .activations import LayerNotFound
from .models import ModelError
from .predict import UnknownClass
from .saliency import SaliencyError


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of argparse's usage block
        raise UsageError(f"{message} (see `python -m cnnviz {self.prog.split()[-1]} --help`)")


def _timed(fn):
    """Run `fn` once to warm up, then again timed: (result, seconds)."""
    fn()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cmd_predict(args) -> dict:
    from .predict import predict

    image = load_image(args.image)
    if args.topk < 1:
        raise UsageError("--topk must be at least 1")
    model = models.load(args.model, progress=_stderr_progress)
    top, seconds = _timed(lambda: predict(model, image, args.topk))
    return {"model": model.id, "image": args.image, "top": [t.to_dict() for t in top], "seconds": seconds}


def cmd_activations(args) -> dict:
    from . import activations as A

    image = load_image(args.image)
    model = models.load(args.model, progress=_stderr_progress)
    layer = A.check_layer(model, args.layer)

    def run():
        acts = A.compute(model, image, [layer])[layer]
        return acts, A.ChannelStats.of(acts)

    (acts, stats), seconds = _timed(run)
    if args.out:
        _save_png(A.mosaic(acts, stats.order("mean"))[0], args.out)
    if args.npy:
        import numpy as np

        np.save(args.npy, acts)
    return {"model": model.id, "layer": layer, "shape": list(acts.shape), "channels": stats.rows(),
            "top": [int(i) for i in stats.order("mean")[:16]], "seconds": seconds}


def _save_png(rgb, path: str) -> None:
    from PIL import Image

    try:
        Image.fromarray(rgb).save(path, "PNG")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


def cmd_saliency(args) -> dict:
    from . import saliency as S
    from .predict import class_index, probabilities

    image = load_image(args.image)
    model = models.load(args.model, progress=_stderr_progress)
    probs = probabilities(model, image)
    target = class_index(model, args.target) if args.target is not None else int(probs.argmax())
    contrast = class_index(model, args.contrast) if args.contrast is not None else None
    if args.method in S.CAM_METHODS + ("guided_gradcam",):
        S.check_cam_layer(model, args.layer)
    elif args.layer:
        raise UsageError(f"--layer applies to Grad-CAM-style methods, not {args.method}")
    att, seconds = _timed(lambda: S.attribute(model, image, args.method, target, args.layer, contrast))
    if args.out:
        from .render import overlay

        _save_png(__import__("numpy").asarray(overlay(model.input_image(image), att.map, 0.5, "jet")), args.out)
    if args.npy:
        import numpy as np

        np.save(args.npy, att.map)
    return {"model": model.id, "method": args.method, "layer": att.layer,
            "target": {"index": target, "label": model.categories[target], "prob": float(probs[target])},
            "shape": list(att.map.shape), "peak": list(att.peak), "seconds": seconds}


def cmd_models(args) -> dict:
    return {"models": [
        {"id": e.id, "source": e.source, "available": e.available, "params": e.params}
        for e in models.catalog()
    ]}


def cmd_layers(args) -> dict:
    from .hooks import probe_layers

    model = models.load(args.model, progress=_stderr_progress)
    layers, seconds = _timed(lambda: probe_layers(model))
    return {
        "model": model.id, "input_size": list(model.input_size),
        "layers": [{"name": l.name, "type": l.type, "shape": list(l.shape), "params": l.params} for l in layers],
        "seconds": seconds,
    }


def cmd_download(args) -> dict:
    if not args.model.startswith("torchvision:") or args.model.endswith("@random"):
        raise UsageError("download takes a pretrained torchvision model id, e.g. torchvision:resnet18")
    model = models.load(args.model, progress=_stderr_progress)
    return {"model": model.id, "available": models.is_available(model.id)}


def _stderr_progress(done: int, total: int) -> None:
    pct = f"{100 * done / total:5.1f}%" if total else f"{done / 2**20:.0f} MB"
    print(f"\rdownloading weights: {pct}", end="\n" if total and done >= total else "", file=sys.stderr)


def _print_human(cmd: str, out: dict) -> None:
    if cmd == "predict":
        print(f"{out['model']} on {out['image']}:")
        for t in out["top"]:
            print(f"  {t['prob']:7.2%}  {t['label']} ({t['index']})")
    elif cmd == "models":
        for m in out["models"]:
            state = "ready" if m["available"] else "download needed"
            print(f"  {m['id']:<34} {m['params'] / 1e6:7.1f}M params  {m['source']:<11} {state}")
    elif cmd == "activations":
        c, h, w = out["shape"]
        print(f"{out['layer']} of {out['model']}: {c} maps of {h}x{w}; strongest channels by mean:")
        for i in out["top"][:8]:
            ch = out["channels"][i]
            print(f"  channel {i:>4}  mean {ch['mean']:9.4f}  max {ch['max']:9.4f}  zeros {ch['zeros']:6.1%}")
    elif cmd == "saliency":
        t = out["target"]
        print(f"{out['method']} of {out['model']} for {t['label']} ({t['index']}, p={t['prob']:.3f})"
              + (f" at {out['layer']}" if out["layer"] else "") + f": peak at {out['peak']}")
    elif cmd == "layers":
        print(f"{out['model']}, input {out['input_size'][0]}x{out['input_size'][1]}:")
        for l in out["layers"]:
            print(f"  {l['name']:<40} {l['type']:<26} {str(l['shape']):<18} {l['params']:>9}")
    else:
        print(json.dumps(out))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cnnviz", description="Look inside convolutional networks.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def add(name, fn, help_, model=True):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        if model:
            sp.add_argument("--model", default=models.BUNDLED_ID,
                            help="efficientnet_lite0 (default), torchvision:NAME or torchvision:NAME@random")
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        return sp

    sp = add("predict", cmd_predict, "Top-k classes for an image.")
    sp.add_argument("image")
    sp.add_argument("--topk", type=int, default=5)
    sp = add("activations", cmd_activations, "Per-channel statistics of one layer's activation maps.")
    sp.add_argument("image")
    sp.add_argument("--layer", required=True, help="a layer name from `layers` (e.g. _blocks.3._expand_conv)")
    sp.add_argument("--out", help="write the channel mosaic as PNG")
    sp.add_argument("--npy", help="write the activations [C, H, W] as .npy")
    from .saliency import METHODS

    sp = add("saliency", cmd_saliency, "Which pixels drove a class score (Grad-CAM and friends).")
    sp.add_argument("image")
    sp.add_argument("--method", required=True, choices=METHODS)
    sp.add_argument("--layer", help="for CAM methods (default: the last spatial layer)")
    sp.add_argument("--target", help="class index or name (default: the top-1 class)")
    sp.add_argument("--contrast", help="explain target rather than this class (logit difference)")
    sp.add_argument("--out", help="write the map over the image as PNG")
    sp.add_argument("--npy", help="write the map [H, W] (input resolution, float32) as .npy")
    add("models", cmd_models, "Models on offer and whether each works offline.", model=False)
    add("layers", cmd_layers, "Inspectable layers in execution order, with output shapes.")
    sp = add("download", cmd_download, "Fetch a torchvision model's weights into the local cache.", model=False)
    sp.add_argument("model")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        out = args.fn(args)
    except (UsageError, ImageError, ModelError, LayerNotFound, UnknownClass, SaliencyError) as e:
        print(f"cnnviz: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug, not the user's fault: still one line, no traceback
        print(f"cnnviz: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
    else:
        _print_human(args.cmd, out)
    return 0
