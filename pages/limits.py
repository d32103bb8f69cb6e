import streamlit as st

from cnnviz import bounds, models, render
from cnnviz import limits as L
from cnnviz.app import cache
from cnnviz.app.clicks import new_click
from cnnviz.app.lecture import Track, big_type, is_on, nav
from cnnviz.app.router import selection
from cnnviz.app.sidebar import comparable
from cnnviz.app.url import note, restore, restore_number, shown
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
# What to look for when the CNN, ViT-B/16 and ConvNeXt meet the same demo (the lecture track),
# from shared/TEACHING.md's "ConvNets and vision transformers".
VERSUS_TEXT = {
    "shuffle": "ViT-B/16 cuts the picture into a 14 x 14 grid of 16-pixel patches and treats each as a token that "
               "carries a position embedding; a CNN's pooling throws positions away at the end, and ConvNeXt is a CNN "
               "rebuilt like a hierarchical transformer. Shuffled tiles keep the texture and destroy the layout: which "
               "network keeps the label, and up to which k?",
    "rotate": "None of the three is built for rotation: a CNN shares its filters across positions, not angles, and ViT, "
              "which assumes even less about images, learned all it knows of orientation from its training data. "
              "Compare where each line falls as the picture turns.",
    "occlude": "Each network's own map: red where hiding a patch costs its class most. A CNN unit sees a region that "
               "grows layer by layer, while every ViT token may attend to every other from the first block: do the "
               "maps put the evidence in the same places?",
    "noise": "Noise covers the fine texture that a CNN's small local filters match first; ViT reads the same pixels "
             "through its 16 x 16 patch embedding (itself a strided convolution). Compare how fast each curve falls "
             "as the noise grows; a chosen perturbation far smaller than this can change an answer (the Adversarial page).",
    "flip": "No network here has a built-in notion of left and right: mirroring hands a CNN mirrored edges and hands "
            "ViT its patches mirrored, at swapped positions. Which ones keep their answer, and how much does each lose?",
}
CUSTOM = "custom"
TRACKS = {"all": Track("All demos", tuple(DEMOS)), "versus": Track("CNN vs Transformer", L.VERSUS_DEMOS)}
assert set(TEXT) == set(PRESETS) == set(DEMOS) and set(VERSUS_TEXT) == set(L.VERSUS_DEMOS)


def _presets(demo: str) -> list[str]:
    return list(PRESETS[demo]) + [CUSTOM]


# ---------------------------------------------------------------- the models beside the selected one

BESIDE = bounds.LIMITS_MODELS - 1
catalog = {e.id: e for e in models.catalog()}
# Offered: what loads without the network (the bundled model, cached zoo models, the untrained twins).
offered = comparable(model.id)


def _listed(ids, most: int = 3) -> str:
    names = [shown(i) for i in ids[:most]] + ([f"{len(ids) - most} more"] if len(ids) > most else [])
    return ", ".join(names)


def _from_link(text: str) -> list[str]:
    """A link's `compare=` (one id, or ids separated by commas): the offered ones, at most
    BESIDE; what is left out is said."""
    ids = list(dict.fromkeys(i.strip() for i in str(text).split(",") if i.strip() and i.strip() != model.id))
    if absent := [i for i in ids if i in catalog and i not in offered]:
        note(f"{models.fetch_hint(absent)} The link's comparison goes on without them.")
    if unknown := [i for i in ids if i not in catalog]:
        note(f"The link's compare={_listed(unknown)} is not used: this page compares with the bundled model, cached "
             "zoo models and the untrained twins (torchvision:NAME@random).")
    kept = [i for i in ids if i in offered]
    if len(kept) > BESIDE:
        note(f"The link compares {len(kept) + 1} models; one chart here holds at most {bounds.LIMITS_MODELS}, so "
             f"{', '.join(offered[i] for i in kept[BESIDE:])} {'is' if len(kept) == BESIDE + 1 else 'are'} left out.")
    return kept[:BESIDE]


def _preset(chosen) -> tuple[list[str], list[str]]:
    """CNN vs Transformer beside this model (`L.versus`): each pretrained where its weights are
    here, else its untrained twin if `chosen` holds it; and the pretrained ones that are neither.
    A twin is never used unasked: a lecturer who says "ViT" means the trained network, and an
    untrained one answers near chance everywhere, which would read as a lesson about ViT."""
    ids, missing = [], []
    for i in L.versus(model):
        if i in offered:
            ids.append(i)
        elif f"{i}@random" in chosen:
            ids.append(f"{i}@random")
        else:
            missing.append(i)
    return ids, missing


def _use_preset(twins: bool = False) -> None:
    """The comparison becomes CNN vs Transformer (`twins`: untrained twins for missing weights)."""
    chosen = list(ss.get("lim_compare") or []) + ([f"{i}@random" for i in L.versus(model)] if twins else [])
    ss["lim_compare"] = _preset(chosen)[0]
    ss["lim_compare_on"] = ss["lim_versus"] = True


# ---------------------------------------------------------------- state (URL first)

SEEDS = (0, 2**31 - 1)

