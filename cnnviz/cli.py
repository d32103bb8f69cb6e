"""`python -m cnnviz`: the command-line twin of the pages (same backend, same numbers).

With --json each subcommand prints exactly one JSON object on stdout. Exit status 2
for bad input (one line on stderr), 1 for an internal failure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import jobs, models
from .contract import CnnvizError, Progress
from .images import load_image


class UsageError(CnnvizError):
    """A command line that does not parse."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of argparse's usage block
        raise UsageError(f"{message} (see `python -m {' '.join(['cnnviz', *self.prog.split()[1:]])} --help`)")


def _timed(fn):
    """Run `fn` once to warm up, then again timed: (result, seconds)."""
    fn()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _run(model, image, spec, warmup=None):
    """`spec` through the job runner, as the pages run it: once to warm up (`warmup`, a
    cheaper spec, when given), then for real; the result's `seconds` is that run's compute."""
    jobs.run(model, image, warmup or spec)
    return jobs.run(model, image, spec, progress=_stderr_progress)


def cmd_predict(args) -> dict:
    from .predict import PredictSpec

    image = load_image(args.image)
    spec = PredictSpec(args.topk).check(None)
    model = models.load(args.model, progress=_stderr_progress)
    return {**_run(model, image, spec).to_dict(), "image": args.image}


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


def cmd_limits(args) -> dict:
    from . import limits as L
    from .predict import probabilities

    image = load_image(args.image)
    values = L.parse_values(args.transform, args.values)
    model = models.load(args.model, progress=_stderr_progress)
    probs = probabilities(model, image)

    def run():
        sw = L.sweep(model, image, args.transform, values, args.seed, probs=probs)
        return sw, L.min_flip(model, image, args.transform, args.seed, probs=probs, known=sw)

    (sw, flip), seconds = _timed(run)
    if args.out:
        from .render import thumb_strip

        _save_png(thumb_strip(sw), args.out)
    out = {**sw.to_dict(), "min_flip": flip.value if flip else None, "seconds": seconds}
    if flip and not args.json:  # the JSON keys are the issue's contract; people get the sentence
        out["sentence"] = flip.sentence()
    return out


def cmd_featurevis(args) -> dict:
    from . import featurevis as FV

    model = models.load(args.model, progress=_stderr_progress)
    spec = FV.check(model, FV.Spec(args.layer, args.channel, args.objective, args.size, args.steps, args.lr,
                                   args.seed))
    nat = FV.natural(model, spec.layer, FV.sample_images())
    natural_mean, natural_max = FV.natural_stats(model, spec, nat)
    FV.optimize(model, FV.Spec(spec.layer, spec.channel, spec.objective, spec.size, 1, spec.lr, spec.seed))  # warm-up

    def progress(step, steps, _preview):
        if not args.json and sys.stderr.isatty():
            print(f"\rstep {step}/{steps}", end="\n" if step == steps else "", file=sys.stderr)

    result = FV.optimize(model, spec, progress)  # always computed: `seconds` is compute time
    if args.out:
        _save_png(result.image, args.out)
    return {"model": model.id, "layer": spec.layer, "channel": spec.channel, "steps": spec.steps, "size": spec.size,
            "activation_start": result.activation_start, "activation_end": result.activation_end,
            "natural_mean": natural_mean, "natural_max": natural_max, "seconds": result.seconds}


def cmd_filters(args) -> dict:
    from . import filters as Fi

    model = models.load(args.model, progress=_stderr_progress)
    f = Fi.of(model, args.layer)
    if args.out:
        order = f.order(args.sort)
        _save_png(Fi.tiles(f, order, args.filter if args.filter is not None else int(f.order("norm")[0]))[0],
                  args.out)
    return {"layer": f.layer, "shape": list(f.weights.shape), "norms": [float(v) for v in f.norms]}


def cmd_rf(args) -> dict:
    from . import receptive as R

    if not args.all and not args.layer:
        raise UsageError("give --layer NAME (or --all to list every layer's field)")
    image = load_image(args.image) if args.image else None
    model = models.load(args.model, progress=_stderr_progress)
    if args.all:
        rows, seconds = _timed(lambda: R.architecture(model))
        return {"model": model.id, "input_size": list(model.input_size),
                "layers": [r.to_dict() for r in rows if r.layer], "seconds": seconds}

    def run():
        u = R.unit(R.architecture(model), args.layer, args.y, args.x, model.input_size)
        eff = R.effective(model, model.preprocess(image), u) if image is not None else None
        return u, eff

    (u, eff), seconds = _timed(run)
    if args.out:
        import numpy as np
        from PIL import Image
        from .render import rf_canvas

        base = model.input_image(image) if image is not None else Image.new("RGB", model.input_size[::-1], (235,) * 3)
        canvas, _ = rf_canvas(base, u.box, eff and eff.map, eff and eff.box50, eff and eff.box90)
        _save_png(np.asarray(canvas), args.out)
    f = u.field
    return {"model": model.id, "layer": u.layer, "size": list(f.size), "jump": list(f.jump),
            "start": list(f.start), "unit": list(u.unit), "box": list(u.box), "box_clipped": list(u.box_clipped),
            "erf_box50": list(eff.box50) if eff and eff.box50 else None,
            "erf_box90": list(eff.box90) if eff and eff.box90 else None, "seconds": seconds}


