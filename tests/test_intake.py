"""Hostile input at intake (issue #14): images, checkpoints, labels files and uploads.

Every hostile file is made in the test (tests/hostile.py; none is committed). The big cases run in a
subprocess that measures its own peak memory (VmHWM, reset through /proc/self/clear_refs),
so each bound is the case's own.
"""
import io
import json
import struct
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnviz import bounds, images, models
from cnnviz.images import ImageError, intake, load_image
from cnnviz.models import ModelError

from .conftest import ROOT
from .hostile import finetuned, huge_head, ico, saved, stream_png

PAGE_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))


# ---------------------------------------------------------------- measuring

def peak(setup: str, case: str, timeout=600) -> dict:
    """Run `case` in a fresh interpreter after `setup`; returns the JSON it prints plus
    `peak_mb`: the most resident memory `case` added above what `setup` left."""
    script = textwrap.dedent("""
        import json, time
        from pathlib import Path
        def status(field):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        out = {}
    """) + textwrap.dedent(setup) + textwrap.dedent("""
        Path("/proc/self/clear_refs").write_text("5")
        before, t0 = status("VmRSS"), time.perf_counter()
    """) + textwrap.dedent(case) + textwrap.dedent("""
        out["seconds"], out["peak_mb"] = time.perf_counter() - t0, status("VmHWM") - before
        print(json.dumps(out))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- images

def test_extreme_aspect_is_cropped_about_the_centre_and_said():
    data = stream_png(40, 1_000_000, color_type=2)  # RGB, 40 megapixels
    assert len(data) < 1_000_000
    got = intake(data, "tall.png")
    assert got.image.size == (40, 40 * bounds.IMAGE_ASPECT) and got.image.mode == "RGB"
    assert got.note == images.note(got.image)
    assert "tall.png was 40x1000000 pixels; cropped to its centre, 40x320 (the limit is 8:1)" in got.note
    wide = intake(stream_png(30_000, 100), "wide.png")
    assert wide.image.size == (800, 100) and "cropped" in wide.note and "scaled" not in wide.note


def test_oversized_image_is_scaled_and_said():
    got = intake(stream_png(6000, 5000), "big.png")
    assert got.image.size == (4096, 3413)
    assert got.note.startswith("big.png was 6000x5000 pixels; scaled to 4096x3413 (the limit is 4096 pixels a side)")
    both = intake(stream_png(200, 40_000), "strip.png")  # cut to 200x1600: no scaling needed
    assert both.image.size == (200, 1600) and "scaled" not in both.note
    assert intake(stream_png(4096, 512)).note is None  # at the bounds: untouched, nothing said


def test_crop_keeps_the_centre():
    a = np.zeros((900, 10, 3), np.uint8)
    a[400:500] = 255  # a white band in the middle of a 10 x 900 image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    out = np.asarray(load_image(buf.getvalue()))
    assert out.shape == (80, 10, 3) and (out == 255).all()  # rows 410..490: inside the band


def test_40_by_1e6_png_predicts_in_bounded_memory():
    """Issue #14: 40 s and 8.7 GB before; the bound here is +1.5 GB over the loaded model."""
    out = peak("""
        from cnnviz import models
        from cnnviz.images import load_image
        from cnnviz.predict import predict
        from tests.hostile import stream_png
        model = models.load(models.BUNDLED_ID)
        predict(model, load_image(stream_png(64, 64, 2)), 5)  # warm
        data = stream_png(40, 1_000_000, color_type=2)
    """, """
        im = load_image(data, "tall.png")
        out["size"], out["top"] = list(im.size), predict(model, im, 5)[0].label
    """)
    assert out["size"] == [40, 320]
    assert out["peak_mb"] < 1500, out
    print(f"40x1e6 PNG: {out['seconds']:.2f} s, +{out['peak_mb']:.0f} MB")


def test_16_bit_image_near_the_limit_never_goes_through_float64():
    """A 6000x6000 16-bit PNG (36 megapixels, 72 MB decoded): ~1 GB through float64 before."""
    out = peak("""
        from cnnviz.images import load_image
        from tests.hostile import stream_png
        data = stream_png(6000, 6000, color_type=0, bit_depth=16)
    """, """
        im = load_image(data, "deep.png")
        out["size"], out["mode"] = list(im.size), im.mode
    """)
    assert out["size"] == [4096, 4096] and out["mode"] == "RGB"
    assert out["peak_mb"] < 600, out
    print(f"16-bit 6000x6000 PNG: {out['seconds']:.2f} s, +{out['peak_mb']:.0f} MB")


def test_high_bit_depth_in_chunks_matches_the_float64_reference(monkeypatch):
    monkeypatch.setattr(images, "_CHUNK", 100)  # many chunks on a small image
    rng = np.random.default_rng(0)
    a16 = rng.integers(0, 65536, (37, 29), dtype=np.uint16)
    ref = (a16 / 65535.0 * 255 + 0.5).astype(np.uint8)
    got = np.asarray(images.to_rgb(Image.fromarray(a16)))[..., 0]
    assert np.abs(got.astype(int) - ref).max() <= 1
    f = rng.normal(size=(31, 23)).astype(np.float32)
    f[0, 0], f[1, 1], f[2, 2] = np.nan, np.inf, -np.inf
    finite = f[np.isfinite(f)]
    ref = np.clip((f - finite.min()) / (finite.max() - finite.min()), 0, 1) * 255 + 0.5
    got = np.asarray(images.to_rgb(Image.fromarray(f, "F")))[..., 0]
    ok = np.isfinite(f)
    assert np.abs(got[ok].astype(int) - ref[ok].astype(np.uint8)).max() <= 1
    assert got[0, 0] == 0 and got[1, 1] == 255 and got[2, 2] == 0  # nan -> 0, +inf -> 255, -inf -> 0


def test_ico_payload_size_refused_before_image_open(monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    with pytest.raises(ImageError, match=r"an icon \(ICO\) holding a 5000x5000 picture; icons are limited to 1024x1024"):
        load_image(ico(stream_png(5000, 5000)), "favicon.ico")
    dib = struct.pack("<IiiHHIIiiII", 40, 30000, 2 * 30000, 1, 32, 0, 0, 0, 0, 0, 0)
    with pytest.raises(ImageError, match="holding a 30000x30000 picture"):
        load_image(ico(dib), "bitmap.ico")
    assert opened == []  # refused from the header bytes: Pillow never saw them
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(buf, "ICO", sizes=[(32, 32)])
    im = load_image(buf.getvalue(), "ok.ico")  # a real icon still loads
    assert im.size == (32, 32) and im.getpixel((5, 5))[0] > 150


def test_image_path_read_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_BYTES", 1000)
    with pytest.raises(ImageError, match="zero is larger than 1000 bytes; the limit is 1000 bytes for images"):
        load_image("/dev/zero", "zero")  # a device has no size: read limit + 1 bytes, no more
    with pytest.raises(ImageError, match="is a folder, not a file"):
        load_image(tmp_path)


# ---------------------------------------------------------------- checkpoints

def test_head_of_8_million_classes_refused_before_anything_is_built(monkeypatch):
    built = []
    real = models._build
    monkeypatch.setattr(models, "_build", lambda *a, **k: built.append((k, torch.empty(0).device.type)) or real(*a, **k))
    data = huge_head()
    assert len(data) < 2000
    with pytest.raises(ModelError, match=r"big.pth has a classifier of 8,000,000 classes \('fc.weight' has shape "
                                         r"\[8000000, 512\]\); the limit is 100,000 classes"):
        models.load_checkpoint("resnet18", data, "big.pth")
    assert all(device == "meta" for _, device in built), built  # nothing built at full size


def test_head_of_8_million_classes_in_bounded_memory():
    out = peak("""
        from cnnviz import models
        from tests.hostile import finetuned, huge_head, saved
        data = huge_head()
        models.load_checkpoint("resnet18", saved(finetuned(3)), "warm.pth")  # every code path once
    """, """
        try:
            models.load_checkpoint("resnet18", data, "big.pth")
        except models.ModelError as e:
            out["error"] = str(e)
    """)
    assert "8,000,000 classes" in out["error"]
    assert out["peak_mb"] < 300, out  # Linear(512, 8e6) alone is 16 GB
    print(f"8e6-class head refused: {out['seconds']:.2f} s, +{out['peak_mb']:.0f} MB")


@pytest.mark.parametrize("obj, words", [
    ({0: torch.zeros(3), 1: torch.zeros(3)}, "the key 0 is of type int, not a parameter name"),
    ({"fc.weight": [1.0, 2.0]}, "the key 'fc.weight' holds a list; only dense real-valued tensors"),
    ({"fc.weight": torch.zeros(3, 512, dtype=torch.complex64)}, "holds a complex64 tensor"),
    ({"fc.weight": torch.zeros(0, 512), "fc.bias": torch.zeros(0)}, "a classifier of 0 classes"),
    ({"fc.weight": torch.zeros(1, 512), "fc.bias": torch.zeros(1)}, r"a classifier of 1 class \("),
    ({"fc.weight": torch.zeros(10)}, r"its classifier weight 'fc.weight' has shape \[10\], but the classifier of "
                                     r"ResNet-18 takes \[classes, 512\]"),
    ({"fc.weight": torch.zeros(10, 256), "fc.bias": torch.zeros(10)},
     r"'fc.weight' has shape \[10, 256\] in the file but \[10, 512\] in the model"),
    ({}, "expected a state dict"),
])
def test_odd_state_dicts_are_model_errors(obj, words):
    with pytest.raises(ModelError, match=words):
        models.load_checkpoint("resnet18", saved(obj), "odd.pth")


def test_non_finite_weights_and_wrong_kinds_refused():
    sd = finetuned(3)
    sd["fc.weight"][0, 0] = float("nan")
    with pytest.raises(ModelError, match="the key 'fc.weight' holds NaN or infinite values"):
        models.load_checkpoint("resnet18", saved(sd), "nan.pth")
    assert models.first_mismatch({"a": torch.zeros(2)}, {"a": torch.zeros(2, dtype=torch.bool)}) == \
        "the key 'a' holds bool values in the file but float32 in the model"
    extra = models.first_mismatch({}, {"x" * 5000: torch.zeros(1)})  # a hostile name is cut short
    assert extra.startswith("the key 'xxx") and extra.endswith("... is not part of the model") and len(extra) < 120


def test_labels_count_checked_before_the_network_is_built(monkeypatch):
    built = []
    real = models._build
    monkeypatch.setattr(models, "_build", lambda *a, **k: built.append(torch.empty(0).device.type) or real(*a, **k))
    head = saved({"fc.weight": torch.zeros(3, 512), "fc.bias": torch.zeros(3)})
    with pytest.raises(ModelError, match="The labels file has 2 names but the model has 3 classes"):
        models.load_checkpoint("resnet18", head, "three.pth", ["a", "b"])
    assert set(built) == {"meta"}


def test_weight_bytes_checked_before_parsing(monkeypatch):
    monkeypatch.setattr(bounds, "WEIGHTS_BYTES", 1000)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(ModelError, match=r"big.pth is 2 KB; the limit is 1000 bytes for weight files"):
        models.load_checkpoint("resnet18", b"\0" * 2048, "big.pth")


def test_container_bounds_from_headers(monkeypatch):
    """A zip whose records unpack past the weights limit, and an index pickle (zip or legacy
    format) far larger than any state dict's, are refused before torch.load builds them."""
    plain = saved({"w": torch.zeros(2 ** 19)})  # 2 MB of one tensor
    packed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain)) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert len(packed.getvalue()) < 100_000
    monkeypatch.setattr(bounds, "WEIGHTS_BYTES", 2 ** 20)
    with pytest.raises(ModelError, match="far larger than any state dict"):
        models.load_checkpoint("resnet18", packed.getvalue(), "packed.pth")
    monkeypatch.setattr(bounds, "WEIGHTS_BYTES", 600 * 2 ** 20)
    one = torch.zeros(1)
    many = {f"t{i}": one.expand(4) for i in range(2000)}  # 2,000 views of one storage
    monkeypatch.setattr(bounds, "CHECKPOINT_INDEX_BYTES", 20_000)
    for data in (saved(many), saved(many, _use_new_zipfile_serialization=False)):
        with pytest.raises(ModelError, match="far larger than any state dict"):
            models.load_checkpoint("resnet18", data, "many.pth")
    monkeypatch.undo()
    legacy = saved(finetuned(3), _use_new_zipfile_serialization=False)
    assert models.load_checkpoint("resnet18", legacy, "old.pth").categories == ["class 0", "class 1", "class 2"]


