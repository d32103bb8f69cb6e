"""Load: N real browser sessions against one cnnviz server (or the deploy/ cluster).

    python bench/bench_load.py --sessions 30
    python bench/bench_load.py --sessions 8 --heavy 2      # and --sessions 8 for the ratio
    python bench/bench_load.py --proxy --replicas 2 --sessions 8

One Debian Chromium (Playwright), one browser context per session, all traffic to
127.0.0.1. The script starts the server itself (`streamlit run`, killed by its PID's process
group) or, with --proxy, `deploy/cluster.py start` (stopped with `cluster.py stop`).
Each of the --sessions sessions opens Home, uploads its OWN image (a bundled sample, cropped,
flipped or colour-shifted, under a unique file name) and waits for its top-5 (the sidebar's
prediction equal to the one this script computed for that image, and "Current image: <its
name>"), then switches to Activations and back to Home. The --heavy extra sessions open a
heavy job by URL (Score-CAM on Saliency, 100-step PGD on Adversarial, a 512-step feature
visualization on Filters, in turn) and wait for it. Sessions start together (a gate), every
wait has a timeout, and a global --deadline bounds the run.

Prints p50/p95/max of upload->top-5 (and of upload->the server's "script finished" message,
and of the page's rerun request->that message: the server's own part), page load and page switch->settled, failures, cross-session mixing
(a session that ever shows another file name, or a prediction other than its own), the
server's peak RSS (VmHWM, summed over replicas and their heavy-job worker processes) and CPU
seconds (utime+stime of the Streamlit processes, per session for page load plus upload; the
workers' apart), and with --proxy the replica (X-Cnnviz-Replica) of each session
and whether it ever changed. `upload_phase` gives every process's CPU seconds while the
sessions uploaded (server, Chromium's renderers, its other processes, Playwright's driver,
this script), against the wall time: which of them a crowded upload waits for.
Ends with one JSON line (bench/common.py `report`).
The browsers share the machine's cores with the server. Chromium is started without the
right to raise its priority (run as root, it renices its browser and GPU processes to -8,
above the server); `--browser-nice N` also lowers theirs. On a shared machine the figures
are indicative only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import report, scratch  # noqa: E402
from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402
from tests.idle import wait_idle_async as wait_idle  # noqa: E402  (the browser tests' own rule)

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
REPLICA_HEADER = "x-cnnviz-replica"
HEAVY = (("scorecam", "/saliency?method=scorecam&sample={s}"),
         ("pgd", "/adversarial?attack=pgd&eps=8&steps=100&sample={s}"),
         ("featurevis", "/filters?view=unit&steps=512&sample={s}"))
# The sidebar shows this session's own result: its prediction and its file name.
SHOWS_JS = """([label, name]) => {
  const sb = document.querySelector('[data-testid="stSidebar"]');
  const m = sb && sb.querySelector('[data-testid="stMetricValue"]');
  return !!m && m.innerText.trim() === label && sb.innerText.includes('Current image: ' + name);
}"""
SEEN_JS = """() => {
  const sb = document.querySelector('[data-testid="stSidebar"]');
  const m = sb && sb.querySelector('[data-testid="stMetricValue"]');
  const c = sb && [...sb.querySelectorAll('[data-testid="stCaptionContainer"]')]
      .map(e => e.innerText).find(t => t.startsWith('Current image:'));
  return {label: m ? m.innerText.trim() : null, caption: c || null};
}"""

# Resolves when the page's main thread has nothing left to do (rendering included).
IDLE_JS = "ms => new Promise(r => requestIdleCallback(() => r(true), {timeout: ms}))"
DIAG_JS = """() => ({state: document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState,
  path: location.pathname,
  headings: [...document.querySelectorAll('h1')].map(e => e.innerText).slice(0, 3),
  alerts: [...document.querySelectorAll('[data-testid="stAlert"],[data-testid="stException"]')]
      .map(e => e.innerText.slice(0, 200)).slice(0, 3)})"""

# ---------------------------------------------------------------- images

def make_images(n: int, folder: Path) -> list[tuple[Path, str]]:
    """n different images with unique names, and the top-1 label of each (bundled model)."""
    from PIL import Image, ImageOps

    from cnnviz import models
    from cnnviz.images import load_image
    from cnnviz.predict import predict
    from cnnviz.samples import sample_paths

    model = models.load(models.BUNDLED_ID)
    samples = sorted(sample_paths().items())
    variants = (
        ("orig", lambda im: im),
        ("flip", ImageOps.mirror),
        ("crop", lambda im: im.crop((im.width // 8, im.height // 8, im.width * 7 // 8, im.height * 7 // 8))),
        ("warm", lambda im: Image.merge("RGB", [b.point(lambda v, k=k: min(255, int(v * k)))
                                                 for b, k in zip(im.split(), (1.15, 1.0, 0.85))])),
        ("vflip", ImageOps.flip),
        ("gray", lambda im: ImageOps.grayscale(im).convert("RGB")),
    )
    out = []
    for i in range(n):
        name, path = samples[i % len(samples)]
        vname, fn = variants[(i // len(samples)) % len(variants)]
        im = fn(Image.open(path).convert("RGB"))
        if i >= len(samples) * len(variants):  # more sessions than variants: a small rotation too
            im = im.rotate(3 * (i // (len(samples) * len(variants))), expand=False)
        p = folder / f"s{i:03d}-{name}-{vname}.png"
        im.save(p)
        out.append((p, predict(model, load_image(p), 1)[0].label))
    return out


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


class OneServer:
    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / "streamlit.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port),
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pids = [self.proc.pid]
        wait_health(f"{self.url}/_stcore/health", 90)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group, never by name
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


class Cluster:
    def __init__(self, log_dir: Path, replicas: int):
        self.run_dir = log_dir / "cluster"
        self.port = free_port()
        ports = ",".join(str(free_port()) for _ in range(replicas))
        self.cmd = [sys.executable, str(ROOT / "deploy" / "cluster.py")]
        subprocess.run(self.cmd + ["start", "--replicas", str(replicas), "--port", str(self.port),
                                   "--replica-ports", ports, "--stats-port", str(free_port()),
                                   "--run-dir", str(self.run_dir)], check=True, timeout=150)
        self.url = f"http://127.0.0.1:{self.port}"
        self.pids = [json.loads(f.read_text())["pid"] for f in sorted(self.run_dir.glob("r*.pid"))]

    def stop(self):
        subprocess.run(self.cmd + ["stop", "--run-dir", str(self.run_dir)], timeout=60)


def proc_field(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pids: list[int]) -> list[int]:
    """The servers' child processes (cnnviz.workers: the heavy jobs' processes)."""
    out = []
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            out += [int(c) for c in task.read_text().split()]
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def cpu_by_process(server_pids: list[int]) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process on the machine, with its kind: the server (with
    its workers), Chromium's renderers, Chromium's other processes (browser, GPU, network),
    Playwright's driver, this script, and the rest. The browsers share the 2 cores with
    the server; `cpu_split` of two of these says which of them a crowded upload waits for."""
    own = set(server_pids) | set(children(server_pids))
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(d.name)
        kind = ("server" if pid in own else "bench" if pid == os.getpid()
                else "renderers" if "chromium" in cmd and "--type=renderer" in cmd
                else "chromium_other" if "chromium" in cmd
                else "driver" if "playwright" in cmd and "node" in cmd else "other")
        out[pid] = (kind, (int(f[11]) + int(f[12])) / tick)
    return out


