"""Server CPU per session (issue #14): a real `streamlit run` server on 127.0.0.1, real
browser sessions (Playwright driving Debian's Chromium), one after another.

Each session opens Home (the default sample's top-5), uploads an image of its own (a
different one per session, so the prediction is never a cache hit) and waits for its
top-5. The server's own CPU time (utime + stime of the server process, from
/proc/PID/stat) is read before and after each session, and at the page-loaded mark, so
the browser's CPU (on the same cores) is not counted. One warm-up session first (the
first render imports torch and loads the model), not counted.

With `--profile DIR`, py-spy samples the server during the counted sessions and writes
DIR/profile.svg (flame graph) and DIR/profile.txt (collapsed stacks), and the script
prints the functions with the most samples (own time and total time).

Bounded: at most `--sessions` (<= 50) sessions, every wait has a timeout, traffic only
to 127.0.0.1; the server is started and killed (by its process group) here.

    python bench/bench_server_cpu.py [--sessions 8] [--profile /tmp/prof]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from tests.idle import wait_idle  # noqa: E402  (the browser tests' own wait)

from common import report, scratch  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


class Server:
    """`streamlit run app.py` on 127.0.0.1, in its own process group (killed by it)."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port),
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).read() == b"ok":
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("streamlit did not start (see the log)")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def upload_image(k: int, folder: Path) -> Path:
    """A photo-sized JPEG of its own per session (a sample, flipped and tinted by k)."""
    from PIL import Image, ImageOps

    im = Image.open(ROOT / "assets" / "samples" / "coffee.jpg").convert("RGB")
    if k % 2:
        im = ImageOps.mirror(im)
    im = Image.blend(im, Image.new("RGB", im.size, ((37 * k) % 256, (91 * k) % 256, (53 * k) % 256)), 0.05 + 0.01 * k)
    im = im.resize((1200, 800))
    path = folder / f"upload_{k}.jpg"
    im.save(path, "JPEG", quality=90)
    return path


def session(browser, server: Server, image: Path, timeout_s: float, ctx=None) -> dict:
    """One browser session: open Home, upload `image`, wait for its top-5. Server CPU
    seconds for the page load and for the upload. `ctx`: a browser context to open the
    page in (its HTTP cache is warm: a returning student); None: a fresh one (a new
    student's browser, which fetches Streamlit's ~8 MB of frontend files)."""
    from playwright.sync_api import expect

    own = ctx is None
    ctx = ctx or browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    t0, c0 = time.perf_counter(), cpu_seconds(server.pid)
    try:
        page.goto(server.url)
        metric = page.get_by_test_id("stSidebar").get_by_test_id("stMetricValue")
        expect(metric).to_be_visible(timeout=timeout_s * 1000)
        expect(page.locator(".cnnviz-topk-row")).to_have_count(5, timeout=timeout_s * 1000)  # Home's top-5
        wait_idle(page, timeout_s)
        t1, c1 = time.perf_counter(), cpu_seconds(server.pid)
        page.locator(".st-key-upload").get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(image))
        expect(page.get_by_text(f"Current image: {image.name}")).to_be_visible(timeout=timeout_s * 1000)
        wait_idle(page, timeout_s)
        t2, c2 = time.perf_counter(), cpu_seconds(server.pid)
        errors = page.get_by_test_id("stException").count() + page.get_by_text("Something went wrong").count()
    finally:
        ctx.close() if own else page.close()
    return {"load_s": t1 - t0, "upload_s": t2 - t1, "cpu_load": c1 - c0, "cpu_upload": c2 - c1,
            "cpu_session": c2 - c0, "errors": errors}


# ---------------------------------------------------------------- py-spy

