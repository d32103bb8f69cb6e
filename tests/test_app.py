"""Every page and every sidebar path in Streamlit's own AppTest."""
import io
import re

import pytest
import torch
import torchvision
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnviz import models
from cnnviz.contract import Progress
from cnnviz.images import load_image
from cnnviz.predict import predict

from .conftest import ROOT

PAGE_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))


@pytest.fixture
def app():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def said(at) -> tuple[str, str]:
    """The sidebar's prediction: (label, '97.1% confident')."""
    m = at.sidebar.metric[0]
    return m.value, m.proto.delta


def facts(at) -> dict[str, str]:
    """Home's line about the model: {"parameters": "4.7 M", "input": "224 x 224", ...}."""
    (about,) = [m.value for m in at.main.markdown if " parameters · " in m.value]
    return {name: value for value, name in re.findall(r"\*\*(.+?)\*\* (\w+)", about)}


def png_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_home_shows_prediction_chart_and_facts(app, bundled, samples):
    top1 = predict(bundled, load_image(samples["cat"]), 1)[0]
    assert said(app) == (top1.label, f"{top1.prob:.1%} confident")
    top5 = predict(bundled, load_image(samples["cat"]), 5)
    (bars,) = app.main.get("html")  # the top-5 as one block of bars, most likely first
    rows = re.findall(r'data-index="(\d+)" data-p="([\d.]+)".*?<div>(.*?)</div>.*?width:([\d.]+)%', bars.proto.body)
    assert [(int(i), label) for i, _, label, _ in rows] == [(t.index, f"{t.label}: {t.prob:.1%}") for t in top5]
    assert all(abs(float(p) - t.prob) < 1e-6 and abs(float(w) - 100 * t.prob) < 0.01
               for (_, p, _, w), t in zip(rows, top5))
    assert not app.main.get("progress")
    links = [e.proto for e in app.main.get("page_link")]
    assert [ln.label.split("**")[1] for ln in links] == ["Activations", "Filters", "Receptive fields", "Saliency",
                                                         "Adversarial", "CNN limits"]
    assert facts(app) == {"parameters": "4.7 M", "input": "224 x 224", "layers": str(len(bundled.layers)), "classes": "1000"}
    assert not app.main.metric
    assert not app.error


def test_a_rerun_with_the_model_loaded_starts_no_spinner(app, monkeypatch):
    """A spinner is a thread and a message to the browser on every rerun of every session."""
    import streamlit as st

    shown, real = [], st.spinner
    monkeypatch.setattr(st, "spinner", lambda *a, **k: shown.append(a) or real(*a, **k))
    app.run()
    assert not app.exception and not shown


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "assets" / "samples").iterdir() if p.suffix != ".md"))
def test_each_sample(app, bundled, samples, name):
    app.sidebar.pills(key="sample_pick").set_value(name).run()
    assert not app.exception
    top1 = predict(bundled, load_image(samples[name]), 1)[0]
    assert said(app)[0] == top1.label
    assert app.query_params["sample"] == [name] or app.query_params["sample"] == name
    assert samples[name].name in app.sidebar.caption[-1].value


@pytest.mark.parametrize("page", PAGE_FILES)
def test_every_page_renders_and_keeps_the_choice(app, page):
    app.sidebar.pills(key="sample_pick").set_value("coffee").run()
    before = said(app)
    app.switch_page(page).run()
    assert not app.exception and not app.error
    assert len(app.title) == 1
    assert said(app) == before  # image and prediction survive the page switch


def test_upload_then_switch_pages(app, bundled):
    data = png_bytes()
    app.sidebar.file_uploader(key="upload").set_value(("red.png", data, "image/png")).run()
    assert not app.exception and not app.error
    top1 = predict(bundled, load_image(data), 1)[0]
    assert said(app)[0] == top1.label
    assert "red.png" in app.sidebar.caption[-1].value
    assert "sample" not in app.query_params
    app.switch_page("pages/activations.py").run()
    app.switch_page("pages/home.py").run()
    assert said(app)[0] == top1.label and "red.png" in app.sidebar.caption[-1].value


def test_bad_upload_keeps_the_previous_image(app):
    before = said(app)
    app.sidebar.file_uploader(key="upload").set_value(("fake.png", b"not a png at all", "image/png")).run()
    assert not app.exception
    assert [e.value for e in app.sidebar.error] == [
        "fake.png is not an image this app can read. Use PNG, JPEG, GIF, BMP, TIFF or WebP."]
    assert said(app) == before and "cat.jpg" in app.sidebar.caption[-1].value


