"""`python -m cnnviz`: the command-line twin of the pages (same backend, same numbers).

With --json each subcommand prints exactly one JSON object on stdout. Exit status 2
for bad input (one line on stderr), 1 for an internal failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import bounds, files, images, jobs, models
from .contract import CnnvizError, Progress


class UsageError(CnnvizError):
    """A command line that does not parse."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of argparse's usage block
        raise UsageError(f"{message} (see `python -m {' '.join(['cnnviz', *self.prog.split()[1:]])} --help`)")


def _image(path: str):
    """The image at `path`, through the same intake as an upload; what intake changed
    (an extreme aspect ratio cut, an oversized image scaled) is said on stderr."""
    got = images.intake(path, name=path)
    if got.note:
        print(f"cnnviz: note: {got.note}", file=sys.stderr)
    return got.image


def _model(args):
    """`--model ID`, or the user's own `--weights PATH` for `--arch NAME` (with optional
    `--labels FILE`): the loading and limits of the sidebar's "Use your own weights"."""
    if getattr(args, "weights", None) is None:
        return models.load(args.model or models.BUNDLED_ID, progress=_stderr_progress)
    data = files.read(args.weights, bounds.WEIGHTS_BYTES, "weights", models.ModelError, name=args.weights)
    labels = None
    if args.labels:
        text = files.read(args.labels, bounds.LABELS_BYTES, "labels", models.ModelError, name=args.labels)
        labels = models.read_labels(text, args.labels)
    return models.load_checkpoint(args.arch, data, Path(args.weights).name, labels)


def _check_args(args) -> None:
    """What can be checked before any heavy work: the model flags go together, every
    input path names a readable file, every output path can be written."""
    weights, arch, labels = (getattr(args, k, None) for k in ("weights", "arch", "labels"))
    if weights is not None and getattr(args, "model", None) and args.cmd != "download":
        raise UsageError("give either --model ID or --weights PATH (with --arch), not both")
    if weights is not None and not arch:
        raise UsageError("--weights needs --arch NAME, the torchvision architecture it was trained from "
                         "(e.g. --arch resnet18)")
    if weights is None and (arch or labels):
        raise UsageError(f"{'--arch' if arch else '--labels'} goes with --weights PATH (your own state dict)")
    if arch and arch != models.LENET_ARCH:
        models._weights(arch)  # an unknown architecture, before any file is read
    for attr, kind, error in (("image", "image", images.ImageError), ("weights", "weights", models.ModelError),
                              ("labels", "labels", models.ModelError)):
        path = getattr(args, attr, None)
        if path:
            files.check_readable(path, kind, error, name=path)
    for attr in ("out", "npy"):
        path = getattr(args, attr, None)
        if path:
            _check_writable(path + ("" if attr != "npy" or path.endswith(".npy") else ".npy"), f"--{attr}")


