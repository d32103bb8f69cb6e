"""Jobs in worker processes (cnnviz.workers), as a served app runs them: heavy ones at the
lowest priority, short ones in a worker of their own."""
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cnnviz import activations, adversarial, featurevis, jobs, predict, saliency, workers
from cnnviz.contract import Cancelled, CnnvizError, NotFound, Progress

from .conftest import ROOT


@pytest.fixture(scope="module")
def served(monkeypatch_module):
    """A runner set up as app.py sets the server's: its jobs go to worker processes."""
    monkeypatch_module.delenv("CNNVIZ_JOB_PROCESSES", raising=False)
    runner = jobs.Runner(heavy_slots=1, heavy_threads=1, short_workers=1)
    runner.serve()
    assert runner.pool is not None and runner.short_pool is not None and runner.short_threads == 1
    assert until(runner.short_pool.ready)  # short jobs go to it from now on
    yield runner
    started = [*runner.pool.workers, *runner.short_pool.workers]
    runner.close()
    assert runner.pool is runner.short_pool is None and not any(w.alive for w in started)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def until(ready, seconds: float = 120) -> bool:
    """Whether `ready()` came true within `seconds` (a worker starting: it imports torch)."""
    end = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def worker_of(runner) -> workers.Worker:
    (w,) = runner.pool.workers
    return w


def short_worker_of(runner) -> workers.Worker:
    (w,) = runner.short_pool.workers
    return w


def test_short_jobs_run_in_a_worker_of_their_own_with_the_same_numbers(served, bundled, cat, monkeypatch):
    """On a crowded server a forward pass on a script thread waited for the interpreter
    lock after each operation: ~110 ms per prediction with 30 sessions uploading."""
    here = jobs.Runner(short_threads=1)
    expected = here.run(bundled, cat, predict.PredictSpec())
    layer = bundled.layers[0].name
    recorded = here.run(bundled, cat, activations.ActivationsSpec((layer,)))
    for module in (predict, activations):  # not this process: its analyses are out of order here
        monkeypatch.setattr(module, "run", lambda *a, **k: pytest.fail("ran in the server's process"))
    result = served.run(bundled, cat, predict.PredictSpec())
    np.testing.assert_array_equal(result.probs, expected.probs)
    assert result.top == expected.top and result.model == bundled.id and result.seconds > 0
    rec = served.run(bundled, cat, activations.ActivationsSpec((layer,)))
    np.testing.assert_array_equal(rec.maps[layer], recorded.maps[layer])
    short = short_worker_of(served)
    assert short.alive and short.proc.pid not in (os.getpid(), worker_of(served).proc.pid)
    if sys.platform.startswith("linux"):  # the server's own priority: clicks are what everyone waits for
        assert os.getpriority(os.PRIO_PROCESS, short.proc.pid) == os.getpriority(os.PRIO_PROCESS, 0)


def test_until_the_short_worker_is_ready_short_jobs_run_here(bundled, cat, monkeypatch):
    """A fresh server's first page must not wait seconds for the worker's torch import."""
    monkeypatch.delenv("CNNVIZ_JOB_PROCESSES", raising=False)
    runner = jobs.Runner(heavy_slots=1, heavy_threads=1, short_workers=1)
    runner.serve()
    try:
        short = short_worker_of(runner)
        monkeypatch.setattr(short, "poll_ready", lambda: False)  # still importing, however fast this machine
        monkeypatch.setattr(short, "run", lambda *a, **k: pytest.fail("waited for a worker that was not ready"))
        expected = jobs.Runner(short_threads=1).run(bundled, cat, predict.PredictSpec())
        result = runner.run(bundled, cat, predict.PredictSpec())
        np.testing.assert_array_equal(result.probs, expected.probs)
    finally:
        runner.close()


def test_a_ready_worker_says_so_and_a_dead_one_is_started_again(bundled, cat):
    pool = workers.Pool(1, threads=1, nice=0)
    try:
        pool.ready()
        assert pool.workers[0].alive  # never started: asking starts it
        assert until(pool.ready)
        (w,) = pool.workers
        first = w.proc.pid
        w.proc.kill()
        w.proc.wait()
        assert until(pool.ready) and w.alive and w.proc.pid != first
        assert pool.run(bundled, cat, predict.PredictSpec(), "cnnviz.predict", Progress()).probs.shape == (1000,)
    finally:
        pool.close()


