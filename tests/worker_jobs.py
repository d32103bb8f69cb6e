"""An analysis for tests/test_workers.py that fails inside the worker, after its checks
passed in the caller (the worker imports it by module name, as it does cnnviz's own)."""
from dataclasses import dataclass

from cnnviz.contract import CnnvizError, Spec


@dataclass(frozen=True)
class FailingSpec(Spec):
    def passes(self, model) -> int:
        return 10  # heavy: it goes to a worker


def run(model, image, spec, *, progress=None):
    raise CnnvizError("This analysis cannot answer for this image.")