# ---------------------------------------------------------------- labels files

class _Huge(bytes):
    """600 MB as far as len() knows; decoding or splitting it fails the test."""

    def __len__(self):
        return 600 * 2 ** 20

    def decode(self, *a, **k):
        raise AssertionError("the labels were decoded before their size was checked")


def test_labels_file_bounds():
    with pytest.raises(ModelError, match=r"big.txt is 600 MB; the limit is 1 MB for labels files"):
        models.read_labels(_Huge(b"a\n"), "big.txt")
    with pytest.raises(ModelError, match=r"has 100,002 lines; the limit is 100,000 classes"):
        models.read_labels(b"a\n" * 100_001)
    with pytest.raises(ModelError, match=r"Line 2 of the labels file has 300 characters; a class name may have at most 256"):
        models.read_labels(b"cat\n" + b"x" * 300 + b"\ndog\n")
    assert models.read_labels(b"cat\r\ndog\rcow\n\n") == ["cat", "dog", "cow"]


# ---------------------------------------------------------------- the sidebar

@pytest.fixture
def app():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def load_own(at, weights: bytes, name="mine.pth", labels: bytes | None = None, arch="resnet18"):
    """The sidebar form as a user fills it: the switch, the uploads, the architecture, the button."""
    if not at.sidebar.toggle(key="own_on").value:
        at.sidebar.toggle(key="own_on").set_value(True).run()
    n = at.session_state.get("own_uploads", 0)
    wkey, lkey = ("own_weights", "own_labels") if n == 0 else (f"own_weights_{n}", f"own_labels_{n}")
    at.sidebar.file_uploader(key=wkey).set_value((name, weights, "application/octet-stream"))
    if labels is not None:
        at.sidebar.file_uploader(key=lkey).set_value(("labels.txt", labels, "text/plain"))
    at.sidebar.selectbox(key="own_arch").set_value(arch)
    at.run()
    [b for b in at.sidebar.button if b.label == "Load weights"][0].click().run()
    assert not at.exception, at.exception


