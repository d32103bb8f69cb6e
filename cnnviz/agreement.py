"""Methods side by side: their maps, how they agree, and how faithful each is.

One job, `run(model, image, AgreementSpec(methods, target, ...))` -> `Agreement`: every
method's map for one class (the Saliency page's "Methods side by side" tab, and
`python -m cnnviz agree`), the pairwise rank correlations of the maps (Spearman, as the
randomization check compares maps; a method is compared with itself as 1), and each
map's deletion and insertion curves next to a random order's, all in one batched set of
passes (`cnnviz.faithfulness`). A method this model cannot take (a guided one on a
GELU network) is left out with its reason, not an error for the rest.

Two models side by side (the Saliency page's comparison, `saliency --compare ID`): `pair`
says what a second model is asked so that it explains the same image and class as the
first (and why anything differs), `side_by_side` sets its map beside the first's, with
their rank correlation at a common resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import bounds, faithfulness
from .contract import CnnvizError, NotFound, Progress, Result, Spec
from .model import Model
from .predict import Top, classify
from .saliency import METHODS, Attribution, SaliencySpec, attribute, check_class, unguided, upsample
from .trust import spearman

DEFAULT_METHODS = ("gradcam", "gradcampp", "gradients", "ig")
AGREE = 0.5  # rank correlation from which two maps are said to agree
APART = 0.2  # a method whose mean correlation with the others is below this stands apart


class AgreementError(CnnvizError):
    """Parameters of a comparison that cannot work."""


@dataclass(frozen=True)
class AgreementSpec(Spec):
    """Maps of `methods` (at least two; Score-CAM, one pass per channel, is not offered)
    for `target` (None: the top-1), at `layer` for the CAM methods (None: the default),
    scored by deletion and insertion with `steps` cuts; `seed`: the random order."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    target: int | None = None
    layer: str | None = None
    contrast: int | None = None
    steps: int = faithfulness.STEPS
    seed: int = 0

    def check(self, model) -> "AgreementSpec":
        if isinstance(self.methods, str):
            raise AgreementError(f"Give the methods as a list of names, not the text {bounds._shown(self.methods)}.")
        methods = tuple(dict.fromkeys(self.methods))
        for m in methods:
            if m not in METHODS or m == "scorecam":
                raise NotFound("method", m, comparable_methods())
        if len(methods) < 2:
            raise AgreementError("Choose at least two methods to compare.")
        layer = self.layer
        if any(METHODS[m].takes_layer for m in methods):
            layer = SaliencySpec("gradcam", layer=layer).check(model).layer
        checked = replace(self, methods=methods, target=check_class(model, self.target), layer=layer,
                          contrast=check_class(model, self.contrast),
                          steps=bounds.whole(self.steps, "steps", 2, bounds.MAX_CURVE_STEPS, AgreementError),
                          seed=bounds.seed(self.seed, AgreementError))
        return self if checked == self else checked

    def method_spec(self, method: str, target: int | None) -> SaliencySpec:
        return SaliencySpec(method, target, self.layer if METHODS[method].takes_layer else None, self.contrast)

    def passes(self, model) -> int:
        """Each method's map with the target known, the top-1's pass when it is not, and
        the curves of every map and the random order."""
        maps = sum(METHODS[m].passes(self.method_spec(m, 0), model) for m in self.methods if m in METHODS)
        return maps + (self.target is None) + faithfulness.passes(len(self.methods) + 1, int(self.steps))


def comparable_methods() -> list[str]:
    return [m for m in METHODS if m != "scorecam"]


@dataclass
class Agreement(Result):
    target: int
    label: str
    methods: list[str]  # the methods compared (those the model could take), in the order asked
    maps: dict[str, np.ndarray] = field(repr=False)  # method -> map [H, W] at input resolution
    matrix: np.ndarray = field(repr=False)  # [n, n] rank correlations, symmetric, unit diagonal
    deletion: dict[str, list[float]]  # method (and faithfulness.RANDOM) -> the target's probability
    insertion: dict[str, list[float]]
    areas: dict[str, dict[str, float]]  # method (and RANDOM) -> {"deletion": area, "insertion": area}
    skipped: dict[str, str]  # method -> why this model cannot take it
    summary: str = ""  # which methods agree, which stand apart, which is most faithful

    def to_dict(self) -> dict:
        return {"model": self.model, "target": {"index": self.target, "label": self.label},
                "methods": list(self.methods), "matrix": self.matrix.round(6).tolist(),
                "deletion": self.deletion, "insertion": self.insertion, "areas": self.areas,
                "skipped": self.skipped, "summary": self.summary, "seconds": self.seconds}


def matrix(maps: list[np.ndarray]) -> np.ndarray:
    """Pairwise rank correlations: symmetric by construction, 1 on the diagonal."""
    n = len(maps)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = spearman(maps[i], maps[j])
    return out


def summary(labels: list[str], rho: np.ndarray, faithful: dict[str, float] | None = None) -> str:
    """A sentence or three: the pairs that agree, the methods that stand apart, and (given
    each method's insertion minus deletion area) the most faithful one."""
    n = len(labels)
    pairs = sorted(((rho[i, j], i, j) for i in range(n) for j in range(i + 1, n)), reverse=True)
    agree = [f"{labels[i]} and {labels[j]} (ρ = {r:.2f})" for r, i, j in pairs if r >= AGREE]
    mean = [(rho[i].sum() - 1) / (n - 1) for i in range(n)]
    apart = [f"{labels[i]} (mean ρ = {mean[i]:.2f} with the others)" for i in range(n) if mean[i] < APART]
    said = [("Agree: " + "; ".join(agree) + ".") if agree else
            f"No two methods agree (every rank correlation is below {AGREE})."]
    if apart and len(apart) < n:
        said.append("Stands apart: " + "; ".join(apart) + ".")
    if faithful:
        best = max(faithful, key=faithful.get)
        said.append(f"Most faithful here: {best} (largest insertion minus deletion area, {faithful[best]:.2f}).")
    return " ".join(said)


