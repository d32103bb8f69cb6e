"""Downloads that survive reruns and restarts (issue #14): one per file, in the background,
resumed with a Range request, verified against the hash in the file name, renamed into place
only when whole. A fake server on 127.0.0.1 serves the bytes slowly; nothing leaves the host."""
import hashlib
import http.server
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest
import torch
import torchvision

from cnnviz import downloads, models
from cnnviz.contract import Progress
from cnnviz.models import ModelError, ModelUnavailable

from .conftest import ROOT, free_port

MiB = 2 ** 20


class FakeServer:
    """Serves `files` (name -> bytes) on 127.0.0.1, `chunk` bytes every `delay` s; honours
    `Range: bytes=N-` when `ranges`; closes the first response after `drop_after` bytes.
    `log`: [name, Range header, bytes sent] per request."""

    def __init__(self, files: dict, *, delay: float = 0.0, chunk: int = 64 * 1024, ranges: bool = True,
                 drop_after: int | None = None):
        self.files, self.delay, self.chunk, self.ranges, self.drop_after = files, delay, chunk, ranges, drop_after
        self.log: list[list] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                entry = [name, rng, 0]
                server.log.append(entry)
                start = 0
                if rng and server.ranges:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                for i in range(start, len(data), server.chunk):
                    if server.drop_after is not None and entry[2] >= server.drop_after:
                        server.drop_after = None
                        return  # the connection closes mid-body
                    try:
                        self.wfile.write(data[i:i + server.chunk])
                        self.wfile.flush()
                    except OSError:  # the client went away (killed)
                        return
                    entry[2] += len(data[i:i + server.chunk])
                    time.sleep(server.delay)

        class Quiet(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self._srv = Quiet(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._srv.server_address[1]}"
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self):
        self._srv.shutdown()
        self._srv.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub for this test; yields its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _blob(size: int, seed: int = 0) -> tuple[str, bytes]:
    """Bytes and a torchvision-style file name carrying their hash prefix."""
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    return f"w-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


