"""The browser benches still drive the app as it is: a page that changes must not leave its
benchmark waiting for an element that is gone (bench_server_cpu waited for Home's Plotly
chart after Home stopped drawing one). Each runs once, small, and its report is read; no
speed is asserted here (bench/ measures speed)."""
import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.browser


def bench(tmp_path, script: str, *args: str) -> dict:
    env = {**os.environ, "CNNVIZ_BENCH_RESULTS": str(tmp_path)}  # the developer's results stay
    env.pop("CNNVIZ_JOB_PROCESSES", None)  # a server as served: its jobs in worker processes
    out = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    kept = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert json.loads(out.stdout.strip().splitlines()[-1]) == kept  # printed and kept: the same report
    return kept


def test_bench_load_drives_sessions_that_upload_and_switch_pages(tmp_path):
    r = bench(tmp_path, "bench_load.py", "--sessions", "2", "--deadline", "400")
    assert r["n_failures"] == 0 and r["n_mixing"] == 0, r["failures"] or r["mixing"]
    rows = {row["measure"]: row for row in r["rows"]}
    assert rows["upload->top-5 s"]["n"] == 2 and rows["page load s"]["n"] == 2
    assert rows["switch->settled s"]["n"] == 4  # to Activations and back, per session
    assert r["peak_rss_mb"] > 100 and r["upload_phase"]["cpu_s"]["server"] >= 0


def test_bench_server_cpu_counts_a_session(tmp_path):
    r = bench(tmp_path, "bench_server_cpu.py", "--sessions", "1")
    assert r["errors"] == 0 and len(r["per_session"]) == 1
    (s,) = r["per_session"]
    assert s["cpu_session"] == pytest.approx(s["cpu_load"] + s["cpu_upload"]) and s["cpu_load"] > 0
