"""Downloads that outlive whoever asked for them: one per file per process, in a thread.

A Streamlit rerun (the user picks a sample while a model downloads) interrupts the
session's script wherever it draws, progress callbacks included. So a download never runs
in the caller's thread: `fetch(url, dst)` starts it in a background thread (or joins the
one already running for `dst`) and returns its `Download`; `Download.wait(progress)` polls
it, reporting progress, and whatever interrupts the wait leaves the download running. The
next caller joins it where it is.

On disk: the bytes go into a hidden partial file beside the destination
(`.<name>.partial`), kept when the transfer breaks off or the process is killed; the next
attempt resumes it with an HTTP Range request when the server allows it (else starts again,
and says so in `Download.note`). A finished file is checked against the expected SHA-256
prefix (torchvision names its weights files `<name>-<first hex digits of the sha256>.pth`,
which torch.hub checks the same way) and only then renamed onto `dst` atomically: a file at
`dst` is always whole and verified. An advisory lock (`.<name>.lock`, flock) keeps two
processes sharing the folder from writing one partial file at once; the second waits.

No Streamlit, no torch: `cnnviz.models` turns these errors into its messages.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .contract import CnnvizError, Progress

MiB = 2 ** 20
CHUNK = 256 * 1024  # bytes read at a time (progress moves at least this often)


class DownloadError(CnnvizError):
    """A download that did not finish; the message says why (callers add what to do)."""


class Unreachable(DownloadError):
    """The server could not be reached (offline, refused, not found). Message: the reason."""


class BrokeOff(DownloadError):
    """The transfer started and stopped before the end; the partial file is kept."""


class Corrupt(DownloadError):
    """The whole file arrived but does not match its hash; nothing is kept."""


class Download:
    """One file being fetched. `done_bytes` / `total_bytes` (0: not known yet), `note`
    (resumed, restarted, waiting for another process), `finished` (an Event), `error`."""

    def __init__(self, url: str, dst: Path, sha256: str | None, timeout: float):
        self.url, self.dst, self.sha256, self.timeout = url, Path(dst), sha256, timeout
        self.partial = partial_file(self.dst)
        self.done_bytes = self.total_bytes = 0
        self.note = ""
        self.error: BaseException | None = None
        self.finished = threading.Event()

    @property
    def fraction(self) -> float:
        return min(self.done_bytes / self.total_bytes, 1.0) if self.total_bytes else 0.0

    @property
    def text(self) -> str:
        done = f"{self.done_bytes / MiB:.0f} of {self.total_bytes / MiB:.0f} MB" if self.total_bytes \
            else f"{self.done_bytes / MiB:.0f} MB"
        return f"{done} ({self.note})" if self.note else done

    def wait(self, progress: Progress | None = None, poll: float = 0.25) -> Path:
        """Block until the file is at `dst`, calling `progress(fraction, text)` every
        `poll` seconds (an exception from it ends the wait, not the download); raises the
        download's `DownloadError` if it failed."""
        if progress is None:
            self.finished.wait()
        else:
            while not self.finished.wait(poll):
                progress(self.fraction, self.text)
        if self.error is not None:
            raise type(self.error)(*self.error.args)  # a copy: several threads may raise it
        if progress is not None:
            progress(1.0, self.text)
        return self.dst


def partial_file(dst: Path) -> Path:
    """Where the bytes of `dst` collect until it is whole and verified."""
    return Path(dst).with_name(f".{Path(dst).name}.partial")


class Manager:
    """The process's downloads, at most one per destination file."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[Path, Download] = {}

    def fetch(self, url: str, dst: Path, *, sha256: str | None = None, timeout: float = 30) -> Download:
        """The running download of `dst`, else a new one (started in a thread)."""
        dst = Path(dst)
        with self._lock:
            d = self._running.get(dst)
            if d is None:
                d = self._running[dst] = Download(url, dst, sha256, timeout)
                threading.Thread(target=self._run, args=(d,), name=f"download {dst.name}", daemon=True).start()
            return d

    def get(self, dst: Path) -> Download | None:
        """The download of `dst` running now, if any."""
        with self._lock:
            return self._running.get(Path(dst))

    def _run(self, d: Download) -> None:
        try:
            _transfer(d)
        except DownloadError as e:
            d.error = e
        except BaseException as e:  # noqa: BLE001 (a thread must not die silently)
            d.error = BrokeOff(f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                if self._running.get(d.dst) is d:
                    del self._running[d.dst]
            d.finished.set()


MANAGER = Manager()


def fetch(url: str, dst: Path, *, sha256: str | None = None, timeout: float = 30) -> Download:
    """Start or join the process's download of `url` into `dst` (see the module's docstring)."""
    return MANAGER.fetch(url, dst, sha256=sha256, timeout=timeout)


# ---------------------------------------------------------------- the transfer (in its thread)

@contextlib.contextmanager
def _exclusive(d: Download):
    """This file's download lock across processes (best effort: none where flock is not)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        fd = os.open(d.dst.with_name(f".{d.dst.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only folder: the download will say so when it writes
        yield
        return
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                d.note = "another process is downloading this file; waiting for it"
                with contextlib.suppress(OSError):
                    d.done_bytes = d.partial.stat().st_size
                time.sleep(0.5)
        d.note = ""
        yield
    finally:
        os.close(fd)  # releases the lock


