"""Training LeNet-5 on the bundled digits (issue #17's bar: the default run reaches >= 95% test
accuracy in <= 30 s on this 2-core machine). Times the default run through the job runner
(`cnnviz train`'s path) against a bare loop (the same network, data, optimizer and steps,
`lenet.epoch_steps`, and nothing else: no per-epoch evaluation, no progress, no runner), interleaved; medians.

    python bench/bench_lenet.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import interleaved, median, report  # noqa: E402
from cnnviz import jobs, lenet, models  # noqa: E402


def bare(variant: str, spec: lenet.TrainSpec):
    def go():
        x, y = lenet.digits()
        train, _ = lenet.split(len(x), spec.seed)
        net = lenet.fresh(variant, spec.seed)
        opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
        gen = torch.Generator().manual_seed(spec.seed + 1)
        for _ in range(spec.epochs):
            lenet.epoch_steps(net, opt, x, y, train[torch.randperm(len(train), generator=gen)], spec.batch)
    return go


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    jobs.RUNNER = jobs.Runner(heavy_threads=torch.get_num_threads())  # as the CLI runs it
    spec = lenet.TrainSpec()  # the default run
    rows = []
    for variant in lenet.VARIANTS:
        acc = {}

        def cnnviz_run(variant=variant):
            acc["r"] = jobs.run(models.untrained_lenet(variant, spec.seed), None, spec)

        t = interleaved({"cnnviz": cnnviz_run, "bare": bare(variant, spec)}, args.repeats, warmup=1)
        r = acc["r"]
        rows.append({"variant": variant, "epochs": spec.epochs, "test_accuracy": r.test_accuracy,
                     "cnnviz_s": median(t["cnnviz"]), "bare_loop_s": median(t["bare"]),
                     "ratio": median(t["cnnviz"]) / median(t["bare"]),
                     "bar": "met" if r.test_accuracy >= 0.95 and median(t["cnnviz"]) <= 30 else "NOT met"})
    report("lenet", rows, {"spec": repr(spec)})


if __name__ == "__main__":
    main()
