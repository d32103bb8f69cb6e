"""A job that outlives the script run that started it (training LeNet-5): it runs on a thread
of its own, held in the session's state, so the page stays usable while it runs, reruns do
not stop it, and each session has its own. The job goes through the process's job runner
(its heavy-job slots, worker processes when served); the thread only waits for it. The page
reads `latest` (the last progress report) and draws it, e.g. from an `st.fragment` that
reruns every second; no Streamlit call is made from the thread."""
from __future__ import annotations

import threading

from cnnviz import jobs
from cnnviz.contract import CnnvizError, Progress


class Background:
    def __init__(self, model, image, spec):
        self.spec = spec
        self.latest: tuple[float, str, object] | None = None  # (fraction, text, preview)
        self.result = None
        self.error: str | None = None
        self.progress = Progress(self._report)
        self._thread = threading.Thread(target=self._work, args=(model, image, spec), daemon=True,
                                        name="cnnviz-background")
        self._thread.start()

    def _report(self, fraction: float, text: str, preview) -> None:
        self.latest = (fraction, text, preview)  # one assignment: a reader sees a whole report

    def _work(self, model, image, spec) -> None:
        try:
            self.result = jobs.run(model, image, spec, progress=self.progress)
        except CnnvizError as e:  # stopped, refused, or the user's own mistake: said on the page
            self.error = str(e)
        except Exception as e:  # a bug: still a sentence, never a traceback on the page
            self.error = f"The job failed ({type(e).__name__}: {e})."

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Ask the job to stop at its next report (within one batch)."""
        self.progress.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job to end (tests); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
