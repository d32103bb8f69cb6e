import streamlit as st

from cnnviz import limits as L
from cnnviz import models, render
from cnnviz.app import cache
from cnnviz.app.clicks import new_click
from cnnviz.app.lecture import big_type, is_on
from cnnviz.app.router import selection
from cnnviz.app.url import note, restore, restore_number
from cnnviz.contract import CnnvizError
from cnnviz.predict import PredictSpec

sel = selection()
model = sel.model
ss, qp = st.session_state, st.query_params

DEMOS = list(L.TRANSFORMS)
# Two sentences per demo, from the course notes (shared/TEACHING.md).
TEXT = {
    "rotate": "Convolution shares its filters across positions, so shifting an object costs it little, but nothing in "
              "it knows about turning. A network that mostly saw upright objects can fail when they are rotated; the "
              "usual remedy is more training data in more poses, not a principled fix.",
    "scale": "Filters have a fixed size, so an object made much larger or smaller than in training shows the network "
             "parts at sizes it never matched. Zooming out shrinks the picture into a grey frame; zooming in leaves only "
             "its centre.",
    "translate": "Shared weights make a conv layer translation equivariant and pooling makes the answer roughly "
                 "invariant, so a shifted object should keep its label. See how far that holds as it slides toward "
                 "the edge (grey fills the gap).",
    "flip": "A CNN has no built-in notion of left and right: a left shoe and a right shoe are just different patterns. "
            "Mirroring can keep or change the answer in ways a person would not expect.",
    "brightness": "Objects under new lighting are often missed; photographs taken in new conditions (ObjectNet) cost "
                  "ImageNet models much of their accuracy. Each step here halves or doubles the light.",
    "contrast": "Lighting also changes contrast: flatten it and the edges and textures that the first layers answer "
                "to fade away. A person still recognises the object long after that.",
    "gamma": "Gamma bends the mid-tones as another camera or exposure curve would, while black and white stay put. "
             "People barely notice; texture-matching filters may.",
    "blur": "Early layers respond to edges and fine textures, and blur removes exactly those. CNNs match such cues "
            "rather than understand the object, so confidence can go while the object is still plain to see.",
    "noise": "Random noise of moderate size usually leaves the answer alone, while a tiny, carefully chosen "
             "perturbation changes it (panda to gibbon, on the Adversarial page). That gap is the point: the net is "
             "robust to random directions and fragile in a few chosen ones.",
    "occlude": "A grey patch slides over the image and the map shows how much the original class's probability drops "
               "with the patch in each place (Zeiler and Fergus). Red marks the evidence the network relies on, which "
               "is not always the object.",
    "shuffle": "Pooling discards where features are, so a network may still fire for eyes, nose and mouth in the "
               "wrong places (the argument behind capsule networks). Cut the image into k x k tiles and shuffle them: "
               "local texture survives, the whole is destroyed; does the label survive?",
}
# Preset values per demo; "" is the backend's default demo (the CLI's too). Lecture mode uses these.
PRESETS = {
    "rotate": {"full turn": "", "small tilts": "-45:45:5", "upside down": "150:210:5"},
    "scale": {"zoom out and in": "", "far away": "-4:0:0.25", "close up": "0:3:0.25"},
    "translate": {"left to right": "", "small shifts": "-0.1:0.1:0.01"},
    "flip": {"mirror": ""},
    "brightness": {"dark to bright": "", "dusk": "-6:0:0.5"},
    "contrast": {"flat to harsh": "", "fading": "-6:0:0.5"},
    "gamma": {"both ways": "", "strong": "-4:4:0.5"},
    "blur": {"out of focus": "", "fine steps": "0:3:0.25"},
    "noise": {"growing noise": "", "faint": "0:0.1:0.005"},
    "occlude": {"patch 56 px": "", "patch 112 px": "112", "patch 80 px": "80"},
    "shuffle": {"k = 1 to 16": "", "coarse": "1,2,3,4"},
}
CUSTOM = "custom"
assert set(TEXT) == set(PRESETS) == set(DEMOS)


def _presets(demo: str) -> list[str]:
    return list(PRESETS[demo]) + [CUSTOM]


# ---------------------------------------------------------------- state (URL first)

# Second models on offer for "Compare" (read before the URL, which may name one).
others = {e.id: e.label for e in models.catalog() if e.available and e.id != model.id}
others.setdefault("torchvision:resnet18@random", "ResNet-18, random init (a network that learned nothing)")
SEEDS = (0, 2**31 - 1)