restore("lim_demo", "demo", lambda v: v in DEMOS, why=f"the demos are {', '.join(DEMOS)}")
restore("lim_lecture", "lecture", lambda v: True, is_on)
restore("lim_track", "track", lambda v: v in TRACKS, why=f"the lecture tracks are {', '.join(TRACKS)}")
restore_number("lim_seed", "seed", *SEEDS)
restore_number("lim_point", "point", 0, L.MAX_POINTS - 1)
restore("lim_values", "values", lambda v: bool(v.strip()), why="give values, e.g. 0,15,30 or 0:360:15")
restore("lim_compare_on", "compare", lambda v: True, lambda s: bool(s))
restore("lim_compare", "compare", lambda v: True, _from_link)
ss.setdefault("lim_lecture", False)
ss.setdefault("lim_track", "all")
lecture = bool(ss["lim_lecture"])
track_id = ss["lim_track"] if lecture else "all"
track = TRACKS[track_id]
versus = track_id == "versus"
if ss.get("lim_demo") not in DEMOS:
    ss["lim_demo"] = track.steps[0]
restore("lim_preset", "preset", lambda v: v in _presets(ss["lim_demo"]),
        why=f"the presets of this demo are {', '.join(_presets(ss['lim_demo']))}")
if ss.get("lim_preset") not in _presets(ss["lim_demo"]):
    ss["lim_preset"] = _presets(ss["lim_demo"])[0]
ss.setdefault("lim_seed", 0)
# the selected model may have changed since: it is on the chart anyway, and offered no more
ss["lim_compare"] = [i for i in ss.get("lim_compare") or [] if i in offered][:BESIDE]


def _go(demo: str) -> None:
    """Switch demo: its first preset, the first point."""
    ss["lim_demo"], ss["lim_preset"], ss["lim_point"] = demo, _presets(demo)[0], 0


def _enter_track() -> None:
    if ss["lim_track"] == "versus":  # from the start, with the comparison the track is about
        _go(L.VERSUS_DEMOS[0])
        _use_preset()


if versus:  # the track is the comparison: on, and the preset unless models are chosen (a link's, the twins)
    if ss["lim_demo"] not in track.steps:
        _go(track.steps[0])
    ss["lim_compare_on"] = True
    if not ss["lim_compare"]:
        _use_preset()
demo = ss["lim_demo"]
t = L.TRANSFORMS[demo]

if lecture:
    big_type()

# ---------------------------------------------------------------- header and controls

head, toggle = st.columns([3, 1], vertical_alignment="bottom")
head.title(f"{track.title if versus else 'CNN limits'}: {t.title}" if lecture else "CNN limits")
toggle.toggle("Lecture mode", key="lim_lecture", help="Big type, controls folded away, one demo per screen.")
if not lecture:
    st.markdown("Where convolutional networks break. Each demo changes the image step by step and follows the "
                "original class: its probability, its rank, and where the top-1 label changes.")

if lecture:
    st.segmented_control("Track", list(TRACKS), key="lim_track", required=True, format_func=lambda k: TRACKS[k].title,
                         on_change=_enter_track, label_visibility="collapsed")
    nav("lim", track, demo, _go)
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
    with v3:
        comparing = st.toggle("Compare with other models", key="lim_compare_on")
        st.multiselect("Models beside it", list(offered), key="lim_compare", format_func=offered.get,
                       max_selections=BESIDE, disabled=not comparing, label_visibility="collapsed",
                       placeholder=f"Up to {BESIDE} models beside {model.label}",
                       on_change=lambda: ss.pop("lim_versus", None))
        st.button("CNN vs Transformer", key="lim_versus_preset", on_click=_use_preset,
                  help="ViT-B/16 and ConvNeXt-Tiny beside the selected CNN (beside a transformer: the bundled CNN "
                       "and ConvNeXt-Tiny), pretrained where their weights are on the server.")

preset = ss["lim_preset"] or _presets(demo)[0]
spec = ss["lim_values"] if preset == CUSTOM else PRESETS[demo][preset]
try:
    values = L.parse_values(demo, spec)
except L.LimitsError as e:
    st.error(f"{e} Showing the first preset meanwhile.")
    values = L.parse_values(demo, PRESETS[demo][_presets(demo)[0]])
seed = int(ss["lim_seed"]) if t.seeded else 0

st.markdown(VERSUS_TEXT[demo] if versus else TEXT[demo])
if comparing and (versus or ss.get("lim_versus")) and (missing := _preset(ss["lim_compare"])[1]):
    twins = " and ".join(f"`{i}@random`" for i in missing)
    st.info(models.fetch_hint(missing) + f" Meanwhile the untrained twin{'s' if len(missing) > 1 else ''} ({twins}: the same "
            "architecture with random weights) can stand in, to show the architecture before it learned anything.",
            icon=":material/download:")
    st.button(f"Use the untrained twin{'s' if len(missing) > 1 else ''}", key="lim_twins", on_click=_use_preset,
              args=(True,))

# ---------------------------------------------------------------- compute (cached)