def _transfer(d: Download) -> None:
    with contextlib.suppress(OSError):
        d.dst.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(d):
        if d.dst.exists():  # another process finished it meanwhile
            d.done_bytes = d.total_bytes = d.dst.stat().st_size
            return
        digest = _receive(d)
        if d.sha256 and not digest.startswith(d.sha256):
            with contextlib.suppress(OSError):
                d.partial.unlink()
            raise Corrupt(f"the file's SHA-256 starts {digest[:len(d.sha256)]}, not {d.sha256}")
        try:
            os.replace(d.partial, d.dst)
        except OSError as e:
            raise DownloadError(f"cannot write into {d.dst.parent}: {e.strerror or e}") from None


def _receive(d: Download) -> str:
    """Bring `d.partial` to the whole file (resuming it where allowed); its SHA-256."""
    for _ in range(2):  # a second time only after a refused range (the partial file was bad)
        have = d.partial.stat().st_size if d.partial.exists() else 0
        try:
            req = urllib.request.Request(d.url, headers={"Range": f"bytes={have}-"}) if have else d.url
            resp = urllib.request.urlopen(req, timeout=d.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the partial file is no prefix of this file: start again
                d.partial.unlink()
                d.note = "the kept part did not fit the file; starting again"
                continue
            raise Unreachable(f"the server answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise Unreachable(str(getattr(e, "reason", e))) from None
        with resp:
            status = getattr(resp, "status", None) or 200
            if have and status == 206 and _content_range(_header(resp, "Content-Range"))[0] != have:
                d.partial.unlink()  # a range we did not ask for: start again without one
                d.note = "the server sent another part; starting again"
                continue
            return _stream(d, resp, have if status == 206 else 0, restarted=bool(have) and status != 206)
    raise BrokeOff("the server refused to resume and to restart")


def _header(resp, name: str) -> str | None:
    headers = getattr(resp, "headers", None)
    return headers.get(name) if headers is not None else None


def _stream(d: Download, resp, have: int, restarted: bool) -> str:
    """Append the response to the `have` bytes kept (0: write the file anew)."""
    sha = hashlib.sha256()
    if have:
        total = _content_range(_header(resp, "Content-Range"))[1]
        with open(d.partial, "rb") as f:
            while block := f.read(4 * MiB):
                sha.update(block)
        mode, d.note = "ab", f"resumed at {have / MiB:.0f} MB"
    else:
        if restarted:
            d.note = "the server cannot resume downloads, so this one started again"
        mode = "wb"
        total = int(_header(resp, "Content-Length") or 0) or None
    d.total_bytes, d.done_bytes = total or 0, have
    read = getattr(resp, "read1", None) or resp.read
    try:
        with open(d.partial, mode) as out:
            while chunk := read(CHUNK):
                out.write(chunk)
                sha.update(chunk)
                d.done_bytes += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, http.client.HTTPException) as e:  # a reset, a timeout, a short body
        if isinstance(e, OSError) and e.filename:  # our side: a full or read-only disk
            raise DownloadError(f"cannot write {e.filename}: {e.strerror or e}") from None
        raise BrokeOff(f"{type(e).__name__}: {e}; {d.done_bytes / MiB:.0f} MB are kept") from None
    if total and d.done_bytes < total:
        raise BrokeOff(f"the connection closed after {d.done_bytes / MiB:.0f} of {total / MiB:.0f} MB; "
                       "what arrived is kept")
    return sha.hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a `Content-Range: bytes a-b/total` header."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)