def test_a_job_goes_to_a_worker_that_has_started(monkeypatch):
    """With two workers, one still importing torch, the job takes the one that is ready."""
    pool = workers.Pool(2, threads=1, nice=0)
    started, importing = pool.workers
    started.ready = True
    for w in pool.workers:
        monkeypatch.setattr(w, "run", lambda *a, _w=w, **k: _w)
    assert pool.run(None, None, None, "cnnviz.predict", Progress()) is started
    started.ready, importing.ready = False, True
    assert pool.run(None, None, None, "cnnviz.predict", Progress()) is importing


@pytest.mark.skipif(not os.path.exists("/proc/sys/fs/pipe-max-size"), reason="Linux pipe sizes")
def test_the_pipes_to_a_worker_are_as_wide_as_the_system_allows(served, bundled, cat):
    """A message is read in pipe-sized pieces, each a wait for the interpreter lock."""
    import fcntl

    served.run(bundled, cat, predict.PredictSpec())
    with open("/proc/sys/fs/pipe-max-size") as f:
        widest = int(f.read())
    for w in (short_worker_of(served), worker_of(served)):
        for conn in (w.send_conn, w.recv_conn):
            assert fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ) == widest


def test_jobs_wait_their_turn_for_a_busy_worker(bundled, cat):
    pool = workers.Pool(1, threads=1, nice=0)
    out, errors = [], []
    gate = threading.Barrier(3)

    def job():
        gate.wait()
        try:
            out.append(pool.run(bundled, cat, predict.PredictSpec(), "cnnviz.predict", Progress()))
        except Exception as e:  # noqa: BLE001 (the assertion below says which)
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    finally:
        pool.close()
    assert not errors and len(out) == 3
    assert all(np.array_equal(r.probs, out[0].probs) for r in out)


def test_a_stop_leaves_the_wait_for_a_worker(bundled, cat):
    pool = workers.Pool(1, threads=1, nice=0)
    started = threading.Event()
    busy = Progress(lambda f, t, p: started.set())

    def hold():
        with contextlib.suppress(Cancelled):
            pool.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=400), "cnnviz.adversarial", busy)

    long_job = threading.Thread(target=hold)
    try:
        long_job.start()
        assert started.wait(120)  # the one worker is busy
        waiting = Progress()
        threading.Timer(0.5, waiting.stop).start()
        t = time.monotonic()
        with pytest.raises(Cancelled):
            pool.run(bundled, cat, predict.PredictSpec(), "cnnviz.predict", waiting)
        assert time.monotonic() - t < 10
    finally:
        busy.stop()
        long_job.join(120)
        pool.close()


def test_heavy_job_runs_in_the_worker_with_the_same_numbers(served, bundled, cat, monkeypatch):
    spec = adversarial.AttackSpec(method="pgd", eps=8, steps=6)
    assert served.is_heavy(bundled, spec, cat)
    threaded = jobs.Runner(heavy_slots=1, heavy_threads=1).run(bundled, cat, spec)
    # Not this process: its analysis is out of order here.
    monkeypatch.setattr(adversarial, "run", lambda *a, **k: pytest.fail("ran in the server's process"))
    reports = []
    result = served.run(bundled, cat, spec, progress=Progress(lambda f, t, p: reports.append(f)))
    assert worker_of(served).alive and worker_of(served).proc.pid != os.getpid()
    np.testing.assert_allclose(result.adversarial, threaded.adversarial, atol=1e-6)
    assert result.target == threaded.target and result.model == bundled.id and result.seconds > 0
    assert reports, "the worker's progress reached the caller"
    assert threading.current_thread() is threading.main_thread()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux priorities")
def test_the_worker_runs_at_the_lowest_priority_in_its_own_group(served, bundled, cat):
    served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=6))  # started and working
    pid = worker_of(served).proc.pid
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + jobs.HEAVY_NICE)
    assert os.getsid(pid) != os.getsid(0)  # its own session: its own autogroup
    group = f"/proc/{pid}/autogroup"
    if os.path.exists(group):  # a kernel with autogroups: nice ranks it only within its group
        with open(group) as f:
            assert f.read().split()[-1] == str(jobs.HEAVY_NICE)