def limits(m: models.Model, probs) -> L.Limits:  # the sweep and the smallest flip; probs: predict's, if known
    spec, clamped = L.spec_for(m, demo, values, seed, probs)  # within the server's bounds, said
    if clamped:
        note(f"{m.label}: {clamped}")
    return cache.run(spec, m, sel.image, sel.image_sha, label=f"{m.label}:")


try:
    rows = [(model, limits(model, sel.probs))]
except CnnvizError as e:  # beyond a bound of the server: said, and nothing else to show
    st.error(str(e))
    st.stop()
for mid in ss["lim_compare"] if comparing else []:  # each model's own sweep, queued by the runner like any job
    try:
        other = cache.model(mid)
        rows.append((other, limits(other, cache.run(PredictSpec(), other, sel.image, sel.image_sha).probs)))
    except CnnvizError as e:
        st.error(f"{offered[mid]}: {e}")

sw = rows[0][1].sweep
n = len(sw.points)


def map_key(k: int) -> str:  # the occlusion maps' charts: the first keeps the key links and tests know
    return "lim_map" + (f"_{k}" if k else "")


if (i := new_click("lim_chart")) is not None:
    ss["lim_point"] = int(i)
for k, (_, r) in enumerate(rows):  # a map's position, found on the first model's grid
    if (i := new_click(map_key(k))) is not None and 0 <= int(i) < len(r.sweep.points):
        if (j := sw.index_of(r.sweep.points[int(i)].value)) is not None:
            ss["lim_point"] = j
if not 0 <= ss.get("lim_point", 0) < n:
    ss["lim_point"] = 0
ss.setdefault("lim_point", 0)
point = int(ss["lim_point"])
value = sw.points[point].value

# ---------------------------------------------------------------- the demo

several = len(rows) > 1
for (m, r), box in zip(rows, st.columns(len(rows)) if several else [st.container()]):  # each model's verdict
    s, who = r.sweep, f" ({m.label})" if several else ""
    if (f := r.flip) is not None:
        (box.success if f.value is not None else box.info)(f"**Smallest flip** ({m.label}): {f.sentence()}")
    elif t.search is None and s.flipped:
        first = s.points[s.flipped[0]]
        box.success(f"**Label change**{who}: at {render._short(first.value)} the top-1 becomes '{first.top1.label}' "
                    f"({first.top1.prob:.0%}) instead of '{s.original.label}'.")
    elif t.search is None:
        box.info(f"'{s.original.label}' stays the top-1{' of ' + m.label if several else ''} at every point of this "
                 "sweep.")

if demo == "occlude":  # each model's map, side by side
    cols = st.columns([1] * len(rows) if several else [3, 2])
    for k, (m, r) in enumerate(rows):
        with cols[k]:
            if several:
                st.markdown(f"**{m.label}**")
            st.plotly_chart(render.occlusion_figure(m.input_image(sel.image), r.sweep, r.sweep.index_of(value),
                                                    360 if several else 560),
                            key=map_key(k), on_select="rerun", selection_mode="points", config={"displaylogo": False})
    (st if several else cols[1]).caption(
        f"Red: where hiding the image costs the original class most ('{sw.original.label}', {sw.original.prob:.0%} "
        "untouched" + (", for the first network; each network follows its own" if several else "")
        + "). Crosses: positions where the top-1 changes. Click a position to show it.")
else:
    st.plotly_chart(render.limits_figure([r.sweep for _, r in rows], [m.label for m, _ in rows], point, thumbs=n <= 40),
                    key="lim_chart", on_select="rerun", selection_mode="points", config={"displaylogo": False})
    st.caption("Top: the original class's probability; bottom: its rank (1 = still the top class). Red points: "
               "another class is on top; dotted lines: the top-1 label changes. Click a point to show it.")

# The highlighted point: moving it reruns the page from the caches, no network pass.
if n > 1:
    st.select_slider("Highlighted point", options=list(range(n)), key="lim_point",
                     format_func=lambda i: render._short(sw.points[i].value))


def answer(m: models.Model, s: L.Sweep) -> str:
    """What `m` says at the highlighted value."""
    if (i := s.index_of(value)) is None:
        return f"**{m.label}** has no point at {render._short(value)}."
    p = s.points[i]
    changed = p.top1.index != s.original.index
    return (f"**{m.label}** says **{p.top1.label}** ({p.top1.prob:.1%})" + (" instead of" if changed else ", as for")
            + f" the untouched image ('{s.original.label}', {s.original.prob:.1%}).  \n"
            f"'{s.original.label}' now has {p.orig_prob:.1%}, rank {p.orig_rank}.")


big, info = st.columns([1, 2] if not lecture else [1, 1])
big.image(L.apply(model, sel.image, demo, value, seed, sw.patch).squeeze(0).permute(1, 2, 0).numpy(),
          caption=f"{t.title}: {render._short(value)}", width="stretch", clamp=True)
with info:
    for m, r in rows:
        st.markdown(answer(m, r.sweep))

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
if comparing and ss["lim_compare"]:
    params["compare"] = ",".join(ss["lim_compare"])
if lecture:
    params["lecture"] = "1"
if versus:
    params["track"] = track_id
for k in ("values", "seed", "compare", "lecture", "track"):
    if k not in params and k in qp:
        del qp[k]
qp.update(params)
