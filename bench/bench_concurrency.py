"""Two sessions on one model: how long does session B wait while session A runs a heavy job?

B's requests are what every click costs (a prediction, a Grad-CAM); A runs one heavy job
after another on the same model in another thread: Score-CAM on the bundled model's
1280-channel layer, Score-CAM on random-init ResNet-50's layer4 (2048 channels), a
40-step PGD, and a feature visualization. B makes a request every `--interval` seconds
(predict and Grad-CAM in turn, each in a thread of its own, as Streamlit runs each rerun),
whether or not the previous one has answered, as users click. Each B latency is a median
over the requests B made while A was busy, as a ratio to B's median on the idle model
(the same requests one at a time, before and after the phase).

The code measured is the `cnnviz` in the current folder (or `--root`), so one script
times both sides:

    python bench/bench_concurrency.py                                  # this checkout: cnnviz.jobs
    cd /tmp/base && python /work/main/bench/bench_concurrency.py --old  # the code before the job runner

New code: everything through `cnnviz.jobs.run(model, image, spec)` (heavy jobs on a private
copy in the runner's slot, stopped with `Progress.stop()`). Old code: the module functions
(`saliency.attribute`, `adversarial.attack`, `predict.probabilities`, `featurevis.optimize`),
stopped through their progress callbacks where they have one. Bounded in time: each phase
ends when B's `--requests` requests of each kind have answered or after `--seconds`,
whichever comes first, and A's job is then stopped (an old PGD, which has no progress callback, runs its 40 steps out).
A job that was stopped reports its fraction done, and `job_s` estimates its full length.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--root", default=os.getcwd(), help="folder whose cnnviz/ is measured (default: here)")
ap.add_argument("--old", action="store_true", help="the pre-runner API (default: detected)")
ap.add_argument("--requests", type=int, default=5, help="B requests of each kind per phase (and idle)")
ap.add_argument("--interval", type=float, default=1.0, help="seconds between two of B's requests")
ap.add_argument("--seconds", type=float, default=30.0, help="longest phase (A's job is stopped then)")
ap.add_argument("--served", action="store_true",
                help="the runner as a served app sets it (jobs.RUNNER.serve(): jobs in worker "
                     "processes, or on threads with CNNVIZ_JOB_PROCESSES=0)")
ap.add_argument("--jobs", default="scorecam,scorecam_resnet50,pgd,featurevis",
                help="comma-separated phases: scorecam, scorecam_resnet50, pgd, featurevis")
args = ap.parse_args()

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(Path(args.root).resolve()), str(BENCH)]
import torch  # noqa: E402
from common import report, scratch  # noqa: E402

if "CNNVIZ_CACHE" not in os.environ:  # nothing from a cache, and nothing left behind (before cnnviz reads it)
    os.environ["CNNVIZ_CACHE"] = str(scratch("cnnviz-bench-cache-"))

import cnnviz  # noqa: E402
from cnnviz import models  # noqa: E402
from cnnviz.images import load_image  # noqa: E402
from cnnviz.samples import sample_paths  # noqa: E402

NEW = not args.old and importlib.util.find_spec("cnnviz.jobs") is not None
if NEW:
    from cnnviz import jobs  # noqa: E402
    from cnnviz.contract import Cancelled, Progress  # noqa: E402


class Stop(Exception):
    """Raised from an old progress callback to end A's job (it releases the model's lock)."""


def spec(module: str, name: str, *positional, **kwargs):
    """`cnnviz.<module>.<name>(*positional, **kwargs)`, with the keywords the spec has (the
    specs are new; a field it lacks is left to its default). None if it does not exist yet."""
    try:
        cls = getattr(importlib.import_module(f"cnnviz.{module}"), name)
    except (ImportError, AttributeError):
        return None
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(kwargs)
    return cls(*positional, **{k: v for k, v in kwargs.items() if k in names})


class Job:
    """A's heavy job, started again and again until `halt()`; `started` once it computes."""

    def __init__(self, name: str, model, image, layer: str | None):
        self.name, self.model, self.image, self.layer = name, model, image, layer
        self.halted = threading.Event()
        self.started = threading.Event()
        self.runs = 0
        self.fraction = 0.0  # of the run in progress when halted
        self.t_run = 0.0  # when that run began
        self.done_s: list[float] = []  # lengths of the runs that finished
        self.error: BaseException | None = None
        self.t_halted = float("inf")
        self.interrupted = False  # the stop ended a run before its end
        self._progress = None

    def halt(self) -> None:
        if not self.halted.is_set():
            self.t_halted = time.perf_counter()
        self.halted.set()
        if self._progress is not None:
            self._progress.stop()

    def loop(self) -> None:
        try:
            seed = 0
            while not self.halted.is_set():
                self.fraction, self.t_run = 0.0, time.perf_counter()
                try:
                    self.once(seed)
                    self.done_s.append(time.perf_counter() - self.t_run)
                    self.fraction = 1.0
                except Stop:
                    self.interrupted = True
                self.runs += 1
                seed += 1  # a feature visualization is never served from a cache
                self.halted.wait(0.2)  # a user between two jobs
        except Exception as e:  # noqa: BLE001 (reported in the table)
            if not (NEW and isinstance(e, Cancelled)):
                self.error = e
        finally:
            self.t_end = time.perf_counter()
            self.started.set()

    # -- A's side of each API
    def _tick(self, fraction: float) -> None:
        self.fraction = float(fraction)
        self.started.set()
        if self.halted.is_set():
            raise Stop

    def once(self, seed: int) -> None:
        if NEW:
            return self._new(seed)
        from cnnviz import adversarial, featurevis, saliency

        if self.name.startswith("scorecam"):
            saliency.attribute(self.model, self.image, "scorecam", layer=self.layer, progress=self._tick)
        elif self.name == "pgd":
            self.started.set()  # no progress callback: it holds the lock from its first step
            adversarial.attack(self.model, self.image, "pgd", eps=8, steps=40)
        else:
            fv = featurevis.Spec(self.layer, seed % 8, "channel", 128, 4096, 0.05, seed)

            def tick(step, steps, preview):
                self.fraction = step / steps
                self.started.set()
                return self.halted.is_set()

            r = featurevis.optimize(self.model, fv, tick)
            if r.stopped:
                raise Stop

    def _new(self, seed: int) -> None:
        if self.name.startswith("scorecam"):
            s = spec("saliency", "SaliencySpec", "scorecam", layer=self.layer)
        elif self.name == "pgd":
            s = spec("adversarial", "AttackSpec", method="pgd", eps=8, steps=40)
        else:
            s = spec("featurevis", "FeatureVisSpec", layer=self.layer, channel=seed % 8, objective="channel",
                     size=128, steps=4096, lr=0.05, seed=seed, cache=False)
        if s is None:
            raise NotImplementedError(f"no spec for {self.name} in this checkout yet")

        def report_(fraction, text, preview=None):
            self.fraction = fraction
            if fraction > 0 or not text.startswith("Waiting"):
                self.started.set()

        self._progress = Progress(report_)
        if self.halted.is_set():
            raise Stop
        try:
            jobs.run(self.model, self.image, s, progress=self._progress)
        except Cancelled:
            raise Stop from None


