"""Adversarial attack benchmarks (issue #6), medians and ratios from one run.

Speed: our PGD with N steps (the whole `adversarial.run` of an `AttackSpec`: the first step, which
also classifies the original, N-1 steps on the BatchNorm-folded copy `Model.fast_net`,
the 8-bit projection and the final classification) against N bare forward+backward
passes to the input of the same model and input, and against torchattacks' PGD (same
budget, step size and steps) on the model as loaded and, for information, on our
folded copy; the budget sweep against separate attacks at every budget.

Bars (`--bars`): on every bundled sample, untargeted PGD at 2/255 with 10 steps, with
FGSM and random-sign noise of the same budget beside it; targeted PGD at 8/255 with 40
steps towards a class drawn per image from a fixed seed, and whether the saved 8-bit
PNG still reaches it.

    pip install -r bench/requirements.txt   # torchattacks: pip install --no-deps torchattacks==3.5.1
    python bench/bench_attacks.py [--repeats 5] [--bars] [--no-speed]
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

from cnnviz import adversarial as A  # noqa: E402
from cnnviz import models  # noqa: E402
from cnnviz.images import load_image  # noqa: E402
from cnnviz.samples import sample_paths  # noqa: E402

SAMPLE = ROOT / "assets" / "samples" / "cat.jpg"


def pgd_rows(model_id: str, steps: int, repeats: int) -> list[dict]:
    import torchattacks

    model = models.load(model_id)
    x = A.pixels(model, load_image(SAMPLE))
    label = torch.tensor([int(model.pixel_net(x).argmax())])
    eps, alpha = 2.0, 2.5 * 2.0 / steps
    peer = torchattacks.PGD(model.pixel_net, eps=eps / 255, alpha=alpha / 255, steps=steps, random_start=False)
    # Ours takes its steps on the BatchNorm-folded copy; the peer on that copy shows
    # how much of the lead is the copy and how much the attack's own overhead.
    peer_folded = torchattacks.PGD(model.fast_net, eps=eps / 255, alpha=alpha / 255, steps=steps,
                                   random_start=False)

    def bare():  # N forward+backward passes to the input, nothing else
        for _ in range(steps):
            xi = x.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model.pixel_net(xi), label)
            torch.autograd.grad(loss, xi)

    def peer_whole():  # the same job as ours: find the label, attack, classify the result
        with torch.no_grad():
            y = model.pixel_net(x).argmax(1)
        adv = peer(x, y)
        with torch.no_grad():
            model.pixel_net(adv).softmax(-1)

    spec = A.AttackSpec("pgd", eps, steps, alpha)
    t = interleaved({"bare": bare, "ours": lambda: A.run(model, x, spec),
                     "torchattacks": lambda: peer(x, label), "torchattacks+label+check": peer_whole,
                     "torchattacks on fast_net": lambda: peer_folded(x, label)},
                    repeats, warmup=1)
    b, o = median(t["bare"]), median(t["ours"])
    p, pw, pf = median(t["torchattacks"]), median(t["torchattacks+label+check"]), median(t["torchattacks on fast_net"])
    case = f"PGD {steps} steps, {model_id}"
    return [{"case": f"{case}: ours vs {steps} bare fwd+bwd", "baseline_ms": b * 1e3, "measured_ms": o * 1e3,
             "ratio": o / b, "goal": "<= 1.1"},
            {"case": f"{case}: ours vs torchattacks PGD (attack only)", "baseline_ms": p * 1e3,
             "measured_ms": o * 1e3, "ratio": o / p, "goal": "<= 1.05"},
            {"case": f"{case}: ours vs torchattacks PGD + label + final check", "baseline_ms": pw * 1e3,
             "measured_ms": o * 1e3, "ratio": o / pw, "goal": "<= 1.05"},
            {"case": f"{case}: torchattacks vs {steps} bare fwd+bwd", "baseline_ms": b * 1e3,
             "measured_ms": p * 1e3, "ratio": p / b, "goal": "peer"},
            {"case": f"{case}: ours vs torchattacks PGD on our folded copy", "baseline_ms": pf * 1e3,
             "measured_ms": o * 1e3, "ratio": o / pf, "goal": "info"}]


def sweep_rows(steps: int) -> list[dict]:
    """The sweep reuses work: one timed run against separate attacks at every budget."""
    model = models.load(models.BUNDLED_ID)
    x = A.pixels(model, load_image(SAMPLE))
    rows = []
    for method, budgets in (("fgsm", range(1, 17)), ("pgd", range(1, 9))):
        t = time.perf_counter()
        for b in budgets:
            A.run(model, x, A.AttackSpec(method, b, steps))
        separate = time.perf_counter() - t
        t = time.perf_counter()
        A.run(model, x, A.BudgetSweepSpec(method, tuple(budgets), steps))
        swept = time.perf_counter() - t
        rows.append({"case": f"{method} sweep over {len(budgets)} budgets vs separate attacks",
                     "baseline_ms": separate * 1e3, "measured_ms": swept * 1e3, "ratio": swept / separate,
                     "goal": "< 1 (reuse)"})
    return rows


def bars(seed: int = 0) -> dict:
    model = models.load(models.BUNDLED_ID)
    rng = np.random.default_rng(seed)
    per_image, t0 = [], time.perf_counter()
    for name, path in sample_paths().items():
        x = A.pixels(model, load_image(path))
        pgd = A.run(model, x, A.AttackSpec("pgd", 2, 10))
        fgsm = A.run(model, x, A.AttackSpec("fgsm", 2))
        noise = A.run(model, x, A.NoiseSpec(2, seed))
        target = int(rng.integers(len(model.categories)))
        while target == pgd.label:
            target = int(rng.integers(len(model.categories)))
        tgt = A.run(model, x, A.AttackSpec("pgd", 8, 40, target=target, png=True))
        p = lambda r: round(float(r.probs_after[pgd.label]), 3)  # noqa: E731 (the original answer's probability)
        row = {"image": name, "label": model.categories[pgd.label], "p": round(float(pgd.probs_before.max()), 3),
               "pgd2": pgd.success, "p_pgd2": p(pgd), "fgsm2": fgsm.success, "p_fgsm2": p(fgsm),
               "noise2": noise.success, "p_noise2": p(noise),
               "target": model.categories[target], "pgd8_targeted": tgt.success, "png": tgt.png_success,
               "linf_max": max(pgd.linf, fgsm.linf, noise.linf, tgt.linf)}
        per_image.append(row)
        print(row, flush=True)
    n = len(per_image)
    hits = [r for r in per_image if r["pgd8_targeted"]]
    summary = {
        "untargeted_pgd2_success": sum(r["pgd2"] for r in per_image) / n,
        "untargeted_fgsm2_success": sum(r["fgsm2"] for r in per_image) / n,
        "noise2_flips": sum(r["noise2"] for r in per_image) / n,
        "targeted_pgd8_success": len(hits) / n,
        "png_success_of_successes": sum(r["png"] for r in hits) / max(len(hits), 1),
        "images": n, "seconds": time.perf_counter() - t0,
    }
    print(summary, flush=True)
    return {"bars": summary, "per_image": per_image}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bars", action="store_true", help="also measure the issue's success bars on all samples")
    ap.add_argument("--no-speed", action="store_true", help="only the bars")
    args = ap.parse_args()
    rows: list[dict] = []
    if not args.no_speed:
        rows += [*pgd_rows(models.BUNDLED_ID, 10, args.repeats),
                 *pgd_rows(models.BUNDLED_ID, 40, max(args.repeats // 2, 2)),
                 *pgd_rows("torchvision:resnet18@random", 10, args.repeats), *sweep_rows(10)]
    extra = bars() if args.bars or args.no_speed else None
    report("attacks" if not args.no_speed else "attack_bars", rows, extra)


if __name__ == "__main__":
    main()