restore("lim_demo", "demo", lambda v: v in DEMOS, why=f"the demos are {', '.join(DEMOS)}")
restore("lim_lecture", "lecture", lambda v: True, is_on)
restore_number("lim_seed", "seed", *SEEDS)
restore_number("lim_point", "point", 0, L.MAX_POINTS - 1)
restore("lim_values", "values", lambda v: bool(v.strip()), why="give values, e.g. 0,15,30 or 0:360:15")
restore("lim_compare_on", "compare", lambda v: True, lambda s: bool(s))
restore("lim_compare", "compare", lambda v: v in others, why=f"the models to compare with are {', '.join(others)}")
if ss.get("lim_demo") not in DEMOS:
    ss["lim_demo"] = DEMOS[0]
restore("lim_preset", "preset", lambda v: v in _presets(ss["lim_demo"]),
        why=f"the presets of this demo are {', '.join(_presets(ss['lim_demo']))}")
if ss.get("lim_preset") not in _presets(ss["lim_demo"]):
    ss["lim_preset"] = _presets(ss["lim_demo"])[0]
ss.setdefault("lim_seed", 0)
ss.setdefault("lim_lecture", False)


def _go(demo: str) -> None:
    """Switch demo: its first preset, the first point."""
    ss["lim_demo"], ss["lim_preset"], ss["lim_point"] = demo, _presets(demo)[0], 0


def _step(delta: int) -> None:
    _go(DEMOS[(DEMOS.index(ss["lim_demo"]) + delta) % len(DEMOS)])


for chart in ("lim_chart", "lim_map"):
    if (i := new_click(chart)) is not None:
        ss["lim_point"] = int(i)

lecture = bool(ss["lim_lecture"])
demo = ss["lim_demo"]
t = L.TRANSFORMS[demo]

if lecture:
    big_type()

# ---------------------------------------------------------------- header and controls

head, toggle = st.columns([3, 1], vertical_alignment="bottom")
head.title(f"CNN limits: {t.title}" if lecture else "CNN limits")
toggle.toggle("Lecture mode", key="lim_lecture", help="Big type, controls folded away, one demo per screen.")
if not lecture:
    st.markdown("Where convolutional networks break. Each demo changes the image step by step and follows the "
                "original class: its probability, its rank, and where the top-1 label changes.")

if lecture:
    prev, where, nxt = st.columns([1, 2, 1], vertical_alignment="center")
    prev.button("Previous demo", key="lim_prev", on_click=_step, args=(-1,), width="stretch")
    where.markdown(f"<div style='text-align:center'>Demo {DEMOS.index(demo) + 1} of {len(DEMOS)}</div>",
                   unsafe_allow_html=True)
    nxt.button("Next demo", key="lim_next", on_click=_step, args=(1,), width="stretch", type="primary")
    st.segmented_control("Preset", _presets(demo), key="lim_preset", label_visibility="collapsed")
    controls = st.expander("Controls", expanded=False)
else:
    controls = st.container()

with controls:
    c1, c2 = st.columns([2, 3])
    c1.selectbox("Demo", DEMOS, key="lim_demo", format_func=lambda d: L.TRANSFORMS[d].title,
                 on_change=lambda: _go(ss["lim_demo"]))
    if not lecture:
        c2.segmented_control("Preset", _presets(demo), key="lim_preset")
    v1, v2, v3 = st.columns([3, 1, 2])
    custom = ss.get("lim_preset") == CUSTOM
    ss.setdefault("lim_values", ",".join(f"{v:g}" for v in t.default))
    v1.text_input(f"Values ({t.unit})" + ("" if demo == "occlude" else ": a list (0,15,30) or START:STOP:STEP"),
                  key="lim_values", disabled=not custom,
                  help="Choose the 'custom' preset to type your own values.")
    v2.number_input("Seed", *SEEDS, key="lim_seed", disabled=not t.seeded,
                    help="Noise field and tile order; the same seed gives the same images.")
    if ss.get("lim_compare") not in others:
        ss["lim_compare"] = next(iter(others))
    with v3:
        comparing = st.toggle("Compare with another model", key="lim_compare_on")
        other_id = st.selectbox("Second model", list(others), key="lim_compare", format_func=others.get,
                                disabled=not comparing, label_visibility="collapsed")

preset = ss["lim_preset"] or _presets(demo)[0]
spec = ss["lim_values"] if preset == CUSTOM else PRESETS[demo][preset]
try:
    values = L.parse_values(demo, spec)
except L.LimitsError as e:
    st.error(f"{e} Showing the first preset meanwhile.")
    values = L.parse_values(demo, PRESETS[demo][_presets(demo)[0]])
seed = int(ss["lim_seed"]) if t.seeded else 0

st.markdown(TEXT[demo])

# ---------------------------------------------------------------- compute (cached)

def limits(m: models.Model, probs) -> L.Limits:  # the sweep and the smallest flip; probs: predict's, if known
    fitted, clamped = L.fit_values(demo, values, tuple(m.input_size))  # within the server's bounds, said
    if clamped:
        note(f"{m.label}: {clamped}")
    return cache.run(L.LimitsSpec(demo, fitted, seed, probs=probs), m, sel.image, sel.image_sha, label=f"{m.label}:")