def cmd_attack(args) -> dict:
    from . import adversarial as A
    from .predict import class_index

    image = load_image(args.image)
    model = models.load(args.model, progress=_stderr_progress)
    target = class_index(model, args.target) if args.target is not None else None
    A.check(model, args.method, args.eps, args.steps, args.step_size, target)  # before the warm-up run
    res, seconds = _timed(lambda: A.attack(model, image, args.method, args.eps, args.steps, args.step_size, target,
                                           args.random_start, args.seed))
    png_success = None
    if args.out:
        check = A.png_check(model, res)
        try:
            with open(args.out, "wb") as f:
                f.write(check.png)
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from None
        png_success = check.success

    def cls(i, probs):
        return {"index": i, "label": model.categories[i], "prob": float(probs[i])}

    return {"model": model.id, "method": res.method, "eps": res.eps, "steps": res.steps,
            "original": cls(res.label, res.probs_before), "adversarial": cls(res.predicted, res.probs_after),
            "target": cls(target, res.probs_after) if target is not None else None, "success": res.success,
            "linf": res.linf, "l2": res.l2, "png_success": png_success, "seconds": seconds}


def cmd_models(args) -> dict:
    return {"models": [
        {"id": e.id, "source": e.source, "available": e.available, "params": e.params}
        for e in models.catalog()
    ]}


def cmd_layers(args) -> dict:
    model = models.load(args.model, progress=_stderr_progress)
    layers, seconds = _timed(model.probe_layers)
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


def _stderr_report(fraction: float, text: str, _preview) -> None:
    if sys.stderr.isatty():
        print(f"\r{fraction:6.1%} {text}", end="\n" if fraction >= 1 else "", file=sys.stderr)


