"""A process-wide least-recently-used cache bounded in bytes (and optionally entries).

Streamlit's `cache_data` / `cache_resource` bound a cache by its number of entries only,
and one entry can be a 120 MB decoded image or a gigabyte of thumbnails. `LRU` sizes each
value with `nbytes` (arrays, tensors, PIL images, bytes; containers and dataclasses
recursively) and evicts the least recently used entries until the total fits the budget;
a value larger than the whole budget is returned but not kept.

`get_or_make(key, make)` computes a missing value once: a second thread asking for the same
key while it is being made waits for it (calling `wait()` now and then, so a caller can
show progress or be interrupted) and gets the same value. A `make` that raises, or is
interrupted (any BaseException: a stopped job, a Streamlit rerun), keeps nothing; a waiter
then makes the value itself. No Streamlit here: the app's caches (`cnnviz.app.cache`) and
the feature-visualization memory store (`cnnviz.featurevis`) are both built on it.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np

OVERHEAD = 64  # bytes counted per Python object walked (a floor, so that no entry is free)


def nbytes(obj: Any) -> int:
    """About how many bytes `obj` holds: array and tensor data, PIL pixels, bytes and
    strings, walking lists, tuples, sets, dicts, dataclasses and plain objects. An object
    reached twice counts once; a torch module counts its parameters and buffers."""
    return _nbytes(obj, set())


def _nbytes(obj: Any, seen: set[int]) -> int:
    if obj is None or isinstance(obj, (bool, int, float, complex)):
        return 0
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes) + OVERHEAD
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj) + OVERHEAD
    if isinstance(obj, str):
        return len(obj) + OVERHEAD
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(obj, torch.Tensor):
            return int(obj.element_size() * obj.nelement()) + OVERHEAD
        if isinstance(obj, torch.nn.Module):
            return OVERHEAD + sum(_nbytes(t, seen) for t in (*obj.parameters(), *obj.buffers()))
    if hasattr(obj, "getbands") and hasattr(obj, "size") and hasattr(obj, "mode"):  # a PIL image
        w, h = obj.size
        per_band = 4 if obj.mode in ("I", "F") or obj.mode.startswith("I;32") else 2 if obj.mode.startswith("I;16") else 1
        return w * h * len(obj.getbands()) * per_band + OVERHEAD
    if isinstance(obj, dict):
        return OVERHEAD + sum(_nbytes(k, seen) + _nbytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return OVERHEAD + sum(_nbytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return OVERHEAD + sum(_nbytes(getattr(obj, f.name, None), seen) for f in dataclasses.fields(obj))
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict) and not isinstance(obj, type) and not callable(obj):
        return OVERHEAD + sum(_nbytes(v, seen) for v in state.values())
    return OVERHEAD


class _Flight:
    """A value being made by one thread; others wait on `done`."""

    def __init__(self):
        self.done = threading.Event()
        self.ok = False
        self.value = None


class LRU:
    """A thread-safe LRU of at most `budget` bytes (and `max_entries` entries, if given).

    `size(value)` measures an entry (default `nbytes`). `get`, `put` and `get_or_make` move
    a hit to the most recent end. With `weak=True` every value handed out is also tracked
    by a weak reference, so a value evicted while someone still holds it (a session
    showing a model) is found again instead of being made a second time: the process
    keeps at most one copy of anything it has made, and drops it as soon as nobody holds
    it (values must accept weak references: dataclasses, models, PIL images do)."""

    def __init__(self, budget: int, max_entries: int | None = None, *, size: Callable[[Any], int] = nbytes,
                 weak: bool = False, name: str = ""):
        self.budget, self.max_entries, self.size, self.name = int(budget), max_entries, size, name
        self._d: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.RLock()
        self._flights: dict[Hashable, _Flight] = {}
        self._alive: weakref.WeakValueDictionary | None = weakref.WeakValueDictionary() if weak else None

    # ---------------------------------------------------------------- reading

    def get(self, key: Hashable, default=None):
        """The value for `key` (now the most recent), else `default`."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key][0]
            if self._alive is not None:
                value = self._alive.get(key)
                if value is not None:  # evicted but still held somewhere: keep it again
                    self._put(key, value)
                    return value
        return default

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._d

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)

    def keys(self) -> list:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._d)

    @property
    def total(self) -> int:
        """Bytes held now (by `size`)."""
        with self._lock:
            return self._total

    # ---------------------------------------------------------------- writing

    def put(self, key: Hashable, value, nbytes: int | None = None) -> bool:
        """Keep `value` under `key` (evicting the least recently used to make room);
        returns False when it alone is larger than the budget (then it is not kept)."""
        with self._lock:
            return self._put(key, value, nbytes)

    def _put(self, key, value, size: int | None = None) -> bool:
        if self._alive is not None:
            try:
                self._alive[key] = value
            except TypeError:  # no weak references to this type: keep it strongly only
                pass
        size = self.size(value) if size is None else int(size)
        self._pop(key)
        if size > self.budget:
            return False
        self._d[key] = (value, size)
        self._total += size
        while self._d and (self._total > self.budget or (self.max_entries and len(self._d) > self.max_entries)):
            self._pop(next(iter(self._d)))
        return True

    def _pop(self, key) -> None:
        old = self._d.pop(key, None)
        if old is not None:
            self._total -= old[1]

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._pop(key)
            if self._alive is not None:
                self._alive.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._total = 0
            if self._alive is not None:
                self._alive.clear()

    # ---------------------------------------------------------------- making

    def get_or_make(self, key: Hashable, make: Callable[[], Any], *, wait: Callable[[], None] | None = None,
                    poll: float = 0.25):
        """The value for `key`, made by `make()` if missing (and kept if it fits). While
        another thread makes the same key, wait for its value, calling `wait()` every
        `poll` seconds (an exception from `wait` stops waiting, and leaves the other
        thread's work alone). If that thread fails, make it here."""
        while True:
            with self._lock:
                hit = self.get(key, _MISSING)
                if hit is not _MISSING:
                    return hit
                flight = self._flights.get(key)
                mine = flight is None
                if mine:
                    flight = self._flights[key] = _Flight()
            if mine:
                try:
                    value = make()
                except BaseException:
                    with self._lock:
                        del self._flights[key]
                    flight.done.set()  # waiters see ok=False and try themselves
                    raise
                with self._lock:
                    self._put(key, value)
                    flight.value, flight.ok = value, True
                    del self._flights[key]
                flight.done.set()
                return value
            while not flight.done.wait(poll):
                if wait is not None:
                    wait()
            if flight.ok:
                return flight.value


_MISSING = object()