try:
    sw, flip = (res := limits(model, sel.probs)).sweep, res.flip
except CnnvizError as e:  # beyond a bound of the server: said, and nothing else to show
    st.error(str(e))
    st.stop()
other = other_sw = other_flip = None
if comparing:
    try:
        other = cache.model(other_id)
    except models.ModelError as e:
        st.error(str(e))
if other is not None:
    try:
        o = limits(other, cache.run(PredictSpec(), other, sel.image, sel.image_sha).probs)
        other_sw, other_flip = o.sweep, o.flip
    except CnnvizError as e:
        st.error(str(e))
        other = None

n = len(sw.points)
if not 0 <= ss.get("lim_point", 0) < n:
    ss["lim_point"] = 0
ss.setdefault("lim_point", 0)

# ---------------------------------------------------------------- the demo

for who, f in ((model.label, flip), *([(other.label, other_flip)] if other_flip else [])):
    if f is not None:
        (st.success if f.value is not None else st.info)(f"**Smallest flip** ({who}): {f.sentence()}")
if t.search is None and sw.flipped:
    first = sw.points[sw.flipped[0]]
    st.success(f"**Label change**: at {render._short(first.value)} the top-1 becomes '{first.top1.label}' "
               f"({first.top1.prob:.0%}) instead of '{sw.original.label}'.")
elif t.search is None:
    st.info(f"'{sw.original.label}' stays the top-1 at every point of this sweep.")

point = int(ss["lim_point"])
names = [model.label] + ([other.label] if other_sw else [])
if demo == "occlude":
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(render.occlusion_figure(model.input_image(sel.image), sw, point), key="lim_map",
                        on_select="rerun", selection_mode="points", config={"displaylogo": False})
    with right:
        st.caption(f"Red: where hiding the image costs '{sw.original.label}' most ({sw.original.prob:.0%} "
                   f"untouched). Crosses: positions where the top-1 changes. Click a position to show it.")
        if other_sw:
            st.plotly_chart(render.occlusion_figure(other.input_image(sel.image), other_sw, point, 360),
                            key="lim_map_b", config={"displaylogo": False})
            st.caption(f"The same sweep on {other.label}.")
else:
    st.plotly_chart(render.limits_figure([s for s in (sw, other_sw) if s], names, point, thumbs=n <= 40),
                    key="lim_chart", on_select="rerun", selection_mode="points", config={"displaylogo": False})
    st.caption("Top: the original class's probability; bottom: its rank (1 = still the top class). Red points: "
               "another class is on top; dotted lines: the top-1 label changes. Click a point to show it.")

# The highlighted point: moving it reruns the page from the caches, no network pass.
if n > 1:
    st.select_slider("Highlighted point", options=list(range(n)), key="lim_point",
                     format_func=lambda i: render._short(sw.points[i].value))
p = sw.points[point]
big, info = st.columns([1, 2] if not lecture else [1, 1])
big.image(L.apply(model, sel.image, demo, p.value, seed, sw.patch).squeeze(0).permute(1, 2, 0).numpy(),
          caption=f"{t.title}: {render._short(p.value)}", width="stretch", clamp=True)
with info:
    changed = p.top1.index != sw.original.index
    st.markdown(f"**{model.label}** says **{p.top1.label}** ({p.top1.prob:.1%})" + (" instead of" if changed else ", as for")
                + f" the untouched image ('{sw.original.label}', {sw.original.prob:.1%}).  \n"
                f"'{sw.original.label}' now has {p.orig_prob:.1%}, rank {p.orig_rank}.")
    if other_sw:
        q = other_sw.points[point]
        st.markdown(f"**{other.label}** says **{q.top1.label}** ({q.top1.prob:.1%}); its original class "
                    f"'{other_sw.original.label}' has {q.orig_prob:.1%}, rank {q.orig_rank}.")

if not lecture or demo != "occlude":
    st.markdown("**Every step**: the network's input, its top-1 and probability (* = not the original class)")
    st.image(list(sw.thumbs), width=96 if not lecture else 128,
             caption=[f"{render._short(q.value)}: {q.top1.label[:16]} {q.top1.prob:.0%}"
                      + (" *" if q.top1.index != sw.original.index else "") for q in sw.points])

# ---------------------------------------------------------------- URL

params = {"demo": demo, "preset": preset, "point": str(point)}
if preset == CUSTOM:
    params["values"] = ss["lim_values"]
if t.seeded:
    params["seed"] = str(seed)
if comparing:
    params["compare"] = other_id
if lecture:
    params["lecture"] = "1"
for k in ("values", "seed", "compare", "lecture"):
    if k not in params and k in qp:
        del qp[k]
qp.update(params)
