"""The job runner: the one place that decides how an analysis runs.

`run(model, image, spec, progress=None)` finds the analysis from the spec's module
(`cnnviz.saliency.SaliencySpec` -> `cnnviz.saliency.run`) and runs it:

- **Too big** (more than `bounds.MAX_PASSES` images through the network, whatever the
  spec's knobs say: occlusion positions, sweeps, steps x budgets, gallery channels x
  steps): refused with an `OverBudget` error saying the cost and the limit, after the
  spec's own `check` and before anything runs.
- **Short jobs** (at most `SHORT_PASSES` images: a prediction, a Grad-CAM, one
  recording) run on the shared model under its lock; a served app runs them on one
  torch thread, in worker processes of their own at the server's priority (see
  `Runner.serve()`). They are what every session does on every click, and a few passes
  is what anyone waits behind.
- **Heavy jobs** (more passes: Score-CAM, Integrated Gradients, SmoothGrad, occlusion,
  PGD, sweeps, feature visualization, trust checks) run on `Model.private_copy()`:
  their own modules and lock over the shared weights, so no other session waits for
  them. At most `heavy_slots` run at once in the process (others queue, and see their
  place in the queue through `progress`), each with `heavy_threads` torch threads, so
  two jobs do not oversubscribe the cores and short jobs keep a core. Each runs at a
  lower OS priority (`HEAVY_NICE`, Linux): when the cores are contended, the clicks of
  other sessions (and, on a lecturer's laptop, the browsers) go first; on an idle
  machine it changes nothing. A served app (`Runner.serve()`) runs them in worker
  processes (`cnnviz.workers`), which share no interpreter lock with the sessions'
  script threads; elsewhere (the CLI, tests, benches) on a thread of their own. Either
  way the caller's thread relays the job's progress (so the page draws it) and its
  stop requests. An analysis whose run fills this process's caches as it goes (feature
  visualization: a stopped gallery keeps the channels it finished) says so with
  `RUNS_IN_PROCESS = True` and gets the thread.

The runner fills in the result's `model` and `seconds` (compute only, not queueing
or the pipes to a worker).
A `Progress` that is stopped makes the job raise `Cancelled` within one batch.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import torch

from . import bounds, workers
from .contract import CnnvizError, Progress, Result, Spec

HEAVY_NICE = 19  # a heavy job's process or thread: CFS weight 15 against 1024, ~1.5% of a contended core
SHORT_PASSES = 4  # images: a prediction (1), a Grad-CAM (1, or 2 finding the top-1), one recording


class OverBudget(CnnvizError):
    """A job that would run more images through the network than `bounds.MAX_PASSES`."""


def pixel_size(model, image) -> tuple[int, int]:
    """(h, w) of the pixels a job works on: a PIL image is resized to the model's input,
    pixels [1, 3, H, W] keep their own size (None: the input size)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 4 or tuple(image.shape[:2]) != (1, 3):
            raise CnnvizError(f"A job takes one image as pixels [1, 3, H, W], not {list(image.shape)}.")
        return int(image.shape[-2]), int(image.shape[-1])
    return tuple(model.input_size)


def cost(model, image, spec: Spec) -> int:
    """Images the (checked) `spec` runs through the network on `image`."""
    return int(spec.passes_at(model, pixel_size(model, image)))