@pytest.fixture
def served():
    servers = []

    def start(files, **kw):
        servers.append(FakeServer(files, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _weights(server, name):
    return types.SimpleNamespace(url=server.url(name))


class Rerun(BaseException):
    """What Streamlit raises in the script thread when the user clicks during a run."""


def test_a_rerun_during_the_download_does_not_restart_it(hub, served):
    name, data = _blob(2 * MiB)
    srv = served({name: data}, delay=0.02)  # ~3 MB/s: the download takes ~0.7 s
    w = _weights(srv, name)

    def clicked(*_):
        raise Rerun()

    with pytest.raises(Rerun):  # the user picked a sample: this wait ends ...
        models.download_weights(w, Progress(clicked))
    path = models.download_weights(w)  # ... and the next run picks the same download up
    assert path.read_bytes() == data
    assert [(n, r) for n, r, _ in srv.log] == [(name, None)]  # one request: never restarted
    assert not downloads.partial_file(path).exists()


def test_a_second_request_joins_the_running_download(hub, served):
    name, data = _blob(1 * MiB)
    srv = served({name: data}, delay=0.02)
    w, got = _weights(srv, name), []
    threads = [threading.Thread(target=lambda: got.append(models.download_weights(w))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 3 and got[0].read_bytes() == data and len(srv.log) == 1


def test_a_broken_download_keeps_its_part_and_resumes_with_a_range_request(hub, served):
    name, data = _blob(3 * MiB)
    srv = served({name: data}, drop_after=int(1.5 * MiB))
    w = _weights(srv, name)
    with pytest.raises(ModelUnavailable) as e:
        models.download_weights(w)
    assert "broke off" in str(e.value) and "MB that arrived are kept" in str(e.value)
    assert not (hub / name).exists()  # no partial file is ever at the model's path
    kept = downloads.partial_file(hub / name).stat().st_size
    assert kept == int(1.5 * MiB)
    seen = []
    path = models.download_weights(w, Progress(lambda f, text, _: seen.append(text)))
    assert path.read_bytes() == data
    assert srv.log[1][1] == f"bytes={kept}-" and srv.log[1][2] == len(data) - kept  # only the rest
    assert any("resumed at" in t for t in seen)


def test_a_server_that_cannot_resume_starts_again_and_says_so(hub, served):
    name, data = _blob(2 * MiB)
    hub.mkdir(parents=True)
    downloads.partial_file(hub / name).write_bytes(data[:MiB])
    srv = served({name: data}, ranges=False)
    seen = []
    path = models.download_weights(_weights(srv, name), Progress(lambda f, text, _: seen.append(text)))
    assert path.read_bytes() == data and srv.log[0][2] == len(data)
    assert any("cannot resume downloads, so this one started again" in t for t in seen)


def test_a_kept_part_that_does_not_fit_is_not_kept(hub, served):
    name, data = _blob(2 * MiB)
    hub.mkdir(parents=True)
    srv = served({name: data})
    downloads.partial_file(hub / name).write_bytes(b"\0" * MiB)  # wrong bytes: the hash says so
    with pytest.raises(ModelError, match="corrupt"):
        models.download_weights(_weights(srv, name))
    assert not (hub / name).exists() and not downloads.partial_file(hub / name).exists()
    downloads.partial_file(hub / name).write_bytes(data + b"more")  # longer than the file: 416
    assert models.download_weights(_weights(srv, name)).read_bytes() == data
    assert [r for _, r, _ in srv.log] == [f"bytes={MiB}-", f"bytes={len(data) + 4}-", None]  # 416: from 0


def test_offline_with_a_kept_part_says_it_resumes(hub):
    name, data = _blob(2 * MiB)
    hub.mkdir(parents=True)
    downloads.partial_file(hub / name).write_bytes(data[:MiB + 1])
    w = types.SimpleNamespace(url=f"http://127.0.0.1:{free_port()}/{name}")  # nobody listens
    with pytest.raises(ModelUnavailable) as e:
        models.download_weights(w)
    msg = str(e.value)
    assert "not in the local cache" in msg and "kept, and the next try resumes" in msg
    assert "efficientnet_lite0 works offline" in msg


# ---------------------------------------------------------------- killed mid-download, restarted

LOADER = textwrap.dedent("""
    import os, torchvision
    from cnnviz import models
    torchvision.models.get_model_weights("squeezenet1_1").DEFAULT.value.url = os.environ["WEIGHTS_URL"]
    m = models.load("torchvision:squeezenet1_1")
    print("loaded", m.fingerprint, flush=True)
""")


def _state_dict_file() -> tuple[str, bytes, dict]:
    sd = models.load("torchvision:squeezenet1_1@random").net.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    data = buf.getvalue()
    return f"squeezenet1_1-{hashlib.sha256(data).hexdigest()[:8]}.pth", data, sd


def _loader(env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOADER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_killed_mid_download_then_restarted_loads_only_a_whole_verified_file(hub, served, monkeypatch):
    name, data, sd = _state_dict_file()
    srv = served({name: data}, delay=0.05)  # ~1.3 MB/s: the ~5 MB file takes ~4 s
    env = {**os.environ, "TORCH_HOME": str(hub.parent.parent), "WEIGHTS_URL": srv.url(name)}
    partial = downloads.partial_file(hub / name)
    first = _loader(env)
    deadline = time.time() + 120
    while not (partial.exists() and partial.stat().st_size > MiB // 2):
        assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    # Killed: the part is kept under its hidden name, nothing is at the model's path.
    assert partial.exists() and not (hub / name).exists()
    weights = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    monkeypatch.setattr(weights.value, "url", srv.url(name))
    assert not models.is_available("torchvision:squeezenet1_1")
    kept = partial.stat().st_size
    # Restarted: it resumes from what was kept, verifies, renames; the model loads.
    second = _loader(env)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert out.startswith("loaded")
    assert srv.log[-1][1] == f"bytes={kept}-" and srv.log[-1][2] == len(data) - kept
    assert (hub / name).read_bytes() == data and not partial.exists()
    m = models.load("torchvision:squeezenet1_1")
    assert all(torch.equal(v, m.net.state_dict()[k]) for k, v in sd.items())


def test_two_processes_download_one_file_once(hub, served):
    name, data, _ = _state_dict_file()
    srv = served({name: data}, delay=0.01)
    env = {**os.environ, "TORCH_HOME": str(hub.parent.parent), "WEIGHTS_URL": srv.url(name)}
    procs = [_loader(env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert outs[0][0] == outs[1][0]  # the same weights
    assert len(srv.log) == 1 and srv.log[0][2] == len(data)  # the second process waited for the first
