"""Jobs in worker processes: their own interpreter lock (and, for heavy jobs, a lower OS priority).

A served app runs every session's script in a thread of one Python process. A heavy job
on another thread of that process, even at a lower OS priority, still shares the
interpreter lock: whenever the OS sets the low-priority thread aside while it holds the
lock (which a contended machine does all the time), every session's click waits for it.
A worker process has its own lock, so a click waits for nothing but the cores. Short
jobs go to workers of their own for the converse reason: a forward pass on a script
thread waits for the lock after each operation, behind every other session's script.

`Pool(size, threads, nice).run(model, image, spec, module, progress)` runs
`module.run(model, image, spec, progress=...)` in one of `size` long-lived workers
(`python -m cnnviz.workers`, started on first use). Messages are pickles over a pair of
pipes:

- server -> worker: `("job", fingerprint, module, spec, image)`; the worker answers
  `("need",)` when it does not hold that model yet, and the server sends `("model", fields)`
  (the network with its weights: a worker keeps the last `KEPT_MODELS` it was sent, so a
  class on one model sends it once);
- worker -> server: `("ready",)` once it has imported torch (`Pool.ready()`: until then a
  served app runs short jobs in its own process rather than wait seconds for the import),
  `("progress", fraction, text, preview)` at most `REPORTS_PER_S` a
  second, then `("done", result)` or `("error", exception, traceback text)`.

A stop (`Progress.stop()`, or a Streamlit rerun in the caller's thread) is a SIGUSR1 to
the worker: its job raises `Cancelled` within one batch. A worker that dies (the kernel
kills it for memory, a crash) ends only its own job, with a message, and the next job
starts a new one: the server and every other session go on.

Weights travel as plain pickled bytes, not shared memory: nothing depends on the size of
`/dev/shm` (64 MB in a default container), and no tensor another session reads is moved.
The price is one copy of a model per worker that ran a job on it.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

from .contract import Cancelled, CnnvizError, Progress

KEPT_MODELS = 2  # models a worker keeps between jobs (a lecture switches between two at most)
REPORTS_PER_S = 4  # progress messages a worker sends: each is a redraw in a browser, which shares the cores
STOP_GRACE_S = 60  # after a stop, how long a job may take to end its batch before its worker is killed
_SKIPPED = {"lock", "shared"}  # Model fields each process makes for itself


class WorkerDied(CnnvizError):
    """The worker process ended during a job (killed for memory, a crash)."""


def portable(model) -> dict:
    """The model's fields to rebuild it in another process: the network with its weights,
    no lock, nothing computed. Under the model's lock: no session's hooks are on it then."""
    with model.lock:
        fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in _SKIPPED}
        return pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)


class Worker:
    """One worker process and its pipes; one job at a time (the runner's slots see to it)."""

    def __init__(self, threads: int, nice: int):
        self.threads, self.nice = threads, nice
        self.proc: subprocess.Popen | None = None
        self.ready = False  # it said so: torch is imported, a job starts at once

    def start(self) -> None:
        self.ready = False
        to_worker_r, to_worker_w = os.pipe()
        to_server_r, to_server_w = os.pipe()
        for fd in (to_worker_w, to_server_w):
            _widen(fd)
        cmd = [sys.executable, "-m", "cnnviz.workers", str(to_worker_r), str(to_server_w),
               str(self.threads), str(self.nice)]
        # The worker imports the very cnnviz this process runs, wherever it was started.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:
            # A session of its own: on Linux with autogroups (the desktop default) a process's
            # nice value only ranks it within its session's group, so in the server's
            # session the worker would still take the server's whole share of the cores.
            self.proc = subprocess.Popen(cmd, pass_fds=(to_worker_r, to_server_w), stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        finally:
            os.close(to_worker_r)
            os.close(to_server_w)
        self.send_conn = Connection(to_worker_w, readable=False)
        self.recv_conn = Connection(to_server_r, writable=False)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.send_conn.close()  # the worker's read ends: it exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.recv_conn.close()
        self.proc = None

    def poll_ready(self) -> bool:
        """Whether the worker has said it is ready; never waits. Only for a worker no job
        is using (a job's thread reads the same pipe)."""
        if not self.ready and self.alive:
            with contextlib.suppress(EOFError, OSError):
                while self.recv_conn.poll(0):
                    if pickle.loads(self.recv_conn.recv_bytes())[0] == "ready":
                        self.ready = True
        return self.ready

    def _send(self, *msg) -> None:
        self.send_conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def _died(self) -> WorkerDied:
        code = self.proc.wait() if self.proc is not None else None
        self.close()
        why = " (out of memory?)" if code in (-signal.SIGKILL, 137) else ""
        return WorkerDied(f"The job stopped: its worker process ended{why} (exit status {code}). "
                          "Nothing else was affected; try again, or ask for a smaller job.")

    def run(self, model, image, spec, module: str, progress: Progress):
        if not self.alive:
            self.close()
            self.start()
        try:
            self._send("job", model.fingerprint, module, spec, image)
        except (BrokenPipeError, OSError):
            raise self._died() from None
        answered = False  # the worker's own "done" or "error" came
        try:
            while True:
                try:
                    ready = self.recv_conn.poll(0.25)
                    msg = pickle.loads(self.recv_conn.recv_bytes()) if ready else None
                except (EOFError, OSError):
                    raise self._died() from None
                if msg is None:
                    progress.check()  # a stop asked from the caller's side
                    continue
                kind, *rest = msg
                if kind == "ready":
                    self.ready = True
                elif kind == "need":
                    self._send("model", portable(model))
                elif kind == "progress":
                    progress(*rest)
                elif kind == "done":
                    answered = True
                    return rest[0]
                else:
                    answered = True
                    error, text = rest
                    if not isinstance(error, CnnvizError):
                        sys.stderr.write(f"cnnviz worker job failed:\n{text}")
                    raise error
        except BaseException:
            # A stop from the caller's side (a rerun raised in `progress`, `Cancelled` from
            # `check`): the worker ends within one batch; wait for its answer so the next
            # job finds the pipes clean. (A worker that answered, or died, needs neither.)
            if not answered and self.alive:
                with contextlib.suppress(OSError):
                    os.kill(self.proc.pid, signal.SIGUSR1)
                self._drain(time.monotonic())
            raise

    def _drain(self, since: float) -> None:
        """Read the stopped job's messages up to its last ("done" or "error")."""
        while self.alive and time.monotonic() - since < STOP_GRACE_S:
            try:
                if not self.recv_conn.poll(0.25):
                    continue
                kind, *_ = pickle.loads(self.recv_conn.recv_bytes())
            except (EOFError, OSError):
                break
            if kind in ("done", "error"):
                return
        self.close()  # no answer in time: a new worker for the next job


def _widen(pipe_fd: int) -> None:
    """Give a pipe the largest buffer this system allows an unprivileged process (Linux;
    1 MiB by default, against 64 KiB). A message is read in buffer-sized pieces, and the
    server's thread takes the interpreter lock back after each: a 1.6 MB recording came in
    25 pieces, each a wait behind every other session's script on a crowded server."""
    try:
        import fcntl  # POSIX; the buffer size is Linux's

        with open("/proc/sys/fs/pipe-max-size") as f:
            fcntl.fcntl(pipe_fd, fcntl.F_SETPIPE_SZ, int(f.read()))
    except (ImportError, AttributeError, OSError, ValueError):
        pass  # the default buffer: as correct, slower on a crowded server


class Pool:
    """`size` workers, started on first use; `run` takes a free one, waiting its turn when
    every one is busy (a stop request leaves the wait)."""

    def __init__(self, size: int, threads: int, nice: int):
        self.size = size
        self.workers = [Worker(threads, nice) for _ in range(size)]
        self._free = list(self.workers)
        self._cond = threading.Condition()

    def start(self) -> None:
        """Start the workers now (they import torch: seconds), so no first job waits for it."""
        with self._cond:
            for w in self.workers:
                if not w.alive:
                    w.start()

    def ready(self) -> bool:
        """Whether a worker has started (imported torch, seconds on a small machine) and
        takes jobs without that wait; never waits. A free worker found dead (killed for
        memory) is started again here, so later jobs find it ready."""
        with self._cond:
            for w in self._free:
                if not w.alive:
                    w.close()
                    w.start()
                w.poll_ready()
            return any(w.ready for w in self.workers)

    def run(self, model, image, spec, module: str, progress: Progress):
        with self._cond:
            while not self._free:
                progress.check()
                self._cond.wait(timeout=0.25)
            # One that has started, if any: another may still be importing torch.
            worker = next((w for w in reversed(self._free) if w.ready), self._free[-1])
            self._free.remove(worker)
        try:
            return worker.run(model, image, spec, module, progress)
        finally:
            with self._cond:
                self._free.append(worker)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            for w in self.workers:
                w.close()


# -- the worker's side -------------------------------------------------------------------

def _portable_error(e: BaseException) -> BaseException:
    """`e` if it survives a pickle round trip (the server re-raises it), else one that does."""
    with contextlib.suppress(Exception):
        pickle.loads(pickle.dumps(e))
        return e
    kind = Cancelled if isinstance(e, Cancelled) else CnnvizError if isinstance(e, CnnvizError) else RuntimeError
    return kind(str(e) if kind is not RuntimeError else f"{type(e).__name__}: {e}")


def _lower_priority(nice: int) -> None:
    """This process (and the threads it starts) `nice` steps down, and its autogroup too
    (the worker leads a session of its own), so a contended machine serves the sessions'
    clicks and the browsers first; an idle one runs the job at full speed."""
    if not nice:
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/autogroup", "w") as f:  # Linux with autogroups; raising it needs no privilege
            f.write(str(nice))
    with contextlib.suppress(OSError):
        os.nice(nice)


def _watch_parent() -> None:
    """Exit when the server is gone (killed mid-job, no pipe end left to read): a job
    must not run on, orphaned, for minutes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="cnnviz-worker-watch", daemon=True).start()


def serve(recv_fd: int, send_fd: int, threads: int, nice: int) -> None:
    """The worker's loop: one job after another until the server closes its pipe."""
    _lower_priority(nice)  # before torch starts its threads: they inherit it
    import torch
    import torchvision  # noqa: F401  (every model's pickle needs it: imported before "ready")

    from .model import Model

    torch.set_num_threads(threads)
    _watch_parent()
    recv_conn, send_conn = Connection(recv_fd, writable=False), Connection(send_fd, readable=False)
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    models: collections.OrderedDict[str, Model] = collections.OrderedDict()

    def send(*msg) -> None:
        send_conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def receive():
        return pickle.loads(recv_conn.recv_bytes())

    send("ready")
    while True:
        try:
            kind, fingerprint, module, spec, image = receive()
        except EOFError:
            return  # the server closed its end, or died
        stop.clear()
        try:
            if fingerprint not in models:
                send("need")
                _, data = receive()
                model = Model(**pickle.loads(data))
                model.shared["fingerprint"] = fingerprint
                models[fingerprint] = model
                while len(models) > KEPT_MODELS:
                    models.popitem(last=False)
            models.move_to_end(fingerprint)
            model = models[fingerprint]
            last = [0.0]

            def report(fraction, text, preview, _last=last) -> None:
                now = time.monotonic()
                if fraction >= 1 or now - _last[0] >= 1 / REPORTS_PER_S:
                    _last[0] = now
                    send("progress", fraction, text, preview)

            progress = Progress(report, stop)  # SIGUSR1 is the caller's stop()
            with model.lock:
                t = time.perf_counter()
                result = importlib.import_module(module).run(model, image, spec, progress=progress)
                result.seconds = time.perf_counter() - t  # compute only, not the queue or the pipes
            send("done", result)
        except BaseException as e:  # noqa: BLE001 (every failure goes back to the caller)
            if isinstance(e, (BrokenPipeError, EOFError)):
                return
            send("error", _portable_error(e), traceback.format_exc())


if __name__ == "__main__":
    serve(*(int(a) for a in sys.argv[1:5]))