def check_budget(model, image, spec: Spec) -> int:
    """The job's cost, or `OverBudget` when it is more than `bounds.MAX_PASSES`."""
    n = cost(model, image, spec)
    if n > bounds.MAX_PASSES:
        raise OverBudget(f"This job would run {n:,} images through the network; the server runs at most "
                         f"{bounds.MAX_PASSES:,} per job. Ask for fewer steps, samples, channels, budgets or "
                         "positions (a larger patch or stride).")
    return n


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch's intra-op threads for the calling thread only (OpenMP keeps it per thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def in_background(job, progress: Progress, threads: int, nice: int):
    """`job(p)` on a new thread with `threads` torch threads and `nice` added to its OS
    priority (Linux: each thread is its own task; the thread ends with the job, so the
    priority, which only root could raise again, goes with it). This thread waits,
    passing the job's reports to `progress` (a page draws them here, where its script
    runs). The job shares `progress`'s stop; any exception this thread gets while
    drawing (a Streamlit rerun) stops it too: it ends within one batch, then this raises."""
    latest: list = []
    wake, out = threading.Event(), {}

    def report(fraction, text, preview) -> None:
        latest[:] = [(fraction, text, preview)]
        wake.set()

    inner = progress.twin(report)

    def work() -> None:
        if nice and sys.platform.startswith("linux"):
            tid = threading.get_native_id()
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        try:
            with torch_threads(threads):
                out["result"] = job(inner)
        except BaseException as e:  # handed to the waiting thread
            out["error"] = e
        finally:
            wake.set()

    worker = threading.Thread(target=work, name="cnnviz-heavy-job", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            wake.wait(0.25)
            wake.clear()
            if latest:
                progress(*latest.pop())
            else:
                progress.check()
    except BaseException:
        inner.stop()
        worker.join()
        raise
    worker.join()
    if "error" in out:
        raise out["error"]
    if latest:  # a last report made after the loop's final look (the 100% draw)
        progress(*latest.pop())
    return out["result"]


def analysis_of(spec: Spec):
    """The module whose `run` takes this spec (the spec's own module)."""
    module = sys.modules[type(spec).__module__]
    if not hasattr(module, "run"):
        raise TypeError(f"{type(spec).__name__} has no analysis: {module.__name__} defines no run()")
    return module


class Runner:
    """Runs analyses for one process. `heavy_slots` jobs of many passes at once, each
    with `heavy_threads` torch threads (defaults fit the machine's cores). `short_threads`:
    torch threads of a short job (None: torch's default, every core; the server sets 1)."""

    def __init__(self, heavy_slots: int | None = None, heavy_threads: int | None = None,
                 short_threads: int | None = None, short_workers: int | None = None):
        cores = os.cpu_count() or 1
        self.short_threads = short_threads
        self.short_workers = short_workers or max(1, cores // 4)
        self.heavy_slots = heavy_slots or max(1, cores // 4)
        # Leave a core to the short jobs of every other session.
        self.heavy_threads = heavy_threads or max(1, (cores - 1) // self.heavy_slots)
        # Worker processes (see serve()): heavy jobs in `pool`, short ones in `short_pool`.
        self.pool: workers.Pool | None = None
        self.short_pool: workers.Pool | None = None
        self._cond = threading.Condition()
        self._running = 0
        self._queue: list[object] = []

    def serve(self) -> None:
        """How a served app runs jobs (app.py calls it on every run; it acts once): every
        job in a worker process, started now, unless `CNNVIZ_JOB_PROCESSES=0` (then on this
        process's threads, as elsewhere, short jobs on one torch thread each).

        - Heavy jobs: `heavy_slots` workers at the lowest priority.
        - Short jobs: `short_workers` workers at the server's priority, one torch thread
          each, since the sessions are the parallelism (with torch's default, every core,
          an upload cost the server 0.88 s of CPU and 0.18 s on one thread, 2-core
          machine). Not on the sessions' script threads: a forward pass gives up the
          interpreter lock in each of its ~150 operations and waits its turn to take it
          back, behind the event loop and every other session's script: 30 sessions
          uploading at once made each prediction of the bundled model ~110 ms (25 ms
          alone); beside two busy Python threads it took 490 ms there and 35 ms in a
          worker (ARCHITECTURE: "A class on one server")."""
        self.short_threads = 1
        if self.pool is None and os.environ.get("CNNVIZ_JOB_PROCESSES", "1") != "0":
            with self._cond:
                if self.pool is None:
                    self.short_pool = workers.Pool(self.short_workers, 1, 0)
                    self.short_pool.start()
                    self.pool = workers.Pool(self.heavy_slots, self.heavy_threads, HEAVY_NICE)
                    self.pool.start()

    def close(self) -> None:
        """Stop the worker processes (a served app's end, tests); jobs then run here."""
        with self._cond:
            for pool in (self.pool, self.short_pool):
                if pool is not None:
                    pool.close()
            self.pool = self.short_pool = None

    def is_heavy(self, model, spec: Spec, image=None) -> bool:
        return cost(model, image, spec) > SHORT_PASSES

    def run(self, model, image, spec: Spec, *, progress: Progress | None = None) -> Result:
        progress = Progress.of(progress)
        spec = spec.check(model)
        n = check_budget(model, image, spec)  # before anything runs
        analysis = analysis_of(spec)
        here = getattr(analysis, "RUNS_IN_PROCESS", False)
        if n <= SHORT_PASSES:
            # Until the short worker has started (a server's first seconds: it imports torch
            # beside the first session's script), a short job runs here, as it always did.
            if self.short_pool is not None and not here and self.short_pool.ready():
                result = self.short_pool.run(model, image, spec, analysis.__name__, progress)
            else:
                threads = torch_threads(self.short_threads) if self.short_threads else contextlib.nullcontext()
                with model.lock, threads:
                    t = time.perf_counter()
                    result = analysis.run(model, image, spec, progress=progress)
                    result.seconds = time.perf_counter() - t
        else:
            with self.slot(progress):
                if self.pool is not None and not here:
                    result = self.pool.run(model, image, spec, analysis.__name__, progress)
                else:
                    twin = model.private_copy()

                    def job(p: Progress) -> Result:
                        with twin.lock:
                            return analysis.run(twin, image, spec, progress=p)

                    t = time.perf_counter()
                    result = in_background(job, progress, self.heavy_threads, HEAVY_NICE)
                    result.seconds = time.perf_counter() - t
        result.model = model.id
        return result

    @contextlib.contextmanager
    def slot(self, progress: Progress):
        """One of the heavy slots, first come first served; while waiting, `progress`
        says how many jobs are ahead (and a stop request leaves the queue)."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            told = None
            try:
                while self._running >= self.heavy_slots or self._queue[0] is not ticket:
                    ahead = self._queue.index(ticket) + max(0, self._running - self.heavy_slots + 1)
                    if ahead != told:
                        told = ahead
                        progress(0.0, f"Waiting for a free slot: {ahead} long job{'s' * (ahead != 1)} ahead")
                    progress.check()
                    self._cond.wait(timeout=0.25)
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.pop(0)
            self._running += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @property
    def busy(self) -> tuple[int, int]:
        """(heavy jobs running, heavy jobs waiting)."""
        with self._cond:
            return self._running, len(self._queue)


RUNNER = Runner()  # the process's runner: its slots are a budget every session shares


def run(model, image, spec: Spec, *, progress: Progress | None = None) -> Result:
    """Run `spec`'s analysis on `model` and `image` with the process's runner."""
    return RUNNER.run(model, image, spec, progress=progress)
