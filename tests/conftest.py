import atexit
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# An empty torch hub cache for the whole run: no test sees weights a developer
# downloaded, and nothing is fetched (see no_network below).
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="cnnviz-torch-home-")
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], True)
# AppTest runs app.py in this process, where tests spy on the analyses: its heavy jobs stay
# on threads here. The worker processes a served app uses are tested in test_workers.py and
# by every browser test (tests/browser.py's server drops this).
os.environ["CNNVIZ_JOB_PROCESSES"] = "0"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never download: any URL that is not loopback fails as if offline."""
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        host = urllib.parse.urlparse(getattr(url, "full_url", url)).hostname
        if host not in ("127.0.0.1", "localhost"):
            raise urllib.error.URLError(f"network disabled in tests ({host})")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture(autouse=True)
def process_runner():
    """The process's job runner as each test found it: the CLI's main() replaces it and
    app.py sets its short jobs' threads (both right for a real process), which must not
    leak into later tests (thread counts change float rounding)."""
    from cnnviz import jobs

    runner, short = jobs.RUNNER, jobs.RUNNER.short_threads
    yield
    jobs.RUNNER = runner
    runner.short_threads = short


@pytest.fixture(scope="session")
def bundled():
    from cnnviz import models

    return models.load(models.BUNDLED_ID)


@pytest.fixture(scope="session")
def cat(samples):
    """The cat sample, decoded once (treat as read-only)."""
    from cnnviz.images import load_image

    return load_image(samples["cat"])


@pytest.fixture(scope="session")
def samples():
    from cnnviz.samples import sample_paths

    return sample_paths()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty feature-visualization cache (disk and memory) for one test; yields its folder."""
    from cnnviz import featurevis

    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path / "cache"))
    featurevis.MEMORY.clear()
    yield tmp_path / "cache" / "featurevis"
    featurevis.MEMORY.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"
# pytest's settings (test paths, markers, warning filters) are in pyproject.toml.
