"""Server CPU per interaction (issue #14): what the profile of a real server showed was
not the model. The figures come from bench/bench_server_cpu.py; these tests pin the fixes."""
import io
import threading
import tomllib
from dataclasses import dataclass

import torch
from PIL import Image

from cnnviz import jobs
from cnnviz.contract import Result, Spec

from .apptest import open_page
from .conftest import ROOT


@dataclass(frozen=True)
class ThreadsSpec(Spec):
    """A one-pass job that reports the torch threads it ran with (this module is its analysis)."""


@dataclass
class Threads(Result):
    n: int


def run(model, image, spec, *, progress=None):
    return Threads(torch.get_num_threads())


class Bare:
    id = "bare"
    input_size = (8, 8)

    def __init__(self):
        self.lock = threading.RLock()


def test_short_jobs_run_on_the_runners_short_threads_and_restore_them():
    before = torch.get_num_threads()
    assert jobs.Runner(short_threads=1).run(Bare(), None, ThreadsSpec()).n == 1
    assert torch.get_num_threads() == before
    assert jobs.Runner().run(Bare(), None, ThreadsSpec()).n == before  # the CLI keeps every core


def test_the_server_gives_short_jobs_one_thread_and_runs_no_full_gc_per_rerun():
    """An OpenMP team per script thread spun on the cores other sessions and the browsers
    needed (0.88 s of server CPU per upload on 2 cores, 0.18 s on one thread), and
    Streamlit's gc.collect(2) after every run was the largest item of the profile."""
    old = jobs.RUNNER.short_threads
    try:
        open_page("home.py", 180)
        assert jobs.RUNNER.short_threads == 1
    finally:
        jobs.RUNNER.short_threads = old
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


def test_home_encodes_its_picture_once_per_image(monkeypatch):
    """st.image of the PIL image converted and re-encoded it on every rerun of every session."""
    at = open_page("home.py", 180)
    saves = []
    real = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, *a, **k: (saves.append(self.size), real(self, *a, **k))[1])
    at.run()  # the same image again
    assert not at.exception and saves == []
    big = Image.effect_noise((3000, 2000), 40).convert("RGB")

    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=80)
    saves.clear()
    at.sidebar.file_uploader(key="upload").set_value(("big.jpg", buf.getvalue(), "image/jpeg")).run()
    assert not at.exception
    shown = saves  # the sample strip was made by the first run and is cached
    assert shown and max(max(s) for s in shown) <= 1460  # reduced for the screen, once
    saves.clear()
    at.run()
    assert saves == []