# -- B's side: one request of each kind, each in a thread of its own (as Streamlit runs each
# rerun of each session in a thread), issued on a clock: a user clicks whether or not A is busy.
def b_request(kind: str, model, image):
    if NEW:
        from cnnviz import predict

        s = predict.PredictSpec() if kind == "predict" else spec("saliency", "SaliencySpec", "gradcam")
        if s is None:
            raise NotImplementedError("no SaliencySpec in this checkout yet")
        return jobs.run(model, image, s)
    if kind == "predict":
        from cnnviz import predict

        return predict.probabilities(model, image)
    from cnnviz import saliency

    return saliency.attribute(model, image, "gradcam")


class Request(threading.Thread):
    def __init__(self, kind: str, model, image, during=lambda: True):
        super().__init__(daemon=True, name=f"B:{kind}")
        self.kind, self.model, self.image, self.during = kind, model, image, during
        self.t0 = self.t1 = float("nan")
        self.busy = False  # A was running when this request was made
        self.error: BaseException | None = None
        self.threads = 0

    def run(self):
        self.threads = torch.get_num_threads()
        self.busy = self.during()
        self.t0 = time.perf_counter()
        try:
            b_request(self.kind, self.model, self.image)
        except BaseException as e:  # noqa: BLE001
            self.error = e
        self.t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


KINDS = ("predict", "gradcam")


def b_idle(model, image, n: int) -> list[Request]:
    """n requests of each kind, one after the other, nothing else running."""
    done = []
    for i in range(2 * n):
        r = Request(KINDS[i % 2], model, image)
        r.start()
        r.join()
        done.append(r)
        time.sleep(0.05)
    return done


def b_clicks(model, image, n: int, interval: float, deadline: float, during) -> list[Request]:
    """n requests of each kind, alternating, one started every `interval` seconds whether
    or not the previous one has answered; none started after `deadline`."""
    started = []
    t = time.perf_counter()
    for i in range(2 * n):
        if t + i * interval > deadline:
            break
        time.sleep(max(0.0, t + i * interval - time.perf_counter()))
        r = Request(KINDS[i % 2], model, image, during)
        r.start()
        started.append(r)
    return started


def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


