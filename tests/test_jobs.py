"""The job runner: where a job runs, the heavy-job budget, cancellation, and that a long
job on the shared model makes no other session wait.

This module is itself a tiny analysis (`PassesSpec` + `run`), so the runner's rules are
tested without depending on any real analysis' timing."""
import os
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import torch

from cnnviz import jobs, models
from cnnviz.contract import Cancelled, CnnvizError, Progress, Result, Spec


@dataclass(frozen=True)
class PassesSpec(Spec):
    """`n` forward passes, one per batch, with a gate the test opens to let the job end."""
    n: int
    hold: bool = False

    def passes(self, model) -> int:
        return self.n

    def check(self, model):
        if self.n < 1:
            raise CnnvizError("n must be at least 1")
        return self


@dataclass
class Ran(Result):
    net_id: int  # which network object ran (shared or a private copy)
    lock_held: bool
    threads: int
    thread: int  # the OS thread it ran on
    nice: int


GATES: dict[int, threading.Event] = {}
DONE: dict[int, int] = {}  # passes made, by id(spec)
STARTED: dict[int, threading.Event] = {}


def run(model, image, spec: PassesSpec, *, progress=None) -> Ran:
    progress = Progress.of(progress)
    key = id(spec)
    STARTED.setdefault(key, threading.Event()).set()
    x = torch.zeros(1, 3, 32, 32)
    for i in range(spec.n):
        if spec.hold:
            while not GATES[key].wait(0.02):
                progress.check()
        with torch.no_grad():
            model.net(x)
        DONE[key] = i + 1
        progress((i + 1) / spec.n, f"pass {i + 1} of {spec.n}")
    held = model.lock.acquire(blocking=False)  # RLock: True if free or held by this thread
    if held:
        model.lock.release()
    tid = threading.get_native_id()
    return Ran(id(model.net), held, torch.get_num_threads(), tid, os.getpriority(os.PRIO_PROCESS, tid))


@pytest.fixture(scope="module")
def tiny():
    return models.load("torchvision:resnet18@random")


def _in_thread(fn):
    out = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_short_jobs_run_on_the_shared_model_heavy_ones_on_a_private_copy(tiny):
    runner = jobs.Runner(heavy_slots=1, heavy_threads=1)
    short = runner.run(tiny, None, PassesSpec(jobs.SHORT_PASSES))
    heavy = runner.run(tiny, None, PassesSpec(jobs.SHORT_PASSES + 1))
    assert short.net_id == id(tiny.net) and heavy.net_id != id(tiny.net)
    assert short.model == heavy.model == tiny.id and short.seconds > 0 and heavy.seconds > 0
    assert heavy.threads == 1 and torch.get_num_threads() != 0  # set for the job, restored after
    assert not tiny.net._forward_hooks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_a_heavy_job_runs_on_its_own_lower_priority_thread_and_reports_through_the_caller(tiny):
    """Contended cores go to other sessions' clicks first; the caller's thread keeps its
    priority (only root could raise it again) and draws the job's progress."""
    me = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, me)
    seen = []
    progress = Progress(lambda f, text, _: seen.append((threading.get_native_id(), text)))
    runner = jobs.Runner(heavy_slots=1, heavy_threads=1)
    heavy = runner.run(tiny, None, PassesSpec(jobs.SHORT_PASSES + 3), progress=progress)
    short = runner.run(tiny, None, PassesSpec(1))
    assert heavy.thread != me and heavy.nice == min(19, base + jobs.HEAVY_NICE)
    assert short.thread == me and short.nice == base == os.getpriority(os.PRIO_PROCESS, me)
    assert seen and all(tid == me for tid, _ in seen) and all(text.startswith("pass ") for _, text in seen)


def test_a_heavy_job_stops_within_one_batch_of_a_stop_from_the_caller(tiny):
    """The job runs on its own thread; a stop asked on the caller's side reaches it at once."""
    spec = PassesSpec(500)
    at_stop = []

    def report(f, text, _):
        at_stop.append(DONE[id(spec)])  # passes the job had made when the stop was asked
        progress.stop()

    progress = Progress(report)
    with pytest.raises(Cancelled):
        jobs.Runner(heavy_slots=1, heavy_threads=1).run(tiny, None, spec, progress=progress)
    assert len(at_stop) == 1 and DONE[id(spec)] - at_stop[0] <= 1 and DONE[id(spec)] < spec.n


def test_bad_spec_is_refused_before_anything_runs(tiny):
    with pytest.raises(CnnvizError, match="at least 1"):
        jobs.Runner().run(tiny, None, PassesSpec(0))


def test_a_heavy_job_does_not_hold_the_shared_lock(tiny):
    """While a heavy job is mid-run, another thread can take the model's lock (what every
    short job of every other session does)."""
    runner = jobs.Runner(heavy_slots=1, heavy_threads=1)
    spec = PassesSpec(10, hold=True)
    GATES[id(spec)] = threading.Event()
    t, out = _in_thread(lambda: runner.run(tiny, None, spec))
    assert STARTED.setdefault(id(spec), threading.Event()).wait(60)
    try:
        assert tiny.lock.acquire(timeout=10), "the heavy job holds the shared model's lock"
        tiny.lock.release()
        assert t.is_alive()  # ... and it was still running
    finally:
        GATES[id(spec)].set()
        t.join(60)
    assert "error" not in out and out["result"].net_id != id(tiny.net)


