"""deploy/: Streamlit replicas behind HAProxy, sticky sessions, start/stop by PID."""
import collections
import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest
from PIL import Image, ImageOps

from cnnviz.images import load_image
from cnnviz.predict import predict

from .browser import browser, expect, image_input, sidebar_says  # noqa: F401 (fixtures)
from .conftest import ROOT, free_port

CLUSTER = [sys.executable, str(ROOT / "deploy" / "cluster.py")]
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
HEADER = "x-cnnviz-replica"


def need_haproxy():
    # On CI a missing haproxy fails (.ci/run installs it) instead of skipping.
    if not HAPROXY and not os.environ.get("CI"):
        pytest.skip("Debian's haproxy is not installed (apt-get install -y haproxy)")


def load_cluster_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster", ROOT / "deploy" / "cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_config_is_valid_and_sticky(tmp_path):
    need_haproxy()
    cluster = load_cluster_module()
    cfg = cluster.render_config("127.0.0.1", 8500, 9500, [("r1", "127.0.0.1", 8501), ("r2", "127.0.0.1", 8502)])
    (tmp_path / "haproxy.cfg").write_text(cfg)
    check = subprocess.run([HAPROXY, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    for line in ("cookie CNNVIZ_REPLICA insert indirect nocache httponly", "timeout tunnel 1h",
                 "option httpchk GET /_stcore/health", "http-check expect string ok",
                 "http-response set-header X-Cnnviz-Replica %s",
                 "server r1 127.0.0.1:8501 check cookie r1", "server r2 127.0.0.1:8502 check cookie r2"):
        assert line in cfg


def test_stop_never_signals_a_recycled_pid(tmp_path):
    """A PID file whose process has gone and whose PID now belongs to someone else (another
    start time) is not signalled: here the PID of this very test process."""
    cluster = load_cluster_module()
    (tmp_path / "r1.pid").write_text(json.dumps({"pid": os.getpid(), "start": "1"}))
    out = subprocess.run(CLUSTER + ["stop", "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "nothing running" in out.stdout
    assert cluster.pids(tmp_path) == {} and not list(tmp_path.glob("*.pid"))


@pytest.fixture
def cluster(tmp_path):
    need_haproxy()
    port, stats = free_port(), free_port()
    ports = [free_port() for _ in range(2)]
    run_dir = tmp_path / "run"
    start = subprocess.run(CLUSTER + ["start", "--replicas", "2", "--port", str(port), "--stats-port", str(stats),
                                      "--replica-ports", ",".join(map(str, ports)), "--run-dir", str(run_dir)],
                           capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr + "".join(
        f.read_text()[-2000:] for f in run_dir.glob("*.log"))
    try:
        yield {"url": f"http://127.0.0.1:{port}", "run_dir": run_dir, "ports": ports}
    finally:
        subprocess.run(CLUSTER + ["stop", "--run-dir", str(run_dir)], timeout=60)


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.browser
def test_sessions_stick_to_one_replica_through_the_proxy(browser, cluster, samples, bundled, tmp_path):
    url, run_dir = cluster["url"], cluster["run_dir"]
    assert urllib.request.urlopen(f"{url}/_proxy/health", timeout=5).status == 200
    pids = {f.stem: json.loads(f.read_text())["pid"] for f in run_dir.glob("*.pid")}
    assert set(pids) == {"haproxy", "r1", "r2"} and all(_alive(p) for p in pids.values())
    # Every replica has the same cookie secret, from the environment, never on the command line.
    for name in ("r1", "r2"):
        env = open(f"/proc/{pids[name]}/environ", "rb").read().split(b"\0")
        assert b"STREAMLIT_SERVER_COOKIE_SECRET=" + (run_dir / "cookie_secret").read_bytes().strip() in env
        assert b"cookieSecret" not in open(f"/proc/{pids[name]}/cmdline", "rb").read()

    sessions = []
    for i, (name, fn) in enumerate((("coffee", ImageOps.mirror), ("cat", ImageOps.flip),
                                    ("rocket", ImageOps.mirror), ("horse", lambda im: im))):
        path = tmp_path / f"session{i}-{name}.png"
        fn(Image.open(samples[name]).convert("RGB")).save(path)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})  # its own cookies
        seen = []
        ctx.on("response", lambda r, seen=seen: seen.append((r.url, r.headers.get(HEADER)))
               if r.url.startswith(url) else None)
        page = ctx.new_page()
        page.goto(url)  # one after the other: round-robin deals new sessions in turn
        expect(sidebar_says(page)).to_be_visible(timeout=120_000)
        sessions.append({"ctx": ctx, "page": page, "path": path, "seen": seen,
                         "label": predict(bundled, load_image(path), 1)[0].label})
    for s in sessions:  # all uploading at once
        image_input(s["page"]).set_input_files(str(s["path"]))
    for s in sessions:
        expect(sidebar_says(s["page"])).to_have_text(s["label"], timeout=120_000)
        expect(s["page"].get_by_text(f"Current image: {s['path'].name}")).to_be_visible()
        expect(s["page"].get_by_test_id("stException")).to_have_count(0)

    served = []
    for s in sessions:
        replicas = {h for _, h in s["seen"]}
        assert len(replicas) == 1 and None not in replicas, s["seen"]  # every response, one replica
        assert any("/_stcore/upload_file/" in u for u, _ in s["seen"])  # the upload went there too
        served.append(replicas.pop())
        s["ctx"].close()
    # Four new sessions one after the other over two healthy replicas: round-robin, two each.
    assert collections.Counter(served) == {"r1": 2, "r2": 2}, served

    stop = subprocess.run(CLUSTER + ["stop", "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert not any(_alive(p) for p in pids.values()), {n: p for n, p in pids.items() if _alive(p)}
    assert not list(run_dir.glob("*.pid"))
    status = subprocess.run(CLUSTER + ["status", "--run-dir", str(run_dir)], capture_output=True, text=True)
    assert status.returncode == 3 and "nothing running" in status.stdout