def test_query_params_reproduce_the_view():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["sample"] = "rocket"
    at.query_params["model"] = "torchvision:nosuch"
    at.run()
    assert not at.exception
    assert "rocket.jpg" in at.sidebar.caption[-1].value
    assert at.sidebar.selectbox(key="model_id").value == models.BUNDLED_ID


def test_offline_model_choice_explains_and_falls_back(app):
    app.sidebar.selectbox(key="model_id").set_value("torchvision:resnet18").run()
    assert not app.exception
    errors = [e.value for e in app.sidebar.error]
    assert len(errors) == 1 and "resnet18-f37072fd.pth" in errors[0] and "not in the local cache" in errors[0]
    assert torch.hub.get_dir() not in errors[0]  # a lecture hall's browsers never see the server's paths
    assert said(app)[0]  # still predicts, with the bundled model
    assert app.sidebar.metric[0].label == "EfficientNet-Lite0 says"
    assert facts(app)["parameters"] == "4.7 M"


def test_cached_torchvision_model_is_used(app, samples):
    src = models.load("torchvision:mobilenet_v2@random")
    path = models.weights_file(torchvision.models.MobileNet_V2_Weights.DEFAULT)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(src.net.state_dict(), path)
    try:
        from cnnviz.app.sidebar import _catalog

        _catalog.clear()
        app.sidebar.selectbox(key="model_id").set_value("torchvision:mobilenet_v2").run()
        assert not app.exception and not app.error
        assert app.sidebar.metric[0].label == "MobileNetV2 says"
        assert said(app)[0] == predict(src, load_image(samples["cat"]), 1)[0].label
        assert app.query_params["model"] in ("torchvision:mobilenet_v2", ["torchvision:mobilenet_v2"])
    finally:
        path.unlink()


def test_own_checkpoint_with_labels(app):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=3)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    app.sidebar.toggle(key="own_on").set_value(True).run()  # the "Use your own weights" switch
    app.sidebar.file_uploader(key="own_weights").set_value(("mine.pth", buf.getvalue(), "application/octet-stream"))
    app.sidebar.file_uploader(key="own_labels").set_value(("labels.txt", b"apple\nbanana\ncherry\n", "text/plain"))
    app.sidebar.selectbox(key="own_arch").set_value("resnet18")
    app.run()
    [b for b in app.sidebar.button if b.label == "Load weights"][0].click().run()
    assert not app.exception and not app.sidebar.error
    assert said(app)[0] in {"apple", "banana", "cherry"}
    assert app.sidebar.metric[0].label.startswith("mine.pth (ResNet-18, 3 classes)")
    assert facts(app)["classes"] == "3"


def test_own_checkpoint_that_does_not_fit(app):
    buf = io.BytesIO()
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), buf)
    app.sidebar.toggle(key="own_on").set_value(True).run()  # the "Use your own weights" switch
    app.sidebar.file_uploader(key="own_weights").set_value(("wrong.pth", buf.getvalue(), "application/octet-stream")).run()
    assert app.sidebar.selectbox(key="own_arch").value == "resnet18"  # the usual fine-tuning base
    [b for b in app.sidebar.button if b.label == "Load weights"][0].click().run()
    assert not app.exception
    assert any("wrong.pth does not fit resnet18: the key 'conv1.weight' is missing" in e.value for e in app.sidebar.error)
    assert app.sidebar.metric[0].label == "EfficientNet-Lite0 says"


def test_rerun_with_same_image_and_model_does_no_forward_pass(app):
    from cnnviz.app import cache

    net = cache.model(models.BUNDLED_ID).net
    calls = []
    handle = net.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        app.run()
        app.switch_page("pages/home.py").run()
        assert calls == []
        fresh = png_bytes(color=tuple(int(v) for v in torch.randint(0, 256, (3,))), size=(61, 47))
        app.sidebar.file_uploader(key="upload").set_value(("fresh.png", fresh, "image/png")).run()
        assert calls == [1]  # a new image does run the net, once
        app.run()
        assert calls == [1]
    finally:
        handle.remove()