def run(model: Model, image, spec: AgreementSpec, *, progress: Progress | None = None) -> Agreement:
    """Each method's map (60% of the progress), then every curve in one batched set."""
    spec = spec.check(model)
    progress = Progress.of(progress)
    x = model.to_pixels(image)
    target = spec.target if spec.target is not None else int(classify(model, x)[0].argmax())
    maps, skipped, label = {}, {}, model.categories[target]
    for i, m in enumerate(spec.methods):
        part = progress.part(0.6 * i / len(spec.methods), 0.6 * (i + 1) / len(spec.methods),
                             f"{METHODS[m].label}: ")
        s = spec.method_spec(m, target)
        try:
            maps[m] = attribute(model, x, m, target, s.layer, s.contrast, progress=part).map
        except CnnvizError as e:  # a method this model cannot take: said, and the others go on
            skipped[m] = str(e)
    methods = list(maps)
    rho = matrix([maps[m] for m in methods]) if methods else np.zeros((0, 0))
    curves = faithfulness.curves(model, x, {**maps, faithfulness.RANDOM: None}, target, spec.steps, spec.seed,
                                 progress=progress.part(0.6, 1.0, "Deletion and insertion: "))
    areas = {m: {k: faithfulness.area(c[k]) for k in faithfulness.KINDS} for m, c in curves.items()}
    labels = [METHODS[m].label for m in methods]
    faithful = {METHODS[m].label: areas[m]["insertion"] - areas[m]["deletion"] for m in methods}
    said = summary(labels, rho, faithful) if len(methods) >= 2 else "Fewer than two methods could run on this model."
    return Agreement(target, label, methods, maps, rho,
                     {m: c["deletion"].tolist() for m, c in curves.items()},
                     {m: c["insertion"].tolist() for m, c in curves.items()}, areas, skipped, said)


# ---------------------------------------------------------------- two models, one image

@dataclass(frozen=True)
class Pairing:
    """What a second model is asked when it explains the same image as a first one."""

    spec: SaliencySpec  # the second model's
    notes: tuple[str, ...] = ()  # one sentence per way it differs from the first model's spec


def pair(first: Model, second: Model, spec: SaliencySpec) -> Pairing:
    """The second model's spec for the first's `spec`: the same method where it can take it
    (a CAM method at its own default layer, since an explicit layer names one of the first
    model's), else Grad-CAM; the same class and contrast where both models share their
    categories, else its own top-1 (target None). Every change is said in one sentence."""
    method, notes = spec.method, []
    if METHODS[method].guided and (bad := unguided(second)):
        notes.append(f"{second.label} cannot take {METHODS[method].label}: it applies {', '.join(bad)}, where the "
                     "guided rule is not defined, so it shows Grad-CAM instead.")
        method = "gradcam"
    if METHODS[method].takes_layer and spec.layer not in (None, first.gradcam_layer):
        notes.append(f"{second.label} is explained at its own default layer, `{second.gradcam_layer}`: the layer "
                     f"chosen above is one of {first.label}'s.")
    same = list(first.categories) == list(second.categories)
    if not same:
        notes.append(f"{second.label}'s {len(second.categories)} classes are not {first.label}'s, so it explains "
                     "its own top class.")
    return Pairing(replace(spec, method=method, layer=None, target=spec.target if same else None,
                           contrast=spec.contrast if same else None), tuple(notes))


def common_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Spearman rank correlation of two maps at a common resolution (the smaller side of
    each axis; a larger map is resampled to it, bilinear), and that resolution."""
    size = (min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1]))
    a, b = (m if m.shape == size else upsample(m, size) for m in (a, b))
    return spearman(a, b), size


@dataclass
class ModelPair:
    """A second model's map of the image beside the first's: its attribution, its top-1,
    the two maps' rank correlation, and sentences for what differs and what rho means."""

    second: str  # the second model's id
    attribution: Attribution = field(repr=False)
    top1: Top
    rho: float
    size: tuple[int, int]  # the resolution rho was computed at
    notes: list[str]
    sentence: str

    def to_dict(self) -> dict:
        a = self.attribution
        return {"model": self.second, "method": a.method, "layer": a.layer,
                "target": {"index": a.target, "label": a.label, "prob": a.prob}, "top1": self.top1.to_dict(),
                "spearman": self.rho, "size": list(self.size), "notes": list(self.notes), "sentence": self.sentence,
                "seconds": a.seconds}


def side_by_side(first: Model, first_map: np.ndarray, second: Model, attribution: Attribution,
                 pairing: Pairing, top1: Top) -> ModelPair:
    """The second model's `attribution` (of `pairing.spec`) beside the first model's map."""
    rho, size = common_correlation(first_map, attribution.map)
    notes = list(pairing.notes)
    if (first.resize_size, tuple(first.input_size)) != (second.resize_size, tuple(second.input_size)):
        notes.append(f"The two models crop the picture differently ({first.label} from {first.resize_size} px, "
                     f"{second.label} from {second.resize_size} px), so their maps cover slightly different parts.")
    how = ("largely the same pixels drive both" if rho >= AGREE else "they partly agree" if rho >= APART
           else "they rank the pixels differently: each model looks at other evidence")
    sentence = (f"Rank correlation of the two maps (Spearman, at {size[0]}x{size[1]}): ρ = {rho:.2f}, {how} "
                "(1: the same order of pixels, 0: unrelated).")
    return ModelPair(second.id, attribution, top1, rho, size, notes, sentence)