def start_profiler(pid: int, folder: Path) -> list[subprocess.Popen]:
    """py-spy on the server: a raw (collapsed stacks) record and a flame graph."""
    spy = shutil.which("py-spy")
    if not spy:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    folder.mkdir(parents=True, exist_ok=True)
    procs = []
    for fmt, name in (("raw", "profile.txt"), ("flamegraph", "profile.svg")):
        procs.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--format", fmt, "--rate", "200",
                                       "--output", str(folder / name), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
    time.sleep(1.5)  # attached
    return procs


def stop_profiler(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def top_functions(collapsed: Path, n: int = 25) -> dict:
    """From py-spy's collapsed stacks: the frames with the most samples, as own time (the
    frame on top) and total time (anywhere in the stack), in percent of busy samples.
    Idle samples (threads waiting in select/poll/wait/acquire) are left out."""
    own, total = Counter(), Counter()
    busy = 0
    idle = ("select", "poll", "epoll", "wait (", "acquire", "_worker", "sleep", "accept", "recv_into")
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        if any(w in leaf for w in idle):
            continue
        c = int(count)
        busy += c
        own[leaf] += c
        for f in set(frames[1:]):  # the thread's name is frame 0
            total[f] += c

    def short(f: str) -> str:
        return f.replace(str(ROOT) + "/", "").replace(sys.prefix, "<py>")

    pct = lambda c: round(100 * c / max(busy, 1), 1)  # noqa: E731
    return {"busy_samples": busy,
            "own": [[short(f), pct(c)] for f, c in own.most_common(n)],
            "total": [[short(f), pct(c)] for f, c in total.most_common(n)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=8, help="counted sessions, one after another (<= 50)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds any one wait may take")
    ap.add_argument("--profile", type=Path, help="folder for py-spy's profile.svg / profile.txt")
    ap.add_argument("--warm-cache", action="store_true",
                    help="every session in one browser context (its HTTP cache holds the frontend files)")
    args = ap.parse_args()
    n = max(1, min(args.sessions, 50))
    if not CHROMIUM:
        raise SystemExit("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    tmp = scratch("cnnviz-bench-cpu-")
    images = [upload_image(k, tmp) for k in range(n + 1)]
    server = Server(tmp / "streamlit.log")
    rows, spy = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000}) if args.warm_cache else None
            warm = session(browser, server, images[0], max(args.timeout, 180), ctx)
            if args.profile:
                spy = start_profiler(server.pid, args.profile)
            c0 = cpu_seconds(server.pid)
            sessions = [session(browser, server, images[k + 1], args.timeout, ctx) for k in range(n)]
            total = cpu_seconds(server.pid) - c0
            if spy:
                stop_profiler(spy)
            browser.close()
    finally:
        stop_profiler(spy)
        server.stop()
    load = os.getloadavg()
    med = lambda k: statistics.median(s[k] for s in sessions)  # noqa: E731
    for k, label in (("cpu_session", "server CPU per session (page load + one upload)"),
                     ("cpu_load", "  of which the page load"), ("cpu_upload", "  of which the upload")):
        rows.append({"case": label, "median_s": med(k), "max_s": max(s[k] for s in sessions),
                     "goal": "<= 0.3 s" if k == "cpu_session" else "report"})
    rows.append({"case": "wall: page load to settled", "median_s": med("load_s"), "max_s": max(s["load_s"] for s in sessions),
                 "goal": "report"})
    rows.append({"case": "wall: upload to settled", "median_s": med("upload_s"),
                 "max_s": max(s["upload_s"] for s in sessions), "goal": "report"})
    extra = {"sessions": n, "browser_cache": "warm" if args.warm_cache else "cold (a new context per session)", "server_cpu_total_s": total, "server_cpu_per_session_mean_s": total / n,
             "errors": sum(s["errors"] for s in sessions), "warmup": warm,
             "loadavg_after": [round(x, 2) for x in load], "per_session": sessions}
    if args.profile and (args.profile / "profile.txt").exists():
        extra["profile"] = top_functions(args.profile / "profile.txt")
    report("server_cpu_warm" if args.warm_cache else "server_cpu", rows, extra)


if __name__ == "__main__":
    main()