def own_error(at) -> str:
    return " ".join(e.value for e in at.sidebar.error)


def held_bytes(value, seen=None) -> int:
    """Bytes (and file buffers) reachable from a session-state value."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, io.BytesIO):
        return value.getbuffer().nbytes
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen) for v in value)
    return 0


def test_sidebar_refuses_hostile_checkpoints_and_every_page_still_works(app):
    cases = [
        (huge_head(), None, "has a classifier of 8,000,000 classes"),
        (saved({0: torch.zeros(3)}), None, "the key 0 is of type int"),
        (saved({"fc.weight": torch.zeros(1, 512), "fc.bias": torch.zeros(1)}), None, "a classifier of 1 class"),
        (saved({"fc.weight": torch.zeros(7)}), None, "its classifier weight 'fc.weight' has shape [7]"),
        (saved({"fc.weight": torch.zeros(3, 512), "fc.bias": torch.zeros(3)}), b"a\nb\n", "2 names but the model has 3"),
        (saved({"fc.weight": torch.zeros(3, 512)}), b"x" * (bounds.LABELS_BYTES + 1), "bytes for labels files"),
    ]
    for weights, labels, words in cases:
        load_own(app, weights, "bad.pth", labels)
        assert words in own_error(app), (words, own_error(app))
        assert app.sidebar.metric[0].label == "EfficientNet-Lite0 says"  # the bundled model still answers
    for page in PAGE_FILES:
        app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
        assert not [e for e in app.error if "Something went wrong" in e.value], page


def test_two_class_checkpoint_works_on_every_page(app):
    """The smallest class count the loader accepts must not break any page (top-5, attacks,
    flips all assume more than one class)."""
    load_own(app, saved(finetuned(2)), "two.pth", b"yes\nno\n")
    assert not own_error(app)
    assert app.sidebar.metric[0].label.startswith("two.pth (ResNet-18, 2 classes)")
    for page in PAGE_FILES:
        app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
        assert not [e for e in app.error if "Something went wrong" in e.value], page


def test_weights_upload_is_dropped_once_read(app):
    weights = saved(finetuned(3))
    load_own(app, weights, "mine.pth", b"apple\nbanana\ncherry\n")
    assert not own_error(app) and app.sidebar.metric[0].label.startswith("mine.pth (ResNet-18, 3 classes)")
    held = sum(held_bytes(v) for _, v in app.session_state.items())
    assert held < len(weights) / 10, held  # the model is kept, not the 45 MB upload
    assert app.sidebar.file_uploader(key="own_weights_1").value is None  # the form is empty again
    load_own(app, huge_head(), "big.pth")  # refused: dropped as well
    assert "8,000,000 classes" in own_error(app)
    assert app.sidebar.file_uploader(key="own_weights_2").value is None
    assert sum(held_bytes(v) for _, v in app.session_state.items()) < len(weights) / 10


def test_sidebar_shows_what_intake_did_and_keeps_only_what_it_needs(app):
    data = stream_png(40, 1_000_000, color_type=2)
    app.sidebar.file_uploader(key="upload").set_value(("tall.png", data, "image/png")).run()
    assert not app.exception and not app.sidebar.error
    notes = [i.value for i in app.sidebar.info]
    assert any("tall.png was 40x1000000 pixels; cropped to its centre, 40x320" in n for n in notes), notes
    kept = app.session_state["image"]["data"]
    assert len(kept) < len(data) / 10 and Image.open(io.BytesIO(kept)).size == (40, 320)
    app.switch_page("pages/activations.py").run()
    assert not app.exception and "tall.png" in app.sidebar.caption[-1].value


def test_image_upload_over_its_limit_refused_before_hashing(app, monkeypatch):
    from cnnviz.app import cache

    monkeypatch.setattr(cache, "sha", lambda data: pytest.fail("hashed"))
    big = b"\x89PNG" + bytes(bounds.IMAGE_BYTES)
    app.sidebar.file_uploader(key="upload").set_value(("huge.png", big, "image/png")).run()
    assert not app.exception
    assert [e.value for e in app.sidebar.error] == [
        "huge.png is 52,428,804 bytes; the limit is 52,428,800 bytes for images. "
        "Save a smaller copy (a few megapixels is plenty)."]
    assert "cat.jpg" in app.sidebar.caption[-1].value


def test_server_upload_limit_is_the_largest_kind():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * bounds.MiB == bounds.UPLOAD_BYTES == bounds.WEIGHTS_BYTES