def _slot_taken(model):
    """A runner with one heavy slot, taken by a job that runs until its gate opens."""
    runner = jobs.Runner(heavy_slots=1, heavy_threads=1)
    first = PassesSpec(6, hold=True)
    GATES[id(first)] = threading.Event()
    thread, out = _in_thread(lambda: runner.run(model, None, first))
    assert STARTED.setdefault(id(first), threading.Event()).wait(60)
    return runner, GATES[id(first)], thread, out


def test_heavy_jobs_queue_for_their_slots_and_say_so(tiny):
    runner, gate, t1, out1 = _slot_taken(tiny)
    told = []
    second = PassesSpec(7)
    t2, out2 = _in_thread(lambda: runner.run(tiny, None, second, progress=Progress(lambda f, text, _: told.append(text))))
    deadline = time.time() + 60
    while not told and time.time() < deadline:
        time.sleep(0.01)
    assert told and told[0] == "Waiting for a free slot: 1 long job ahead"
    assert runner.busy == (1, 1) and t2.is_alive()
    gate.set()
    t1.join(60), t2.join(60)
    assert "error" not in out1 and "error" not in out2
    assert told[-1] == "pass 7 of 7" and runner.busy == (0, 0)


def test_a_queued_job_can_be_cancelled_and_leaves_the_queue(tiny):
    runner, gate, t1, _ = _slot_taken(tiny)
    waiting = Progress()
    t2, out2 = _in_thread(lambda: runner.run(tiny, None, PassesSpec(9), progress=waiting))
    deadline = time.time() + 60
    while runner.busy != (1, 1) and time.time() < deadline:
        time.sleep(0.01)
    waiting.stop()
    t2.join(60)
    assert isinstance(out2.get("error"), Cancelled) and runner.busy == (1, 0)
    gate.set()
    t1.join(60)
    assert runner.busy == (0, 0)


def test_a_running_job_stops_within_one_batch(tiny):
    passes = []
    hook = tiny.net.register_forward_pre_hook(lambda *a: passes.append(1))
    progress = Progress(lambda f, text, _: (progress.stop(), passes.append("stop")))
    try:
        with pytest.raises(Cancelled):
            run(tiny, None, PassesSpec(50), progress=progress)  # on the shared net: the hook sees it
    finally:
        hook.remove()
    assert passes.index("stop") == 1 and len(passes) - passes.index("stop") - 1 <= 1


def test_progress_parts_map_fractions_and_share_the_stop():
    seen = []
    whole = Progress(lambda f, text, _: seen.append((round(f, 3), text)))
    half = whole.part(0.5, 1.0, "second half: ")
    half(0.5, "x")
    assert seen == [(0.75, "second half: x")]
    whole.stop()
    with pytest.raises(Cancelled):
        half(0.9)


def test_another_session_is_served_while_a_long_score_cam_runs():
    """Session A: Score-CAM on the 2048-channel output of a ResNet-50 (hundreds of
    passes). Session B, same model, meanwhile: a prediction and a Grad-CAM, which must
    finish while A is still running (an ordering check, not a timing bound)."""
    from PIL import Image

    from cnnviz import saliency
    from cnnviz.predict import PredictSpec

    model = models.load("torchvision:resnet50@random")
    image = Image.new("RGB", (224, 224), (120, 90, 200))
    layer = next(l.name for l in reversed(model.layers) if len(l.shape) == 3 and l.shape[0] == 2048 and l.shape[1] > 1)
    passes = []
    a_progress = Progress(lambda f, text, _: passes.append(f))
    runner = jobs.Runner(heavy_slots=1, heavy_threads=1)
    a, out = _in_thread(lambda: runner.run(model, image, saliency.SaliencySpec("scorecam", target=1, layer=layer),
                                           progress=a_progress))
    try:
        deadline = time.time() + 120
        while not passes and time.time() < deadline:  # A is past its set-up, inside its passes
            time.sleep(0.01)
        assert passes, f"Score-CAM never reported progress: {out}"
        b_pred = runner.run(model, image, PredictSpec())
        b_cam = runner.run(model, image, saliency.SaliencySpec("gradcam", target=b_pred.top[0].index))
        assert a.is_alive() and "result" not in out, "A finished first: the check proved nothing"
        assert b_pred.top and b_cam.map.shape == (224, 224)
    finally:
        a_progress.stop()
        a.join(120)
    assert isinstance(out.get("error"), Cancelled)
    assert not model.net._forward_hooks and all(not m._forward_hooks for m in model.net.modules())


def test_a_heavy_jobs_last_report_reaches_the_caller():
    """A job that reports and ends at once (its 100% draw) must still be drawn: the waiting
    thread may have had its last look before the report came."""
    for _ in range(20):  # the race needs the report to land after the loop's last look
        seen = []
        progress = Progress(lambda f, text, _: seen.append((threading.get_native_id(), f, text)))

        def job(p):
            p(1.0, "done")
            return "result"

        assert jobs.in_background(job, progress, threads=1, nice=0) == "result"
        assert seen and seen[-1][1:] == (1.0, "done") and seen[-1][0] == threading.get_native_id()
