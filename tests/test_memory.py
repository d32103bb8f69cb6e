"""Memory that does not grow with sessions (issue #14): caches bounded in bytes, one copy of
each model per process, sessions that hold ids, a feature-visualization disk cache with a
size limit. Cases whose danger is memory run in a subprocess and state their bound."""
import dataclasses
import gc
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnviz import bounds, featurevis as FV, models
from cnnviz.app import cache
from cnnviz.contract import Cancelled
from cnnviz.lru import LRU, OVERHEAD, nbytes
from cnnviz.model import Model

from .conftest import ROOT

MiB = 2 ** 20


# ---------------------------------------------------------------- the LRU itself

def test_evicts_the_least_recently_used_by_bytes():
    lru = LRU(100, size=len)
    lru.put("a", b"x" * 40)
    lru.put("b", b"y" * 40)
    assert lru.get("a") == b"x" * 40  # a is now the most recent
    lru.put("c", b"z" * 40)
    assert lru.keys() == ["a", "c"] and lru.total == 80
    lru.put("d", b"w" * 90)  # room for d alone
    assert lru.keys() == ["d"] and lru.total == 90


def test_an_entry_over_the_budget_is_returned_not_kept():
    lru = LRU(100, size=len)
    lru.put("small", b"s" * 10)
    assert lru.get_or_make("big", lambda: b"b" * 101) == b"b" * 101
    assert "big" not in lru and lru.keys() == ["small"]  # and it pushed nothing out


def test_max_entries_bounds_too():
    lru = LRU(10 ** 9, max_entries=2, size=len)
    for k in "abc":
        lru.put(k, b"v")
    assert lru.keys() == ["b", "c"]