_stderr_progress = Progress(_stderr_report)


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
    elif cmd == "limits":
        o = out["original"]
        print(f"{out['transform']} on {out['model']}; originally {o['label']} ({o['prob']:.1%}):")
        for p in out["points"]:
            t = p["top1"]
            print(f"  {str(p['value']):>12}  {t['label']:<28} {t['prob']:6.1%}   original {p['orig_prob']:6.1%}, "
                  f"rank {p['orig_rank']}")
        if "sentence" in out:
            print(out["sentence"])
    elif cmd == "featurevis":
        print(f"{out['layer'] or 'class'} channel {out['channel']} of {out['model']}, {out['steps']} steps at "
              f"{out['size']}x{out['size']}: {out['activation_start']:.4g} -> {out['activation_end']:.4g} "
              f"(samples: mean {out['natural_mean']:.4g}, max {out['natural_max']:.4g}) in {out['seconds']:.1f} s")
    elif cmd == "filters":
        o, i, kh, kw = out["shape"]
        print(f"{out['layer']}: {o} filters of {i}x{kh}x{kw}; strongest by norm:")
        for k in sorted(range(o), key=lambda k: -out["norms"][k])[:8]:
            print(f"  filter {k:>4}  norm {out['norms'][k]:.4g}")
    elif cmd == "rf" and "layers" in out:
        print(f"{out['model']}, input {out['input_size'][0]}x{out['input_size'][1]}: receptive field size, jump, start")
        for l in out["layers"]:
            f = "unknown" if l["size"] is None else f"{str(l['size']):<12} {str(l['jump']):<10} {l['start']}"
            print(f"  {l['name']:<40} {l['type']:<26} {f}")
    elif cmd == "rf":
        print(f"{out['layer']} of {out['model']}, unit {out['unit']}: field {out['size'][0]}x{out['size'][1]}, "
              f"jump {out['jump']}, box {out['box']} (inside the image {out['box_clipped']})")
        if out["erf_box50"]:
            print(f"  effective field: 50% of its mass in {out['erf_box50']}, 90% in {out['erf_box90']}")
    elif cmd == "attack":
        o, a = out["original"], out["adversarial"]
        png = "" if out["png_success"] is None else f"; the PNG {'still fools it' if out['png_success'] else 'does not'}"
        print(f"{out['method']} at {out['eps']:g}/255 on {out['model']}: {o['label']} ({o['prob']:.1%}) -> "
              f"{a['label']} ({a['prob']:.1%}), {'fooled' if out['success'] else 'not fooled'}; "
              f"linf {out['linf']:g}/255, l2 {out['l2']:.3f}{png}")
    else:
        print(json.dumps(out))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


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
    from .limits import TRANSFORMS

    sp = add("limits", cmd_limits, "Where CNNs break: sweep one transform, find the smallest change that flips the label.")
    sp.add_argument("image")
    sp.add_argument("--transform", required=True, choices=list(TRANSFORMS))
    sp.add_argument("--values", help="LIST (0,15,30) or START:STOP:STEP, STOP included (default: a demo sweep); "
                                     "occlude: the patch size; shuffle: grid sizes k")
    sp.add_argument("--seed", type=int, default=0, help="noise field and tile order (noise, shuffle)")
    sp.add_argument("--out", help="write the strip of transformed thumbnails as PNG")
    from .featurevis import OBJECTIVES

    sp = add("featurevis", cmd_featurevis, "The image a channel answers to most (activation maximization).")
    sp.add_argument("--layer", help="a layer name from `layers` (not needed for --objective class)")
    sp.add_argument("--channel", type=int, required=True, help="channel index (the class index for --objective class)")
    sp.add_argument("--objective", choices=OBJECTIVES, default="channel",
                    help="channel: mean over space (default); neuron: the centre unit; class: a logit")
    sp.add_argument("--steps", type=int, default=256)
    sp.add_argument("--size", type=int, default=128, help="image side in pixels")
    sp.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", help="write the image as PNG")
    sp = add("filters", cmd_filters, "A conv layer's weights: norms, and tiles as PNG.")
    sp.add_argument("--layer", required=True, help="a convolution layer, e.g. _conv_stem")
    sp.add_argument("--out", help="write the tiles as PNG (RGB for a first layer, grey otherwise)")
    sp.add_argument("--sort", choices=("index", "norm"), default="norm", help="tile order (default: norm)")
    sp.add_argument("--filter", type=int, help="deeper layers: which filter's input channels to draw "
                                               "(default: the strongest)")
    sp = add("rf", cmd_rf, "Receptive field of a unit (box in input pixels), and its effective field on an image.")
    sp.add_argument("--layer", help="a layer name from `layers` (e.g. _blocks.8._project_conv)")
    sp.add_argument("--y", type=int, help="unit row (default: the centre unit)")
    sp.add_argument("--x", type=int, help="unit column (default: the centre unit)")
    sp.add_argument("--image", help="an image: adds the effective field's 50%% and 90%% mass boxes")
    sp.add_argument("--out", help="write the boxes (and effective field) over the image as PNG")
    sp.add_argument("--all", action="store_true", help="list every layer's field size, jump and start")
    sp = add("attack", cmd_attack, "Adversarial perturbation (FGSM or PGD) of an image, in 1/255 pixel units.")
    sp.add_argument("image")
    sp.add_argument("--method", choices=("fgsm", "pgd"), default="pgd")
    sp.add_argument("--eps", type=float, default=2.0, help="L-infinity budget in 1/255 units (default 2)")
    sp.add_argument("--steps", type=int, default=10, help="PGD steps (default 10; FGSM takes one)")
    sp.add_argument("--step-size", type=float, help="PGD step in 1/255 units (default 2.5 * eps / steps)")
    sp.add_argument("--target", help="class index or name to reach (default: untargeted, away from the top-1)")
    sp.add_argument("--random-start", action="store_true", help="PGD from a random point of the budget")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random start (default 0)")
    sp.add_argument("--out", help="write the adversarial image (the network's input size) as an 8-bit PNG; "
                                  "png_success says whether the reloaded file still fools the model")
    add("models", cmd_models, "Models on offer and whether each works offline.", model=False)
    add("layers", cmd_layers, "Inspectable layers in execution order, with output shapes.")
    sp = add("download", cmd_download, "Fetch a torchvision model's weights into the local cache.", model=False)
    sp.add_argument("model")
    return p


def main(argv: list[str] | None = None) -> int:
    # One user per process: a long job may take every core (the app leaves one to others).
    jobs.RUNNER = jobs.Runner(heavy_threads=torch_threads())
    try:
        args = build_parser().parse_args(argv)
        out = args.fn(args)
    except CnnvizError as e:  # the user's mistake (exit 2, one line), as opposed to a bug (exit 1)
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
