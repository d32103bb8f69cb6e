"""Shared helpers for the benchmark scripts: interleaved timing, medians, a table."""
from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

# Where each run's JSON is kept; tests/test_benches.py points it elsewhere.
RESULTS = Path(os.environ.get("CNNVIZ_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time each function `repeats` times, round-robin, so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}


def scratch(prefix: str) -> Path:
    """A new temporary folder, removed when the bench exits (however it ends but a kill)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def report(name: str, rows: list[dict], extra: dict | None = None) -> None:
    """Print rows as a table, then one JSON object; keep the JSON in bench/results/."""
    if rows:
        cols = list(rows[0])
        widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, widths)))
    out = {"bench": name, "machine": machine(), "rows": rows, **(extra or {})}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def peak_rss_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory `fn` adds above what the process holds when it starts (Linux:
    resetting VmHWM through /proc/self/clear_refs). Run it in a fresh process per case, so
    one case's freed-but-cached memory does not hide another's."""
    def status(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before