def test_the_same_missing_key_is_made_once_for_every_thread():
    lru, calls, got = LRU(10 ** 6, size=len), [], []

    def make():
        calls.append(1)
        time.sleep(0.3)
        return b"value"

    threads = [threading.Thread(target=lambda: got.append(lru.get_or_make("k", make))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(got) == 6 and all(g is got[0] for g in got)


def test_a_make_that_fails_or_is_stopped_keeps_nothing_and_a_waiter_makes_it():
    lru, started, release = LRU(10 ** 6, size=len), threading.Event(), threading.Event()

    def stopped():
        started.set()
        release.wait(5)
        raise Cancelled()

    errors, got = [], []

    def first():
        try:
            lru.get_or_make("k", stopped)
        except Cancelled as e:
            errors.append(e)

    a = threading.Thread(target=first)
    a.start()
    started.wait(5)
    b = threading.Thread(target=lambda: got.append(lru.get_or_make("k", lambda: b"made by b")))
    b.start()
    time.sleep(0.2)
    assert not got  # b waits for a
    release.set()
    a.join(5)
    b.join(5)
    assert len(errors) == 1 and got == [b"made by b"] and lru.get("k") == b"made by b"
    with pytest.raises(ZeroDivisionError):
        lru.get_or_make("z", lambda: 1 / 0)
    assert "z" not in lru


def test_a_waiter_can_leave_while_the_maker_goes_on():
    """A session waiting for another's identical job can be rerun away without stopping it."""
    lru, started = LRU(10 ** 6, size=len), threading.Event()

    class Rerun(BaseException):
        pass

    def slow():
        started.set()
        time.sleep(0.5)
        return b"done"

    maker = threading.Thread(target=lambda: lru.get_or_make("k", slow))
    maker.start()
    started.wait(5)
    def rerun():
        raise Rerun()

    with pytest.raises(Rerun):
        lru.get_or_make("k", lambda: b"never", wait=rerun, poll=0.05)
    maker.join(5)
    assert lru.get("k") == b"done"


def test_many_threads_keep_the_books_straight():
    lru = LRU(5000, size=len)
    rng = np.random.default_rng(0)
    plan = [(int(k), int(s)) for k, s in zip(rng.integers(0, 40, 2000), rng.integers(1, 900, 2000))]

    def work(part):
        for k, s in part:
            lru.get_or_make(k, lambda s=s: b"x" * s)
            lru.get(k // 2)

    threads = [threading.Thread(target=work, args=(plan[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lru.total == sum(len(lru.get(k)) for k in lru.keys()) <= 5000


def test_weak_tracking_finds_an_evicted_value_someone_still_holds():
    lru = LRU(10 ** 6, max_entries=1, weak=True)

    class Thing:
        pass

    held, dropped = Thing(), Thing()
    lru.put("held", held)
    lru.put("dropped", dropped)  # evicts "held"
    assert "held" not in lru and lru.get("held") is held  # found again, not made twice
    ref = weakref.ref(dropped)
    del dropped
    lru.put("other", Thing())
    gc.collect()
    assert ref() is None and lru.get("dropped") is None


def test_nbytes():
    a = np.zeros((100, 100), np.float32)
    t = torch.zeros(1000, dtype=torch.float64)

    @dataclasses.dataclass
    class R:
        maps: dict
        image: Image.Image
        raw: bytes

    r = R({"a": a, "again": a, "t": t}, Image.new("RGB", (50, 40)), b"12345")
    n = nbytes(r)
    assert a.nbytes + t.numel() * 8 + 50 * 40 * 3 + 5 <= n <= a.nbytes + 8000 + 6000 + 5 + 20 * OVERHEAD
    assert nbytes([a, a]) < 2 * a.nbytes  # the same array counts once
    assert nbytes(Image.new("I;16", (10, 10))) >= 200 and nbytes(torch.nn.Linear(10, 10)) >= 110 * 4


# ---------------------------------------------------------------- the app's stores: bounded in bytes

def _peak_growth_mb(script: str) -> float:
    """Run `script` in a fresh process (cwd: the repo); it prints the peak RSS growth in MB
    of what it does (VmHWM reset through /proc/self/clear_refs, as bench/common.py)."""
    prelude = textwrap.dedent("""
        from pathlib import Path
        def status(field):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        def start():
            Path("/proc/self/clear_refs").write_text("5")
            return status("VmRSS")
    """)
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux: VmHWM reset")
def test_results_in_the_app_cache_stay_within_their_byte_budget():
    """24 different 16 MB results through cache.run with a 64 MB budget: the process grows
    by less than 200 MB at its peak (entry-count caches kept all 384 MB)."""
    growth = _peak_growth_mb("""
        import numpy as np, warnings
        warnings.filterwarnings("ignore")
        from dataclasses import dataclass
        from cnnviz import contract, models
        from cnnviz.app import cache

        @dataclass(frozen=True)
        class BigSpec(contract.Spec):
            seed: int

        @dataclass
        class Big(contract.Result):
            data: np.ndarray

        def run(model, image, spec, progress=None):
            return Big(np.full(4 * 2 ** 20, spec.seed, np.float32))  # 16 MB

        model = models.load("torchvision:squeezenet1_1@random")
        model.fingerprint
        cache.RESULTS.budget = 64 * 2 ** 20
        before = start()
        for i in range(24):
            assert cache.run(BigSpec(i), model).data[0] == i
        assert cache.RESULTS.total <= 64 * 2 ** 20
        print(status("VmHWM") - before)
    """)
    assert growth < 200, f"peak growth {growth:.0f} MB"


def test_decoded_images_and_thumbnails_are_bounded_in_bytes(monkeypatch, samples):
    monkeypatch.setattr(cache.IMAGES, "budget", 3 * 1000 * 1000 * 3)
    cache.IMAGES.clear()
    for i in range(6):  # 6 decoded 1-megapixel images, room for 3
        buf = io.BytesIO()
        Image.new("RGB", (1000, 1000), (i, 0, 0)).save(buf, "PNG")
        data = buf.getvalue()
        assert cache.image(cache.sha(data), data, f"{i}.png").getpixel((0, 0)) == (i, 0, 0)
    assert cache.IMAGES.total <= cache.IMAGES.budget and len(cache.IMAGES) == 2
    monkeypatch.setattr(cache.THUMBNAILS, "budget", 1)  # nothing fits: made, returned, not kept
    cache.THUMBNAILS.clear()
    assert cache.thumbnails((str(samples["cat"]),))[:2] == b"\xff\xd8" and len(cache.THUMBNAILS) == 0
    cache.IMAGES.clear()


# ---------------------------------------------------------------- models: one copy, sessions hold ids

ROTATION = ["squeezenet1_1", "mobilenet_v2", "shufflenet_v2_x0_5", "regnet_y_400mf", "mnasnet0_5"]


@pytest.fixture
def random_zoo(monkeypatch):
    """The picker offers small random-init models (no download); every Model built is tracked."""
    from cnnviz.app.sidebar import _catalog

    real_catalog, real_load = models.catalog, models.load
    built: list[weakref.ref] = []

    def catalog():
        return real_catalog()[:1] + [models.Entry(f"torchvision:{n}@random", n, "torchvision", True, 0)
                                      for n in ROTATION]

    def load(model_id, progress=None):
        m = real_load(model_id, progress)
        built.append(weakref.ref(m))
        return m

    monkeypatch.setattr(models, "catalog", catalog)
    monkeypatch.setattr(models, "load", load)
    _catalog.clear()
    cache.clear()
    yield built
    _catalog.clear()
    cache.clear()


def _models_in(value, seen=None) -> list:
    """Model objects reachable from a session_state value (dicts, lists, dataclasses)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, Model):
        return [value]
    if isinstance(value, dict):
        return [m for v in value.values() for m in _models_in(v, seen)]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in _models_in(v, seen)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [m for f in dataclasses.fields(value) for m in _models_in(getattr(value, f.name), seen)]
    return []


def test_sessions_rotating_through_models_keep_one_copy_each_and_free_the_evicted(random_zoo):
    built = random_zoo
    sessions = []
    for _ in range(3):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.run()
        assert not at.exception
        sessions.append(at)
    for step in range(8):
        at = sessions[step % 3]
        mid = f"torchvision:{ROTATION[step % len(ROTATION)]}@random"
        at.sidebar.selectbox(key="model_id").set_value(mid).run()
        assert not at.exception and not at.sidebar.error
        assert at.sidebar.metric[0].label.endswith("(random init) says")
        gc.collect()
        ids = [m.id for m in (r() for r in built) if m is not None]  # (no reference kept here)
        assert len(ids) <= bounds.MODELS, ids  # never more than the cache holds
        assert len(set(ids)) == len(ids), ids  # never two copies of one model
        assert set(ids) <= set(cache.MODELS.keys()), (ids, cache.MODELS.keys())  # evicted ones are gone
        for s in sessions:  # sessions hold ids, not models
            assert not _models_in(s.session_state.to_dict())
    assert len(built) > bounds.MODELS  # the rotation did evict and reload


def _checkpoint(classes: int, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(torchvision.models.mobilenet_v2(weights=None, num_classes=classes).state_dict(), buf)
    return buf.getvalue()


def _load_own(at: AppTest, data: bytes, name: str = "mine.pth") -> None:
    if not at.sidebar.toggle(key="own_on").value:  # the "Use your own weights" switch
        at.sidebar.toggle(key="own_on").set_value(True).run()
    n = at.session_state["own_uploads"] if "own_uploads" in at.session_state else 0
    key = "own_weights" if n == 0 else f"own_weights_{n}"  # the uploader comes back empty under a new key
    at.sidebar.file_uploader(key=key).set_value((name, data, "application/octet-stream"))
    at.sidebar.selectbox(key="own_arch").set_value("mobilenet_v2")
    at.run()
    [b for b in at.sidebar.button if b.label == "Load weights"][0].click().run()
    assert not at.exception and not at.sidebar.error, [e.value for e in at.sidebar.error]


def test_own_checkpoints_are_one_copy_per_process_and_an_evicted_one_says_load_again(monkeypatch):
    cache.clear()
    monkeypatch.setattr(cache.OWN_MODELS, "max_entries", 1)
    data = _checkpoint(3)
    a, b = (AppTest.from_file(str(ROOT / "app.py"), default_timeout=300) for _ in range(2))
    for at in (a, b):
        at.run()
        _load_own(at, data)
        assert at.sidebar.metric[0].label.startswith("mine.pth (MobileNetV2, 3 classes)")
        assert not _models_in(at.session_state.to_dict())  # a key, not the model
    key = a.session_state["own_model"]["key"]
    assert b.session_state["own_model"]["key"] == key and len(cache.OWN_MODELS) == 1
    kept = weakref.ref(cache.own_model(key))
    # A third session's other checkpoint takes the only place: the first one is let go ...
    c = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    c.run()
    _load_own(c, _checkpoint(4, seed=1), "other.pth")
    gc.collect()
    assert kept() is None and cache.own_model(key) is None
    # ... and its sessions are told, keep working, and can load it again.
    a.run()
    assert not a.exception
    assert any("was unloaded to make room" in w.value and "Load it again" in w.value for w in a.sidebar.warning)
    assert a.sidebar.metric[0].label == "EfficientNet-Lite0 says"
    _load_own(a, data)
    assert a.sidebar.metric[0].label.startswith("mine.pth") and not a.sidebar.warning
    cache.clear()


# ---------------------------------------------------------------- feature visualization: the disk cache

def _fake_render(channel: int) -> FV.FeatureVis:
    spec = FV.FeatureVisSpec("features.3", channel, size=32, steps=4)
    image = np.full((32, 32, 3), channel % 256, np.uint8)
    return FV.FeatureVis(spec, image, np.zeros(4, np.float32), 0.0, 1.0, model="torchvision:squeezenet1_1")


def test_the_disk_cache_keeps_its_size_limit_least_recently_used_out(cache_dir, monkeypatch):
    first = _fake_render(0)
    FV._write_disk(first)
    size = next(cache_dir.glob("*.npz")).stat().st_size
    monkeypatch.setattr(bounds, "FEATUREVIS_DISK_BYTES", int(3.5 * size))  # room for three
    for c in (1, 2):
        FV._write_disk(_fake_render(c))
    files = {c: cache_dir / f"{_fake_render(c).spec.digest(_fake_render(c).model)}.npz" for c in range(6)}
    for age, c in enumerate((0, 1, 2)):  # written in this order, a second apart
        os.utime(files[c], (time.time() - 100 + age, time.time() - 100 + age))
    model = type("M", (), {"id": "torchvision:squeezenet1_1", "source": "torchvision"})()
    assert FV._read_disk(model, first.spec) is not None  # a read: 0 is now the most recent
    FV._write_disk(_fake_render(3))
    assert sorted(c for c in files if files[c].exists()) == [0, 2, 3]  # 1 was the least recently used
    assert sum(f.stat().st_size for f in cache_dir.glob("*.npz")) <= bounds.FEATUREVIS_DISK_BYTES
    (cache_dir / "tmpdead.partial").write_bytes(b"x")  # a crashed writer's leftover, old
    os.utime(cache_dir / "tmpdead.partial", (time.time() - 7200, time.time() - 7200))
    FV.trim_disk()
    assert not (cache_dir / "tmpdead.partial").exists()


def test_two_processes_share_the_disk_cache(cache_dir):
    script = textwrap.dedent("""
        import sys, numpy as np
        from cnnviz import bounds, featurevis as FV
        bounds.FEATUREVIS_DISK_BYTES = 40_000
        for c in range(int(sys.argv[1]), int(sys.argv[1]) + 25):
            spec = FV.FeatureVisSpec("features.3", c, size=32, steps=4)
            FV._write_disk(FV.FeatureVis(spec, np.full((32, 32, 3), c % 256, np.uint8), np.zeros(4, np.float32),
                                         0.0, 1.0, model="torchvision:squeezenet1_1"))
            FV.trim_disk()
    """)
    env = {**os.environ, "CNNVIZ_CACHE": str(cache_dir.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(start)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
             for start in (0, 1000)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    files = list(cache_dir.glob("*.npz"))
    assert files and sum(f.stat().st_size for f in files) <= 40_000
    assert not list(cache_dir.glob("*.partial"))
    for f in files:  # every file left is whole
        with np.load(f) as z:
            assert z["image"].shape == (32, 32, 3)


def test_renders_of_an_own_checkpoint_stay_in_memory(cache_dir):
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=3)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    mine = models.load_checkpoint("mobilenet_v2", buf.getvalue(), "mine.pth")
    layer = next(l.name for l in mine.layers if len(l.shape) == 3)
    s = FV.FeatureVisSpec(layer, 1, size=32, steps=2)
    FV.run(mine, None, s)
    assert not cache_dir.exists() or not list(cache_dir.glob("*.npz"))  # never on disk
    assert FV.cached(mine, s).cached == "memory"
    assert FV.cached(mine.private_copy(), s).cached == "memory"  # the runner's copy too