def test_online_download_shows_progress_then_loads_from_cache(app, monkeypatch):
    """Online: the weights stream into torch's cache under a progress bar, once."""
    import re
    import urllib.request

    weights = torchvision.models.RegNet_Y_400MF_Weights.DEFAULT
    buf = io.BytesIO()
    torch.save(models.load("torchvision:regnet_y_400mf@random").net.state_dict(), buf)
    data = buf.getvalue()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(data))}

    requested = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: requested.append(url) or Response(data))
    monkeypatch.setattr(torch.hub, "HASH_REGEX", re.compile(r"(?!)"))  # these bytes are not the real file
    seen = []
    real = models.download_weights
    monkeypatch.setattr(models, "download_weights",
                        lambda w, progress=None, **k: real(w, Progress(lambda f, text, p: (seen.append(f), progress(f, text, p))), **k))
    try:
        app.sidebar.selectbox(key="model_id").set_value("torchvision:regnet_y_400mf").run()
        assert not app.exception and not app.sidebar.error
        assert requested == [weights.url]
        assert seen and seen[-1] == 1.0  # the sidebar's st.progress was fed
        assert app.sidebar.metric[0].label == "RegNetY-400MF says"
        assert models.weights_file(weights).read_bytes() == data
        app.run()  # a cache hit replays the cached loader's elements, progress bar included
        assert not app.exception and not app.sidebar.error
        assert app.sidebar.metric[0].label == "RegNetY-400MF says" and len(requested) == 1
    finally:
        models.weights_file(weights).unlink(missing_ok=True)


def test_every_run_gets_its_own_page_objects(monkeypatch):
    """A StreamlitPage's call-once flag is set by st.navigation and cleared by page.run():
    page objects shared by all sessions (a module-level list) raced when two sessions
    switched pages at once, and one of them got "This page cannot be called directly".
    Each run gets copies of pages made once (st.Page stats its file every time)."""
    from types import SimpleNamespace

    from cnnviz.app import pages as P

    run = SimpleNamespace(pages_manager=SimpleNamespace(main_script_parent=ROOT))
    monkeypatch.setattr(P, "get_script_run_ctx", lambda: run)  # as in a script run
    first, second = P.pages(), P.pages()
    files = sorted(p.name for p in (ROOT / "pages").glob("*.py"))
    assert len(first) == len(second) == len(files) == 9  # every file under pages/ is in the navigation
    assert sorted(f.removeprefix("pages/") for f, _, _ in P.PAGES) == files
    assert [f for f, _, _ in P.PAGES][:2] == ["pages/home.py", "pages/convolution.py"]  # second, after Home
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert not ids(first) & ids(second)
    assert not (ids(first) | ids(second)) & ids(P._made(ROOT))  # the ones made once are never handed out
    app = (ROOT / "app.py").read_text()
    assert "st.navigation(pages())" in app and "PAGES" not in app


def test_a_camera_photo_goes_through_the_upload_intake(samples):
    """The camera (off until asked for: no browser is asked for its camera on load) hands
    its photo to the same intake as an upload: a bad one says why and keeps the image."""
    from streamlit.testing.v1 import AppTest

    from .apptest import open_page

    at = open_page("home.py")
    assert not at.get("camera_input")
    at.toggle(key="camera_on").set_value(True).run()
    assert not at.exception and len(at.get("camera_input")) == 1

    def script():
        import streamlit as st

        from cnnviz.app import sidebar

        class Shot:  # what st.camera_input returns: an UploadedFile
            def __init__(self, data, file_id):
                self.data, self.file_id, self.name = data, file_id, "image.jpg"

            def getvalue(self):
                return self.data

        st.session_state.setdefault("image", {"name": "before.jpg"})
        sidebar.take(Shot(st.session_state["shot"], st.session_state["shot_id"]), "camera_seen", "camera photo.jpg")
        st.write(st.session_state.get("image_error") or f"image: {st.session_state['image']['name']}")

    app = AppTest.from_function(script)
    app.session_state["shot"], app.session_state["shot_id"] = b"\x89PNG not really", "a"
    app.run()
    assert not app.exception and "image: " not in app.markdown[0].value  # refused, with the reason
    app.session_state["shot"], app.session_state["shot_id"] = samples["cat"].read_bytes(), "b"
    app.run()
    assert app.markdown[0].value == "image: camera photo.jpg"


def test_a_failing_page_shows_no_server_path(app, monkeypatch):
    """The catch-all names the kind of failure only: an exception's text may name the server's files."""
    import cnnviz.app.sidebar as sidebar

    def broken():
        raise FileNotFoundError("/srv/cnnviz/secret/weights.pt: no such file")

    monkeypatch.setattr(sidebar, "sidebar", broken)
    app.run()
    assert not app.exception
    shown = [e.value for e in app.error]
    assert len(shown) == 1 and "Something went wrong" in shown[0] and "FileNotFoundError" in shown[0]
    assert "/srv/cnnviz" not in shown[0]
