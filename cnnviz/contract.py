"""The shape every analysis shares (Captum gives twenty methods one `attribute()`;
we give eight analyses one `run()`).

- A **spec** is a frozen, hashable dataclass of an analysis' parameters. `passes(model)`
  says how many forward(+backward) passes it costs, which is how the job runner
  (`cnnviz.jobs`) decides where it runs; `check(model)` validates it and fills defaults.
- Each analysis module has one entry point, `run(model, image, spec, *, progress=None)
  -> Result`: `image` is a PIL image or [1, 3, H, W] pixels in [0, 1] (normalization
  happens inside), or None for analyses of the weights alone.
- A **result** has `to_dict()` (what `python -m cnnviz --json` prints) and carries the
  `model` id and `seconds` of compute, filled in by the runner.
- Bad input raises a `CnnvizError`, whose message is written for the user.
- One `Progress` reports a fraction and a short text, and is how a job is asked to stop.
"""
from __future__ import annotations

import dataclasses
import difflib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Report = Callable[[float, str, Any], None]  # (fraction done, short text, preview image or None)


class CnnvizError(ValueError):
    """Bad input: the message says what is wrong and what to do, for the user's screen."""


class Cancelled(CnnvizError):
    """The job was asked to stop (`Progress.stop()`); its partial result is discarded."""

    def __init__(self, message: str = "Stopped before the end; nothing was kept."):
        super().__init__(message)


class NotFound(CnnvizError):
    """A name (layer, class, method) the model or the registry does not have; the message
    names the closest ones."""

    def __init__(self, what: str, name: str, known: list[str], hint: str = "", *, where: str = "",
                 fallback: bool = False):
        """`where` qualifies the name ("with a spatial output"); `fallback`: when nothing
        is close, offer the last few known names rather than none."""
        self.name = name
        self.candidates = closest(name, known) or (list(known)[-5:] if fallback else [])
        close = f" Closest: {', '.join(self.candidates)}." if self.candidates else ""
        super().__init__(f"No {what} {name!r}{(' ' + where) if where else ''}.{close}{(' ' + hint) if hint else ''}")


def closest(name: str, known: list[str], n: int = 5, cutoff: float = 0.4) -> list[str]:
    """The one "did you mean" lookup: known names closest to `name`, best first."""
    return difflib.get_close_matches(str(name), list(known), n=n, cutoff=cutoff)


class Progress:
    """Progress and cancellation for one job.

    The job calls `progress(fraction, text)` as its passes finish (at least once per
    batch); a caller shows it through `report`, and asks the job to stop with `stop()`:
    the next call inside the job raises `Cancelled`, so every job stops within one
    batch. `preview` carries an intermediate image for jobs that have one."""

    def __init__(self, report: Report | None = None, stop=None):
        """`stop`: the event a stop sets (default: a new one); a worker process passes
        one its stop signal sets."""
        self._report = report
        self._stop = stop if stop is not None else threading.Event()
        self.fraction, self.text = 0.0, ""

    @classmethod
    def of(cls, progress: "Progress | None") -> "Progress":
        return progress if progress is not None else cls()

    def __call__(self, fraction: float, text: str = "", preview=None) -> None:
        self.check()
        self.fraction, self.text = min(max(float(fraction), 0.0), 1.0), text
        if self._report is not None:
            self._report(self.fraction, text, preview)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if a stop was asked (for loops between reports)."""
        if self._stop.is_set():
            raise Cancelled()

    def twin(self, report: Report) -> "Progress":
        """A Progress that reports to `report` instead and shares this one's stop (for a
        job on another thread: a stop from either side reaches it within one batch)."""
        return Progress(report, self._stop)

    def part(self, lo: float, hi: float, prefix: str = "") -> "Progress":
        """The same job's progress, with fractions mapped into [lo, hi] (a step of a job
        made of steps); stopping either stops both."""
        return self.twin(lambda f, text, preview: self(lo + (hi - lo) * f, prefix + text, preview))


@dataclass(frozen=True)
class Spec:
    """Base of every analysis' parameters (frozen dataclasses: hashable cache keys)."""

    def passes(self, model) -> int:
        """Images this job runs through the network on `model` (each a forward, or a
        forward and backward pass; an upper bound where the job may stop early), for an
        image at the model's input size. The runner refuses a job over
        `bounds.MAX_PASSES` and runs one of more than `jobs.SHORT_PASSES` apart."""
        return 1

    def passes_at(self, model, size: tuple[int, int]) -> int:
        """`passes` for pixels of `size` (h, w): a job handed pixels of another size than
        the model's input. Only specs whose cost grows with the image override it."""
        return self.passes(model)

    def check(self, model) -> "Spec":
        """Validated, with defaults filled in for `model`; raises CnnvizError."""
        return self

    def key(self) -> str:
        """A stable text of every parameter (cache keys, file names)."""
        return repr(self)


@dataclass
class Result:
    """Base of every analysis' result. `model` and `seconds` are filled in by the runner."""

    model: str = field(default="", kw_only=True)
    seconds: float = field(default=0.0, kw_only=True)

    def to_dict(self) -> dict:
        """JSON-ready: numpy scalars become floats; arrays are left out (files, not JSON)."""
        out = {}
        for f in dataclasses.fields(self):
            v = jsonable(getattr(self, f.name))
            if v is not _SKIP:
                out[f.name] = v
        return out


_SKIP = object()


def jsonable(v):
    """A value as JSON takes it; arrays and images are skipped (`_SKIP`)."""
    if isinstance(v, np.ndarray) or hasattr(v, "getpixel"):
        return _SKIP
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [x for x in (jsonable(x) for x in v) if x is not _SKIP]
    if isinstance(v, dict):
        return {str(k): x for k, x in ((k, jsonable(x)) for k, x in v.items()) if x is not _SKIP}
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return v