def cpu_split(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds by kind between two `cpu_by_process` (a process gone in between is missed)."""
    out = dict.fromkeys(("server", "renderers", "chromium_other", "driver", "bench", "other"), 0.0)
    for pid, (kind, s) in after.items():
        out[kind] += s - before.get(pid, (kind, 0.0))[1]
    return {k: round(v, 2) for k, v in out.items()}


def message_type(frame, proto) -> str | None:
    """The type of a Streamlit websocket frame parsed as `proto` (ForwardMsg from the server,
    BackMsg from the browser): "script_finished" says the server's part of a run is over,
    "rerun_script" that the page asked for one. None: not such a message."""
    if not isinstance(frame, bytes):
        return None
    msg = proto()
    try:
        msg.ParseFromString(frame)
    except Exception:  # not a message of this kind
        return None
    return msg.WhichOneof("type")


# ---------------------------------------------------------------- sessions

class Gate:
    """A barrier that failed sessions pass too (they arrive at once), with a deadline."""

    def __init__(self, n: int):
        self.n, self.arrived, self.event = n, set(), asyncio.Event()

    def arrive(self, who: str):
        self.arrived.add(who)
        if len(self.arrived) >= self.n:
            self.event.set()

    async def wait(self, who: str, timeout: float):
        self.arrive(who)
        try:
            await asyncio.wait_for(self.event.wait(), max(0.1, timeout))
        except asyncio.TimeoutError:
            pass


class Run:
    def __init__(self, args, url: str, images, heavy_samples):
        self.args, self.url, self.images, self.heavy_samples = args, url, images, heavy_samples
        self.t_end = time.monotonic() + args.deadline
        self.start = Gate(args.sessions + args.heavy)
        self.loaded = Gate(args.sessions)
        self.uploaded = Gate(args.sessions)
        self.upload_s, self.load_s, self.switch_s, self.heavy_s = [], [], [], []
        self.served_s = []  # upload -> the server's script_finished message
        self.answer_s = []  # the page's rerun request -> that message: the server's own share
        self.failures, self.mixing, self.replicas = [], [], {}
        self.private = {p.name for p, _ in images}

    def left(self, cap: float) -> float:
        return max(0.1, min(cap, self.t_end - time.monotonic()))

    def check(self, who: str, seen: dict, name: str, label: str | None):
        """Mixing: the name of another session's upload (each is unique; the samples are
        shared, and a session whose upload failed still shows the default sample), or, once
        the session shows its own file, a prediction but its own."""
        cap = seen.get("caption") or ""
        shown = cap.removeprefix("Current image: ")
        if shown != name and shown in self.private:
            self.mixing.append({"session": who, "saw": cap, "own": name})
        if label is not None and shown == name and seen.get("label") not in (None, label):
            self.mixing.append({"session": who, "saw": seen.get("label"), "own": label})

    async def context(self, browser, who: str):
        ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
        seen = self.replicas.setdefault(who, [])
        ctx.on("response", lambda r: seen.append(r.headers.get(REPLICA_HEADER))
               if r.url.startswith(self.url) and r.headers.get(REPLICA_HEADER) else None)
        return ctx

    async def uploader(self, browser, i: int):
        who = f"u{i:03d}"
        path, label = self.images[i]
        name = path.name
        ctx = await self.context(browser, who)
        step = "start"
        try:
            page = await ctx.new_page()
            finished, asked = [], []  # when the server said each run was over; when the page asked for one
            page.on("websocket", lambda ws: (
                ws.on("framereceived", lambda f: finished.append(time.monotonic())
                      if message_type(f, ForwardMsg) == "script_finished" else None),
                ws.on("framesent", lambda f: asked.append(time.monotonic())
                      if message_type(f, BackMsg) == "rerun_script" else None)))
            await self.start.wait(who, self.left(60))
            step = "load"
            t = time.monotonic()
            await page.goto(self.url, timeout=self.left(self.args.timeout) * 1000)
            await page.get_by_test_id("stSidebar").get_by_test_id("stMetricValue").wait_for(
                timeout=self.left(self.args.timeout) * 1000)
            self.load_s.append(time.monotonic() - t)
            # The upload is timed from a page that has finished loading: its script run over,
            # its top-5 drawn and its renderer idle (otherwise the upload's figure is the rest
            # of 30 page loads drawing on the same 2 cores).
            await wait_idle(page, self.left(self.args.timeout))
            await page.locator(".cnnviz-topk-row").nth(4).wait_for(timeout=self.left(self.args.timeout) * 1000)
            await page.evaluate(IDLE_JS, int(self.left(self.args.timeout) * 1000))
            await self.loaded.wait(who, self.left(self.args.timeout))
            step = "upload"
            inp = page.locator(".st-key-upload").get_by_test_id("stFileUploaderDropzoneInput")
            t = t_upload = time.monotonic()
            await inp.set_input_files(str(path), timeout=self.left(self.args.timeout) * 1000)
            await page.wait_for_function(SHOWS_JS, arg=[label, name], polling=100,
                                         timeout=self.left(self.args.timeout) * 1000)
            self.upload_s.append(time.monotonic() - t)
            self.check(who, await page.evaluate(SEEN_JS), name, label)
            await self.uploaded.wait(who, self.left(self.args.timeout))
            for link, heading in (("Activations", "Activations"), ("Home", "Top-5 classes")):
                step = f"switch to {link}"
                t = time.monotonic()
                await page.get_by_test_id("stSidebarNav").get_by_role("link", name=link).click(
                    timeout=self.left(self.args.timeout) * 1000)
                await page.get_by_role("heading", name=heading).wait_for(timeout=self.left(self.args.timeout) * 1000)
                await wait_idle(page, self.left(self.args.timeout))
                self.switch_s.append(time.monotonic() - t)
                self.check(who, await page.evaluate(SEEN_JS), name, label)
            step = "final check"
            after = [f for f in finished if f > t_upload]  # read last: its event may come after the page showed it
            if after:
                self.served_s.append(after[0] - t_upload)
                request = [a for a in asked if t_upload < a < after[0]]
                if request:  # the last request before it: the run that finished
                    self.answer_s.append(after[0] - request[-1])
            if not await page.evaluate(SHOWS_JS, [label, name]):
                raise AssertionError(f"Home no longer shows {name} / {label}: {await page.evaluate(SEEN_JS)}")
        except Exception as e:  # one session's failure is a result, not the end of the run
            failure = {"session": who, "step": step, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            self.failures.append(failure)
            try:  # what the page showed instead: its state, headings and alerts (for diagnosis)
                failure["showed"] = await page.evaluate(DIAG_JS)
                self.check(who, await page.evaluate(SEEN_JS), name, None)
            except Exception:
                pass
        finally:
            for g in (self.start, self.loaded, self.uploaded):  # a failed session lets the others go on
                g.arrive(who)
            await ctx.close()

    async def heavy(self, browser, j: int):
        who = f"h{j:03d}"
        kind, path = HEAVY[j % len(HEAVY)]
        sample = self.heavy_samples[j % len(self.heavy_samples)]
        ctx = await self.context(browser, who)
        step = "start"
        try:
            page = await ctx.new_page()
            await self.start.wait(who, self.left(60))
            step = kind
            t = time.monotonic()
            await page.goto(self.url + path.format(s=sample.stem), timeout=self.left(self.args.timeout) * 1000)
            await page.get_by_test_id("stSidebar").get_by_test_id("stMetricValue").wait_for(
                timeout=self.left(self.args.heavy_timeout) * 1000)
            if kind == "featurevis":
                go = page.locator(".st-key-fv_go button")
                await go.wait_for(timeout=self.left(self.args.heavy_timeout) * 1000)
                await wait_idle(page, self.left(self.args.heavy_timeout))
                await go.click(timeout=self.left(self.args.timeout) * 1000)
                await page.wait_for_timeout(1000)
            await wait_idle(page, self.left(self.args.heavy_timeout))
            self.heavy_s.append({"session": who, "kind": kind, "s": round(time.monotonic() - t, 2)})
            self.check(who, await page.evaluate(SEEN_JS), sample.name, None)
        except Exception as e:
            self.failures.append({"session": who, "step": step, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        finally:
            self.start.arrive(who)
            await ctx.close()


def chromium(nice: int) -> str:
    """A wrapper that starts Debian's Chromium at nice `nice` without the right to raise its
    own priority. Run as root, Chromium renices its browser and GPU processes to -8, above
    the server it loads: on one machine the browsers are the load generator, and in a class
    each student's browser has a machine of its own. With --browser-nice N > 0 they also
    yield the cores to the server, which then shows what it answers when not starved."""
    wrapper = scratch("cnnviz-chromium-") / "chromium"
    wrapper.write_text("#!/bin/sh\n"  # CAP_SYS_NICE dropped: no process below the nice it starts at
                       f'exec nice -n {int(nice)} setpriv --inh-caps=-sys_nice --bounding-set=-sys_nice '
                       f'{CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


async def warm_up(browser, url: str, times: int):
    """The first render imports torch and loads the model (seconds): not a session's cost."""
    for _ in range(times):
        ctx = await browser.new_context()
        page = await ctx.new_page()
        await page.goto(url, timeout=120_000)
        await page.get_by_test_id("stSidebar").get_by_test_id("stMetricValue").wait_for(timeout=120_000)
        await wait_idle(page, 120)
        await ctx.close()


def stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    s = sorted(xs)
    rank = lambda q: s[max(0, math.ceil(q * len(s)) - 1)]  # nearest rank  # noqa: E731
    return {"n": len(s), "p50": round(rank(0.5), 3), "p95": round(rank(0.95), 3), "max": round(s[-1], 3)}


async def drive(args, server, images, heavy_samples) -> dict:
    from playwright.async_api import async_playwright

    run = Run(args, server.url, images, heavy_samples)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(args.browser_nice), headless=True,
                                          args=LAUNCH_ARGS)
        try:
            await warm_up(browser, server.url, args.replicas if args.proxy else 1)
            cpu0, workers0 = cpu_seconds(server.pids), cpu_seconds(children(server.pids))
            tasks = [asyncio.create_task(run.uploader(browser, i)) for i in range(args.sessions)]
            tasks += [asyncio.create_task(run.heavy(browser, j)) for j in range(args.heavy)]
            await asyncio.wait_for(run.loaded.event.wait(), run.left(args.deadline))
            procs0, t0 = cpu_by_process(server.pids), time.monotonic()
            await asyncio.wait_for(run.uploaded.event.wait(), run.left(args.deadline))
            procs1, t1 = cpu_by_process(server.pids), time.monotonic()
            cpu_upload = cpu_seconds(server.pids) - cpu0
            done, pending = await asyncio.wait(tasks, timeout=run.left(args.deadline))
            for t in pending:
                t.cancel()
                run.failures.append({"session": "?", "step": "deadline", "error": "cancelled at the global deadline"})
            cpu_all = cpu_seconds(server.pids) - cpu0
            cpu_workers = cpu_seconds(children(server.pids)) - workers0  # a worker that died mid-run is missed
        finally:
            await browser.close()
    replicas = {who: sorted(set(r)) for who, r in run.replicas.items()}
    return {
        "rows": [{"measure": "upload->top-5 s", **stats(run.upload_s)},
                 {"measure": "upload->server's run finished s", **stats(run.served_s)},
                 {"measure": "rerun request->run finished s (the server's part)", **stats(run.answer_s)},
                 {"measure": "page load s", **stats(run.load_s)},
                 {"measure": "switch->settled s", **stats(run.switch_s)},
                 {"measure": "heavy job s", **stats([h["s"] for h in run.heavy_s])}],
        "failures": run.failures, "mixing": run.mixing, "heavy": run.heavy_s,
        "cpu_s_load_and_upload_per_session": round(cpu_upload / max(1, args.sessions), 3),
        "cpu_s_total": round(cpu_all, 2),
        # Every process's CPU seconds while the sessions uploaded (all loaded, to all shown),
        # against the wall time x cores the machine had: where a crowded upload's time goes.
        "upload_phase": {"wall_s": round(t1 - t0, 2), "cores": os.cpu_count(),
                         "cpu_s": cpu_split(procs0, procs1)},
        "cpu_s_workers": round(cpu_workers, 2),
        "replicas": ({who: r for who, r in replicas.items()} if args.proxy else None),
        "replica_changed": [who for who, r in replicas.items() if len(r) > 1] if args.proxy else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=4, help="sessions that upload (default 4)")
    ap.add_argument("--heavy", type=int, default=0, help="extra sessions that start a heavy job")
    ap.add_argument("--proxy", action="store_true", help="through deploy/ (HAProxy + --replicas replicas)")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120, help="seconds for one step of a session")
    ap.add_argument("--heavy-timeout", type=float, default=400, help="seconds for one heavy job")
    ap.add_argument("--browser-nice", type=int, default=0, metavar="N",
                    help="start Chromium at nice N (0..19): the browsers yield the cores to the server")
    ap.add_argument("--deadline", type=float, default=900, help="seconds for the whole run")
    args = ap.parse_args()
    if not 1 <= args.sessions <= 200 or not 0 <= args.heavy <= 50 or not 0 <= args.browser_nice <= 19:
        ap.error("--sessions must be 1..200, --heavy 0..50 and --browser-nice 0..19")

    from cnnviz.samples import sample_paths

    # `timeout` or Ctrl-C: unwind, so the `finally` below stops the server or the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="cnnviz-load-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        images = make_images(args.sessions, tmp / "images")
        heavy_samples = sorted(sample_paths().values())
        os.environ.setdefault("TORCH_HOME", str(tmp / "torch"))
        server = Cluster(tmp, args.replicas) if args.proxy else OneServer(tmp)
        try:
            out = asyncio.run(drive(args, server, images, heavy_samples))
            rss_server = sum(proc_field(pid, "VmHWM") for pid in server.pids)
            rss = rss_server + sum(proc_field(pid, "VmHWM") for pid in children(server.pids))
        finally:
            server.stop()
    name = (f"bench_load_s{args.sessions}" + (f"_proxy{args.replicas}" if args.proxy else "")
            + (f"_heavy{args.heavy}" if args.heavy else ""))
    report(name, out.pop("rows"), {
        "sessions": args.sessions, "heavy_sessions": args.heavy, "proxy": args.proxy,
        "browser_nice": args.browser_nice,
        "replica_count": args.replicas if args.proxy else 1,
        "n_failures": len(out["failures"]), "n_mixing": len(out["mixing"]),
        "peak_rss_mb": round(rss), "peak_rss_server_mb": round(rss_server), "loadavg": os.getloadavg(), **out})


if __name__ == "__main__":
    main()