PHASES = {  # name: (model id, A's layer)
    "scorecam": (models.BUNDLED_ID, "_swish#1"),  # the bundled model's last layer: 1280 channels
    "scorecam_resnet50": ("torchvision:resnet50@random", "layer4.2.relu#2"),  # layer4's output: 2048 channels
    "pgd": (models.BUNDLED_ID, None),
    "featurevis": (models.BUNDLED_ID, "_blocks.8._swish#1"),
}


def main() -> None:
    if args.served and NEW:
        jobs.RUNNER.serve()
    wanted = [j.strip() for j in args.jobs.split(",") if j.strip()]
    samples = sample_paths()
    img_b, img_a = load_image(samples["cat"]), load_image(samples["coffee"])
    loaded: dict[str, object] = {}
    rows, out, idle_ms = [], {}, {}
    print(f"cnnviz from {Path(cnnviz.__file__).parent} ({'jobs.run' if NEW else 'old API'}), "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    for name in wanted:
        model_id, layer = PHASES[name]
        if model_id not in loaded:
            loaded[model_id] = models.load(model_id)
            b_idle(loaded[model_id], img_b, 2)  # warm-up
        model = loaded[model_id]
        before = b_idle(model, img_b, args.requests)
        kinds = [k for k in KINDS if not any(r.kind == k and isinstance(r.error, NotImplementedError) for r in before)]
        job = Job(name, model, img_a, layer)
        a = threading.Thread(target=job.loop, name=f"A:{name}", daemon=True)
        t0 = time.perf_counter()
        a.start()
        job.started.wait(args.seconds)
        clicks = [] if job.error else b_clicks(model, img_b, args.requests, args.interval, t0 + args.seconds,
                                               during=lambda: a.is_alive() and not job.halted.is_set())
        for r in clicks:  # the answers that come before the phase ends ...
            r.join(max(0.0, t0 + args.seconds - time.perf_counter()))
        job.halt()  # ... then A is stopped, and a request still blocked behind it answers
        t_halt = job.t_halted
        for r in clicks:
            r.join()
        a.join()
        after = b_idle(model, img_b, args.requests)
        stop_s = job.t_end - t_halt  # from the stop request to A's thread ending
        # A request that answered only after A's job was cut short waited for the stop: its
        # latency is a lower bound of what the whole job would have cost it.
        capped = job.interrupted and any(r.t1 > t_halt + 0.05 for r in clicks if r.busy)
        if job.done_s:
            job_s = med(job.done_s)
        elif job.fraction > 0:
            job_s = (t_halt - job.t_run) / job.fraction  # the stopped run's pace
        else:
            job_s = None
        row = {"job": name, "model": model_id.replace("torchvision:", ""), "A_runs": job.runs,
               "A_job_s": job_s, "A_stop_s": stop_s}
        idle_ms[name] = {}
        for kind in kinds:
            base = med([r.seconds for r in before + after if r.kind == kind and r.error is None])
            xs = [r.seconds for r in clicks if r.kind == kind and r.busy and r.error is None]
            idle_ms[name][kind] = base * 1e3 if base else None
            row[f"{kind}_idle_ms"] = base * 1e3 if base else None
            row[f"{kind}_ms"] = med(xs) * 1e3 if xs else None
            row[f"{kind}_n"] = len(xs)
            row[f"{kind}_x_idle"] = ratio(med(xs), base)
        errors = {f"{type(r.error).__name__}: {r.error}" for r in clicks + before if r.error is not None
                  and not isinstance(r.error, NotImplementedError)}
        row["note"] = "; ".join(
            ([f"A failed: {type(job.error).__name__}: {job.error}"] if job.error else [])
            + ([f"B failed: {e}" for e in sorted(errors)])
            + ([f"B waited until A was stopped at {args.seconds:.0f} s (lower bound)"] if capped else [])
            + ([f"no {k} in this checkout" for k in KINDS if k not in kinds]))
        rows.append(row)
        out[name] = {k: v for k, v in row.items() if k not in ("job", "model", "note")}
        fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        print(f"  {name}: predict x{fmt(row.get('predict_x_idle'))}, gradcam x{fmt(row.get('gradcam_x_idle'))} "
              f"({row.get('predict_n', 0)}+{row.get('gradcam_n', 0)} requests), A stopped in {stop_s:.2f} s. "
              f"{row['note']}", flush=True)
    threads = sorted({r.threads for r in before})
    report("concurrency_new" if NEW else "concurrency_old", rows,
           {"api": "jobs.run" if NEW else "old", "root": str(Path(cnnviz.__file__).parent.parent),
            "idle_ms": idle_ms, "seconds_cap": args.seconds, "requests": args.requests,
            "interval": args.interval, "b_threads": threads, "medians": out,
            "load_average": os.getloadavg()[0],
            "runner": (dict(heavy_slots=jobs.RUNNER.heavy_slots, heavy_threads=jobs.RUNNER.heavy_threads)
                       if NEW else None)})


if __name__ == "__main__":
    main()
