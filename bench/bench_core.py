"""Foundation benchmarks (issue #2), medians and ratios from one run.

1. Recording every layer's output vs a bare forward pass (same model, same input), with
   the floor any recorder has: hooks that keep a reference to each output. Keeping the
   outputs alive makes each layer write fresh memory instead of reusing the cache-hot
   buffer the previous layer freed; that, not the hooks, is where the time goes.
2. A home-page rerun with the same image and model (cache hit): AppTest time, and
   the number of forward passes it made (should be 0).
3. Cold start: process start to first prediction (CLI), against
   `python -c "import torch, torchvision, streamlit"`.

    python bench/bench_core.py [--repeats 30]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import interleaved, median, report  # noqa: E402

from cnnviz import models  # noqa: E402
from cnnviz.hooks import layer_modules, record  # noqa: E402


def recording(model_id: str, repeats: int) -> dict:
    model = models.load(model_id)
    x = torch.randn(1, 3, *model.input_size)

    def bare():
        with torch.inference_mode():
            model.net(x)

    def recorded():
        return record(model, x)[1]

    def hooks(keep: bool):
        """The floor for any recorder: plain hooks that only keep a reference to each output
        (keep=True), or that keep nothing (keep=False: what calling the hooks costs)."""
        def run():
            kept = []  # returned, so it is freed outside the timing, as `recorded`'s dict is
            hook = (lambda m, i, o: kept.append(o)) if keep else (lambda m, i, o: None)
            handles = [m.register_forward_hook(hook) for m in layer_modules(model.net).values()]
            with torch.no_grad():
                model.net(x)
            for h in handles:
                h.remove()
            return kept
        return run

    n_layers = len(recorded())
    t = interleaved({"bare": bare, "recorded": recorded, "hooks": hooks(False), "keep": hooks(True)}, repeats)
    b, r, h, k = (median(t[n]) for n in ("bare", "recorded", "hooks", "keep"))
    case = f"record all layers: {model_id}"
    return [{"case": case, "layers": n_layers, "bare_ms": b * 1e3, "measured_ms": r * 1e3, "ratio": r / b,
             "goal": "<= 1.10"},
            {"case": "  floor: hooks keeping nothing", "layers": n_layers, "bare_ms": b * 1e3,
             "measured_ms": h * 1e3, "ratio": h / b, "goal": "report"},
            {"case": "  floor: hooks keeping a reference to every output", "layers": n_layers, "bare_ms": b * 1e3,
             "measured_ms": k * 1e3, "ratio": k / b, "goal": "report"},
            {"case": "  ours vs that floor", "layers": n_layers, "bare_ms": k * 1e3, "measured_ms": r * 1e3,
             "ratio": r / k, "goal": "report"}]


def apptest_rerun(repeats: int) -> dict:
    from streamlit.testing.v1 import AppTest

    from cnnviz.app import cache

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    calls = []
    handle = cache.model(models.BUNDLED_ID).net.register_forward_pre_hook(lambda *a: calls.append(1))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
    handle.remove()
    assert not at.exception
    return {"case": "home page rerun, cache hit (AppTest)", "layers": "", "bare_ms": first * 1e3,
            "measured_ms": median(times) * 1e3, "ratio": median(times) / first,
            "goal": f"0 forward passes (saw {len(calls)})", "forward_passes": len(calls)}


def cold_start(repeats: int) -> dict:
    sample = ROOT / "assets" / "samples" / "cat.jpg"
    cmds = {
        "imports": [sys.executable, "-c", "import torch, torchvision, streamlit"],
        "predict": [sys.executable, "-m", "cnnviz", "predict", str(sample), "--json"],
    }

    def run(cmd):
        return lambda: subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)

    t = interleaved({k: run(c) for k, c in cmds.items()}, repeats, warmup=1)
    i, p = median(t["imports"]), median(t["predict"])
    return {"case": "cold start to first prediction (CLI process)", "layers": "", "bare_ms": i * 1e3,
            "measured_ms": p * 1e3, "ratio": p / i, "goal": "report"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rows = [
        *recording(models.BUNDLED_ID, args.repeats),
        *recording("torchvision:resnet18@random", args.repeats),  # same compute as the pretrained one
        apptest_rerun(10),
        cold_start(5),
    ]
    report("core", rows, {"note": "bare_ms is the baseline of each row: bare forward, first AppTest run, "
                                  "or `import torch, torchvision, streamlit`"})


if __name__ == "__main__":
    main()