def _check_writable(path: str, flag: str) -> None:
    """`path` can be created or overwritten: tried (and the trial removed), since a
    permission check says nothing to root on a read-only mount or under /proc."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name, e.g. {p / 'out.png'}")
    parent = p.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a folder"
        raise UsageError(f"cannot write {flag} {path}: the folder {parent} {what}")
    existed = p.exists()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK | (0 if existed else os.O_CREAT | os.O_EXCL), 0o644)
        os.close(fd)
    except OSError as e:
        raise UsageError(f"cannot write {flag} {path}: {e.strerror or e}") from None
    if not existed:
        p.unlink(missing_ok=True)


def _save_npy(array, path: str) -> None:
    import numpy as np

    try:
        np.save(path, array)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


def _run(model, image, spec, warmup=None):
    """`spec` through the job runner, as the pages run it: once to warm up (`warmup`, a
    cheaper spec, when given), then for real; the result's `seconds` is that run's compute."""
    jobs.run(model, image, warmup or spec)
    return jobs.run(model, image, spec, progress=_stderr_progress)


def cmd_predict(args) -> dict:
    from .predict import PredictSpec

    image = _image(args.image)
    spec = PredictSpec(args.topk).check(None)
    model = _model(args)
    return {**_run(model, image, spec).to_dict(), "image": args.image}


def cmd_activations(args) -> dict:
    from . import activations as A

    image = _image(args.image)
    model = _model(args)
    result = _run(model, image, A.ActivationsSpec((args.layer,)))
    if args.out:
        _save_png(result.mosaic(args.layer, "mean")[0], args.out)
    if args.npy:
        _save_npy(result.maps[args.layer], args.npy)
    return result.to_dict()


def _save_png(rgb, path: str) -> None:
    from PIL import Image

    try:
        Image.fromarray(rgb).save(path, "PNG")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


def cmd_saliency(args) -> dict:
    from . import saliency as S
    from .predict import class_index

    if args.layer and not S.METHODS[args.method].takes_layer:
        raise UsageError(f"--layer applies to Grad-CAM-style methods, not {args.method}")
    image = _image(args.image)
    model = _model(args)
    second = models.load(args.compare, progress=_stderr_progress) if args.compare else None
    target = class_index(model, args.target) if args.target is not None else None
    contrast = class_index(model, args.contrast) if args.contrast is not None else None
    advice = {}
    if args.advise:  # every stage scored; a CAM method without --layer takes the best one
        sweep = _run(model, image, S.SweepSpec(target, contrast, advise=True))
        advice = {k: v for k, v in sweep.to_dict().items() if k in ("advice", "best", "random")}
        target = sweep.target
        if S.METHODS[args.method].takes_layer and not args.layer:
            args.layer = sweep.best
    spec = S.SaliencySpec(args.method, target, args.layer, contrast).check(model)
    att = _run(model, image, spec)
    if args.out:
        from .render import overlay

        _save_png(__import__("numpy").asarray(overlay(model.input_image(image), att.map, 0.5, "jet")), args.out)
    if args.npy:
        _save_npy(att.map, args.npy)
    if second is not None:  # the same image and class explained by a second model, as on the page
        from dataclasses import replace

        from .agreement import pair, side_by_side
        from .predict import PredictSpec, top_k

        pairing = pair(model, second, replace(spec, target=att.target))
        top = top_k(second, jobs.run(second, image, PredictSpec()).probs, 1)[0]
        advice["compare"] = side_by_side(model, att.map, second, jobs.run(second, image, pairing.spec), pairing,
                                         top).to_dict()
    return att.to_dict() | advice


def cmd_agree(args) -> dict:
    from . import agreement as AG
    from .predict import class_index

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    image = _image(args.image)
    model = _model(args)
    target = class_index(model, args.target) if args.target is not None else None
    result = _run(model, image, AG.AgreementSpec(methods, target, args.layer, steps=args.steps, seed=args.seed))
    return result.to_dict()


def cmd_attention(args) -> dict:
    from . import attention as A

    image = _image(args.image)
    model = _model(args)
    spec = A.AttentionSpec(args.block, args.head, tuple(args.patch) if args.patch else None, args.rollout).check(model)
    result = _run(model, image, spec)
    if args.out:
        import numpy as np

        from .render import overlay
        from .saliency import upsample

        _save_png(np.asarray(overlay(model.input_image(image), upsample(result.map, model.input_size), 0.5, "jet")),
                  args.out)
    if args.npy:
        _save_npy(result.map, args.npy)
    return result.to_dict()


def cmd_trust(args) -> dict:
    from . import trust as Tr
    from .predict import class_index

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    image = _image(args.image)
    model = _model(args)
    target = class_index(model, args.target) if args.target is not None else None
    spec = Tr.TrustSpec(methods, target, args.steps, args.seed).check(model)
    # Warm-up: every method's first pass (imports, the folded network) at a fraction of the cost.
    report = _run(model, image, spec, warmup=Tr.TrustSpec(spec.methods, spec.target, 1, spec.seed))
    return {**report.to_dict(), "image": args.image}


def _compare_ids(args) -> list[str]:
    """`limits --compare ID[,ID]`: ids `load` takes, other than --model's, at most
    `bounds.LIMITS_MODELS` - 1 (the page's bound), checked before any model loads."""
    if args.compare is None:
        return []
    own = None if args.weights else (args.model or models.BUNDLED_ID)
    ids = list(dict.fromkeys(i.strip() for i in args.compare.split(",") if i.strip() and i.strip() != own))
    if bad := [i for i in ids if not models.known(i)]:
        raise UsageError(f"--compare: unknown model id {bad[0]!r}; use an id from `python -m cnnviz models` "
                         "(e.g. torchvision:vit_b_16, or torchvision:vit_b_16@random untrained)")
    if len(ids) > bounds.LIMITS_MODELS - 1:
        raise UsageError(f"--compare takes at most {bounds.LIMITS_MODELS - 1} models ({bounds.LIMITS_MODELS} with "
                         f"--model's on one chart); got {len(ids)}")
    return ids


def cmd_limits(args) -> dict:
    from dataclasses import replace

    from . import limits as L
    from .predict import PredictSpec

    image = _image(args.image)
    values = L.parse_values(args.transform, args.values)
    others = _compare_ids(args)
    model = _model(args)

    def limits(m, spec):
        probs = jobs.run(m, image, PredictSpec()).probs  # predict's numbers at the identity, as the page
        return _run(m, image, replace(spec, probs=probs))

    res = limits(model, L.LimitsSpec(args.transform, values, args.seed))
    beside = []
    for mid in others:  # each fitted to its own input, as the page does
        m = models.load(mid, progress=_stderr_progress)
        spec, said = L.spec_for(m, args.transform, values, args.seed)
        if said:
            print(f"cnnviz: note: {m.id}: {said}", file=sys.stderr)
        beside.append(limits(m, spec))
    if args.out:
        from .render import thumb_strip

        _save_png(thumb_strip(res.sweep), args.out)
    out = res.to_dict()
    if args.compare is not None:
        out["compare"] = [r.to_dict() for r in beside]
    if not args.json:  # the JSON keys are the issue's contract; people get the sentence
        for d, r in zip([out, *out.get("compare", [])], [res, *beside]):
            if r.flip:
                d["sentence"] = r.flip.sentence()
    return out


def cmd_featurevis(args) -> dict:
    from dataclasses import replace

    from . import featurevis as FV

    model = _model(args)
    spec = FV.FeatureVisSpec(args.layer, args.channel, args.objective, size=args.size, steps=args.steps, lr=args.lr,
                             seed=args.seed, cache=False).check(model)  # always computed: `seconds` is compute time
    natural_mean, natural_max = jobs.run(model, None, FV.NaturalSpec(spec.layer)).stats(spec)
    result = _run(model, None, spec, replace(spec, steps=1))
    result.natural_mean, result.natural_max = natural_mean, natural_max
    if args.out:
        _save_png(result.image, args.out)
    return result.to_dict()


def cmd_filters(args) -> dict:
    from . import filters as Fi

    model = _model(args)
    result = _run(model, None, Fi.FiltersSpec(args.layer, args.sort, args.filter))
    if args.out:
        _save_png(result.tiles, args.out)
    return result.to_dict()


def cmd_rf(args) -> dict:
    from . import receptive as R

    if not args.all and not args.layer:
        raise UsageError("give --layer NAME (or --all to list every layer's field)")
    image = _image(args.image) if args.image else None
    model = _model(args)
    if args.all:
        return _run(model, None, R.TableSpec()).to_dict()
    spec = (R.EffectiveSpec if image is not None else R.UnitSpec)(args.layer, args.y, args.x)
    result = _run(model, image, spec)
    if args.out:
        import numpy as np

        _save_png(np.asarray(result.canvas(R.backdrop(model, image))[0]), args.out)
    return result.to_dict()


def cmd_attack(args) -> dict:
    from dataclasses import replace

    from . import adversarial as A
    from .predict import class_index

    image = _image(args.image)
    model = _model(args)
    target = class_index(model, args.target) if args.target is not None else None
    spec = A.AttackSpec(args.method, args.eps, args.steps, args.step_size, target, args.random_start, args.seed,
                        png=bool(args.out)).check(model)  # before the warm-up run
    res = _run(model, image, spec, replace(spec, steps=min(spec.steps, 4), png=False))
    if args.out:
        try:
            with open(args.out, "wb") as f:
                f.write(res.png)
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from None
    out = res.to_dict()
    if args.layers:  # the noise control of the same size, then one recorded pass of the three images
        from . import divergence as D

        ctl = jobs.run(model, image, A.NoiseSpec(spec.eps, spec.seed))
        div = jobs.run(model, image, D.DivergenceSpec(D.Picture.of(res.adversarial), D.Picture.of(ctl.adversarial)))
        out["layers"] = div.layer_dicts()
    return out


def cmd_sweep(args) -> dict:
    from dataclasses import replace

    from . import adversarial as A
    from .predict import class_index

    image = _image(args.image)
    budgets = A.parse_budgets(args.budgets)
    model = _model(args)
    target = class_index(model, args.target) if args.target is not None else None
    spec = A.BudgetSweepSpec(args.method, budgets, args.steps, args.step_size, target, args.random_start,
                             args.seed).check(model)
    warmup = replace(spec, budgets=spec.budgets[:1], steps=min(spec.steps, 4))
    return {**_run(model, image, spec, warmup).to_dict(), "image": args.image}


def cmd_models(args) -> dict:
    return {"models": [
        {"id": e.id, "source": e.source, "available": e.available, "params": e.params}
        for e in models.catalog()
    ]}


def cmd_unit(args) -> dict:
    from . import unit

    image = _image(args.image)
    model = _model(args)
    return _run(model, image, unit.UnitSpec(args.layer or "", args.y, args.x, args.channel)).to_dict()


def cmd_convsize(args) -> dict:
    from . import arithmetic

    o = arithmetic.output_size(args.input, args.kernel, args.padding, args.stride, args.dilation)
    return {**o.to_dict(), "drop": arithmetic.drop_sentence(o)}


def cmd_train(args) -> dict:
    from . import lenet

    spec = lenet.TrainSpec(args.data, args.epochs, args.lr, args.batch, args.seed)
    model = models.untrained_lenet(args.variant, args.seed)
    result = jobs.run(model, None, spec, progress=_stderr_progress)
    if args.out:
        try:
            Path(args.out).write_bytes(result.state_bytes)
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from None
    return {**result.to_dict(), "out": args.out}


def cmd_layers(args) -> dict:
    from .activations import LayersSpec

    model = _model(args)
    return _run(model, None, LayersSpec()).to_dict()


def cmd_download(args) -> dict:
    if not args.model.startswith("torchvision:") or args.model.endswith("@random"):
        raise UsageError("download takes a pretrained torchvision model id, e.g. torchvision:resnet18")
    model = models.load(args.model, progress=_stderr_progress)
    path = models.weights_file(models._weights(model.id.removeprefix("torchvision:")))
    return {"model": model.id, "available": models.is_available(model.id), "path": str(path)}


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
        for a in out.get("advice", []):
            star = "*" if a["layer"] == out["best"] else " "
            print(f" {star}{a['layer']:<32} deletion area {a['deletion_auc']:.3f}  insertion area {a['insertion_auc']:.3f}")
        if "random" in out:
            print(f"  {'(random order)':<32} deletion area {out['random']['deletion_auc']:.3f}  "
                  f"insertion area {out['random']['insertion_auc']:.3f}")
        if "compare" in out:
            c = out["compare"]
            print(f"{c['method']} of {c['model']} for {c['target']['label']} ({c['target']['index']}): {c['sentence']}")
            for n in c["notes"]:
                print(f"  {n}")
    elif cmd == "agree":
        print(f"Methods on {out['model']} for {out['target']['label']} ({out['target']['index']}):")
        for m, row in zip(out["methods"], out["matrix"]):
            a = out["areas"][m]
            print(f"  {m:<16} rho " + " ".join(f"{r:5.2f}" for r in row)
                  + f"   deletion {a['deletion']:.3f}  insertion {a['insertion']:.3f}")
        print(f"  {out['summary']}")
    elif cmd == "trust":
        t = out["target"]
        print(f"Trust checks of {out['model']} for {t['label']} ({t['index']}, p={t['prob']:.3f}) on {out['image']}:")
        for m in out["methods"]:
            rho = ", ".join(f"{r:.2f}" for r in out["correlation"][m])
            print(f"  {m:<12} deletion area {out['areas'][m]:.3f}  rank correlation as the model is randomized: {rho}")
        print(f"  {'random':<12} deletion area {out['areas']['random']:.3f}")
    elif cmd == "layers":
        print(f"{out['model']}, input {out['input_size'][0]}x{out['input_size'][1]}:")
        for l in out["layers"]:
            kind = l["type"] + (" (block)" if l.get("block") else "")
            print(f"  {l['name']:<40} {kind:<26} {str(l['shape']):<18} {l['params']:>9}")
    elif cmd == "limits":
        for one in [out, *out.get("compare", [])]:
            o = one["original"]
            print(f"{one['transform']} on {one['model']}; originally {o['label']} ({o['prob']:.1%}):")
            for p in one["points"]:
                t = p["top1"]
                print(f"  {str(p['value']):>12}  {t['label']:<28} {t['prob']:6.1%}   original {p['orig_prob']:6.1%}, "
                      f"rank {p['orig_rank']}")
            if "sentence" in one:
                print(one["sentence"])
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
    elif cmd == "attention":
        what = "rollout up to block" if out["rollout"] else "block"
        head = "" if out["rollout"] else (" mean of heads" if out["head"] is None else f" head {out['head']}")
        m = __import__("numpy").asarray(out["map"])
        r, c = divmod(int(m.argmax()), m.shape[1])
        print(f"{out['model']}, {what} {out['block']}{head}, query {out['query']}: "
              f"{out['grid'][0]}x{out['grid'][1]} patches; most attended ({r}, {c}) with {m.max():.1%}")
    elif cmd == "unit":
        c, ok = out["channel"], "agrees" if out["agrees"] else "DISAGREES"
        print(f"{out['layer']} ({out['kind']}) of {out['model']}, unit ({out['y']}, {out['x']}) of channel {c}: "
              f"reads channels {out['channels'][0]}..{out['channels'][-1]}, patch {out['patch_shape']}")
        for step in out["steps"]:
            print(f"  {step['name']:<36} {step['value']:12.6g}   recorded {step['recorded']:12.6g}   {step['formula']}")
        print(f"  worked {out['worked']:.8g}, recorded {out['recorded']:.8g}: {ok} (relative error {out['error']:.1e})")
    elif cmd == "train":
        for e in out["epochs"]:
            print(f"  epoch {e['epoch']:>3}  loss {e['loss']:.4f}  train {e['train_accuracy']:6.1%}  "
                  f"test {e['test_accuracy']:6.1%}")
        print(f"LeNet-5 ({out['variant']}) on {out['data']}: test accuracy {out['test_accuracy']:.1%} in "
              f"{out['seconds']:.1f} s" + (f"; saved to {out['out']}" if out["out"] else ""))
    elif cmd == "convsize":
        print(out["formula"] + ("" if out["exact"] else "\n" + out["drop"]))
    elif cmd == "sweep":
        smallest = "none" if out["smallest"] is None else f"{out['smallest']:g}/255"
        print(f"{out['model']} on {out['image']}: the smallest budget that changes the decision: {smallest}")
        for b, p, ok in zip(out["budgets"], out["p_label"], out["success"]):
            print(f"  {b:6g}/255  p(original) {p:7.2%}  {'changed' if ok else ''}")
    elif cmd == "attack":
        o, a = out["original"], out["adversarial"]
        png = "" if out["png_success"] is None else f"; the PNG {'still fools it' if out['png_success'] else 'does not'}"
        print(f"{out['method']} at {out['eps']:g}/255 on {out['model']}: {o['label']} ({o['prob']:.1%}) -> "
              f"{a['label']} ({a['prob']:.1%}), {'fooled' if out['success'] else 'not fooled'}; "
              f"linf {out['linf']:g}/255, l2 {out['l2']:.3f}{png}")
        if "layers" in out:
            print(f"  {'layer':<40} {'attack':>8} {'noise':>8}  top changed")
            for r in out["layers"]:
                a_, n_ = ("     n/a" if v is None else f"{v:8.3f}" for v in (r["adversarial"], r["noise"]))
                print(f"  {r['layer']:<40} {a_} {n_}  {r['top_changed']}")
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
            sp.add_argument("--model", help="efficientnet_lite0 (default), torchvision:NAME, torchvision:NAME@random, "
                                            "or lenet:PATH (a LeNet-5 saved by `train --out`)")
            own = sp.add_argument_group("your own weights (instead of --model)")
            own.add_argument("--weights", metavar="PATH",
                             help="a state dict (.pt/.pth from torch.save(model.state_dict()), or .safetensors), "
                                  f"up to {files.size_text(bounds.WEIGHTS_BYTES)}")
            own.add_argument("--arch", metavar="NAME", help="the torchvision architecture the weights are for "
                                                            "(e.g. resnet18; lenet5 for a LeNet-5 from `train`); "
                                                            "the class count comes from its head")
            own.add_argument("--labels", metavar="FILE", help="class names, one per line "
                                                              f"(up to {bounds.MAX_CLASSES:,})")
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
    sp.add_argument("--advise", action="store_true",
                    help="the layer advisor: Grad-CAM at every stage scored by deletion and insertion areas "
                         "(adds advice, best, random); a CAM method without --layer uses the best layer")
    sp.add_argument("--compare", metavar="ID", help="also explain the same image and class with this model "
                    "(e.g. torchvision:vit_b_16@random): adds compare, with the two maps' rank correlation")
    from .agreement import DEFAULT_METHODS as AGREE_DEFAULT, comparable_methods

    sp = add("agree", cmd_agree, "Methods side by side: their rank correlations, deletion and insertion curves.")
    sp.add_argument("image")
    sp.add_argument("--methods", default=",".join(AGREE_DEFAULT),
                    help=f"comma-separated, from {','.join(comparable_methods())} (default: %(default)s)")
    sp.add_argument("--target", help="class index or name (default: the top-1 class)")
    sp.add_argument("--layer", help="for the CAM methods (default: the last spatial layer)")
    sp.add_argument("--steps", type=int, default=20, help="cuts of the deletion and insertion curves")
    sp.add_argument("--seed", type=int, default=0, help="the random order's seed")
    sp = add("attention", cmd_attention, "Where a vision transformer's tokens look: one block's attention, or rollout.")
    sp.add_argument("image")
    sp.add_argument("--block", type=int, help="encoder block index (default: the last)")
    sp.add_argument("--head", type=int, help="one head (default: the mean of the heads)")
    sp.add_argument("--patch", type=int, nargs=2, metavar=("ROW", "COL"), help="the query patch (default: the class token)")
    sp.add_argument("--rollout", action="store_true", help="attention rollout through blocks 0..block (Abnar and Zuidema)")
    sp.add_argument("--out", help="write the map over the image as PNG")
    sp.add_argument("--npy", help="write the map [rows, cols] (patch grid, float32) as .npy")
    from .trust import DEFAULT_METHODS, trust_methods

    sp = add("trust", cmd_trust, "Does a saliency map explain the model? Model randomization and deletion checks.")
    sp.add_argument("image")
    sp.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated, from {','.join(trust_methods())} (default: %(default)s)")
    sp.add_argument("--target", help="class index or name (default: the top-1 class)")
    sp.add_argument("--steps", type=int, default=6, help="randomization steps after the trained model (default 6)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random weights and the random order")
    from .limits import TRANSFORMS

    sp = add("limits", cmd_limits, "Where CNNs break: sweep one transform, find the smallest change that flips the label.")
    sp.add_argument("image")
    sp.add_argument("--transform", required=True, choices=list(TRANSFORMS))
    sp.add_argument("--values", help="LIST (0,15,30) or START:STOP:STEP, STOP included (default: a demo sweep); "
                                     "occlude: the patch size; shuffle: grid sizes k")
    sp.add_argument("--seed", type=int, default=0, help="noise field and tile order (noise, shuffle)")
    sp.add_argument("--out", help="write the strip of transformed thumbnails as PNG")
    sp.add_argument("--compare", metavar="ID[,ID]",
                    help=f"the same sweep on up to {bounds.LIMITS_MODELS - 1} more models, e.g. "
                         "torchvision:vit_b_16,torchvision:convnext_tiny (JSON: each model's under \"compare\")")
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
    sp = add("unit", cmd_unit, "One unit worked out by hand: patch x kernel, the sums, the bias, then each step "
                               "(BatchNorm, activation), checked against the recorded activation.")
    sp.add_argument("image")
    sp.add_argument("--layer", help="a convolution or pooling layer from `layers` (default: the first convolution)")
    sp.add_argument("--y", type=int, help="output row (default: the centre)")
    sp.add_argument("--x", type=int, help="output column (default: the centre)")
    sp.add_argument("--channel", type=int, default=0, help="output channel (default 0)")
    sp = add("convsize", cmd_convsize, "The output size of a convolution or pooling layer: (W - F + 2P) / S + 1.",
             model=False)
    sp.add_argument("--input", type=int, required=True, metavar="W", help="input width (or height)")
    sp.add_argument("--kernel", type=int, required=True, metavar="F")
    sp.add_argument("--padding", type=int, default=0, metavar="P")
    sp.add_argument("--stride", type=int, default=1, metavar="S")
    sp.add_argument("--dilation", type=int, default=1, metavar="D")
    sp = add("rf", cmd_rf, "Receptive field of a unit (box in input pixels), and its effective field on an image.")
    sp.add_argument("--layer", help="a layer name from `layers` (e.g. _blocks.8._project_conv)")
    sp.add_argument("--y", type=int, help="unit row (default: the centre unit)")
    sp.add_argument("--x", type=int, help="unit column (default: the centre unit)")
    sp.add_argument("--image", help="an image: adds the effective field's 50%% and 90%% mass boxes")
    sp.add_argument("--out", help="write the boxes (and effective field) over the image as PNG")
    sp.add_argument("--all", action="store_true", help="list every layer's field size, jump and start")
    from .adversarial import ATTACKS

    def attack_args(sp, single: bool) -> None:
        sp.add_argument("image")
        sp.add_argument("--method", choices=list(ATTACKS), default="pgd")
        if single:
            sp.add_argument("--eps", type=float, default=2.0, help="L-infinity budget in 1/255 units (default 2)")
        else:
            sp.add_argument("--budgets", help="budgets in 1/255 units: LIST (1,2,4,8) or START:STOP:STEP, STOP "
                                              "included (default 1:16:1)")
        sp.add_argument("--steps", type=int, default=10, help="PGD steps (default 10; FGSM takes one)")
        sp.add_argument("--step-size", type=float, help="PGD step in 1/255 units (default 2.5 * eps / steps)")
        sp.add_argument("--target", help="class index or name to reach (default: untargeted, away from the top-1)")
        sp.add_argument("--random-start", action="store_true", help="PGD from a random point of the budget")
        sp.add_argument("--seed", type=int, default=0, help="seed of the random start (default 0)")

    sp = add("attack", cmd_attack, "Adversarial perturbation (FGSM or PGD) of an image, in 1/255 pixel units.")
    attack_args(sp, single=True)
    sp.add_argument("--out", help="write the adversarial image (the network's input size) as an 8-bit PNG; "
                                  "png_success says whether the reloaded file still fools the model")
    sp.add_argument("--layers", action="store_true",
                    help="add every layer's relative change ||perturbed - clean|| / ||clean|| for the attack and "
                         "for random noise of the same size, and how many of its top-10 channels changed")
    sp = add("sweep", cmd_sweep, "The same attack at growing budgets: the smallest one that changes the decision.")
    attack_args(sp, single=False)
    from .lenet import DATA, VARIANTS

    sp = add("train", cmd_train, "Train LeNet-5 on handwritten digits; --out saves it for --model lenet:PATH.",
             model=False)
    sp.add_argument("--data", choices=list(DATA), default="digits",
                    help="digits: scikit-learn's bundled 1,797 (offline, default); mnist: downloaded once")
    sp.add_argument("--variant", choices=list(VARIANTS), default="classic",
                    help="classic: tanh and average pooling, as published (default); modern: ReLU, max pooling")
    sp.add_argument("--epochs", type=int, default=15)
    sp.add_argument("--lr", type=float, default=0.003, help="Adam's learning rate (default 0.003)")
    sp.add_argument("--batch", type=int, default=32, help="mini-batch size (default 32)")
    sp.add_argument("--seed", type=int, default=0, help="the split, the batches and the initial weights")
    sp.add_argument("--out", help="write the trained state dict (.pt), for --model lenet:PATH")
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
        _check_args(args)
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