def test_a_model_is_sent_once_per_worker(served, bundled, cat, monkeypatch):
    sent = []
    real = workers.portable
    monkeypatch.setattr(workers, "portable", lambda m: sent.append(m.id) or real(m))
    score = saliency.SaliencySpec("occlusion", occlusion_window=112, occlusion_stride=56)  # 9 positions + 1
    assert served.is_heavy(bundled, score, cat)
    for s in (score, score):
        served.run(bundled, cat, s)
    assert sent.count(bundled.id) <= 1  # the first test may already have sent it


def test_stop_ends_the_workers_job_and_the_next_job_runs(served, bundled, cat):
    progress = Progress()
    timer = threading.Timer(1.5, progress.stop)
    timer.start()
    t = time.monotonic()
    with pytest.raises(Cancelled):
        served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=400), progress=progress)
    assert time.monotonic() - t < 1.5 + 10, "stopped within a few passes, not after 400 steps"
    pid = worker_of(served).proc.pid
    result = served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=6))
    assert result.steps == 6 and worker_of(served).proc.pid == pid  # the same worker, its pipes clean


def test_a_rerun_in_the_callers_thread_stops_the_worker(served, bundled, cat):
    class Rerun(Exception):  # what Streamlit raises inside a progress draw
        pass

    def report(fraction, text, preview):
        if fraction > 0.05:
            raise Rerun

    with pytest.raises(Rerun):
        served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=300), progress=Progress(report))
    assert served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=6)).steps == 6


def test_a_worker_killed_mid_job_fails_that_job_only(served, bundled, cat):
    started = threading.Event()
    progress = Progress(lambda f, t, p: started.set())
    out = {}

    def job():
        try:
            served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=400), progress=progress)
        except CnnvizError as e:
            out["error"] = e

    th = threading.Thread(target=job)
    th.start()
    assert started.wait(60)
    os.kill(worker_of(served).proc.pid, signal.SIGKILL)  # as the kernel does when memory runs out
    th.join(60)
    assert isinstance(out.get("error"), workers.WorkerDied)
    assert "worker process ended" in str(out["error"]) and "out of memory" in str(out["error"])
    assert served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=6)).steps == 6


def test_a_job_that_fails_in_the_worker_answers_at_once_and_the_worker_stays(served, bundled, cat):
    from .worker_jobs import FailingSpec

    served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=6))
    pid = worker_of(served).proc.pid
    t = time.monotonic()
    with pytest.raises(CnnvizError, match="cannot answer"):
        served.run(bundled, cat, FailingSpec())
    assert time.monotonic() - t < workers.STOP_GRACE_S / 2  # no stop signal, no wait for an answer already read
    assert worker_of(served).proc.pid == pid
    assert served.run(bundled, cat, adversarial.AttackSpec(method="pgd", eps=8, steps=6)).steps == 6


def test_errors_come_back_as_the_users_message():
    e = workers._portable_error(NotFound("layer", "conv9", ["conv1", "conv2"]))
    assert isinstance(e, CnnvizError) and "conv9" in str(e) and "conv1" in str(e)
    assert isinstance(workers._portable_error(Cancelled()), Cancelled)
    assert isinstance(workers._portable_error(KeyError("x")), KeyError)  # pickles: goes back as it is

    class Local(Exception):  # a class the other side cannot import
        pass

    bug = workers._portable_error(Local("boom"))
    assert type(bug) is RuntimeError and "Local: boom" in str(bug)


def test_feature_visualization_stays_in_process(served, bundled, cache_dir):
    """Its runs fill this process's render cache, which the Filters page reads."""
    layer = bundled.layers[10].name
    spec = featurevis.FeatureVisSpec(layer=layer, channel=0, objective="channel", size=64, steps=8, lr=0.05, seed=0)
    served.run(bundled, None, spec)
    assert featurevis.cached(bundled, spec) is not None


def test_a_worker_exits_when_its_server_dies(tmp_path):
    script = (
        "import os, sys\n"
        "from cnnviz import workers\n"
        "w = workers.Worker(threads=1, nice=0)\n"
        "w.start()\n"
        "print(w.proc.pid, flush=True)\n"
        "os._exit(0)\n"  # no clean-up: as if killed
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.2)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
