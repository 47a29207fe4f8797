"""Where a chapter's time goes: lightweight per-category wall-clock timers.

``with timed("decode"): ...`` (or ``@timer("training")``) adds the block's *exclusive* wall time to its
category: time spent in a nested timed block is counted once, in the innermost category (a training loop
that decodes images and evaluates every epoch splits into training, decode, encoding and metrics).

Categories (:data:`CATEGORIES`): ``training`` (optimiser steps), ``decode`` (image decode + resize/crop),
``encoding`` (model forward passes for embeddings / scores), ``metrics`` (recall, bootstrap, statistics),
``plotting`` (figure rendering and saving). What a kernel spends outside them is "other" (Python glue,
data set building, model loading), and what a papermill run spends outside the kernel's cells is "kernel"
(start-up, shutdown, notebook I/O): :func:`vlnb.runs.run_notebook` records both in ``run.json``.

Inside a notebook run (``$VLNB_RUN_DIR`` set), :meth:`vlnb.config.NotebookRun.start` calls
:func:`install_notebook_hooks`: the inline backend's figure rendering is timed as ``plotting`` and the totals
are written to ``<run dir>/timings.json`` after every cell, so the runner reads them when the kernel ends.
The timers cost about a microsecond per block; they are always on.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .paths import atomic_write_text

CATEGORIES = ("training", "decode", "encoding", "metrics", "plotting")
TIMINGS_FILE = "timings.json"

_lock = threading.Lock()
_totals: dict[str, float] = defaultdict(float)
_cpu: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
_local = threading.local()
_cpu_start = time.process_time()
_cells: list[float] = []  #: process CPU seconds of each executed notebook cell (install_notebook_hooks)


def _stack() -> list:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


@contextmanager
def untimed():
    """Record nothing from this thread inside the block: for worker threads whose time a :func:`timed` block of
    the thread that waits for them already counts (concurrent blocks would otherwise count the same seconds twice)."""
    before = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = before


@contextmanager
def timed(category: str):
    """Add the block's wall time, minus nested timed blocks, to ``category``."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown timing category {category!r}; choose one of {CATEGORIES}")
    if getattr(_local, "off", False):
        yield
        return
    stack = _stack()
    # category, start, time of nested timed blocks, and the same in process CPU seconds (all threads)
    frame = [category, time.perf_counter(), 0.0, time.process_time(), 0.0]
    stack.append(frame)
    try:
        yield
    finally:
        stack.pop()
        elapsed, cpu = time.perf_counter() - frame[1], time.process_time() - frame[3]
        with _lock:
            _totals[category] += max(0.0, elapsed - frame[2])
            _cpu[category] += max(0.0, cpu - frame[4])
            _counts[category] += 1
        if stack:
            stack[-1][2] += elapsed
            stack[-1][4] += cpu


def timer(category: str) -> Callable:
    """Decorator form of :func:`timed`."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with timed(category):
                return fn(*args, **kwargs)

        return inner

    return wrap


def totals() -> dict[str, float]:
    """Seconds per category so far (every category present, 0.0 when unused)."""
    with _lock:
        return {c: round(_totals.get(c, 0.0), 3) for c in CATEGORIES}


def cpu_totals() -> dict[str, float]:
    """Process CPU seconds (all threads) per category so far: less sensitive to a busy machine than wall time."""
    with _lock:
        return {c: round(_cpu.get(c, 0.0), 3) for c in CATEGORIES}


def reset() -> None:
    global _cpu_start
    with _lock:
        _totals.clear()
        _cpu.clear()
        _counts.clear()
        _cells.clear()
        _cpu_start = time.process_time()


def dump(path: str | os.PathLike) -> Path:
    """Write :func:`totals` (and block counts) as JSON, atomically."""
    p = Path(path)
    with _lock:
        counts = dict(_counts)
    data = {"seconds": totals(), "cpu_seconds": cpu_totals(), "cell_cpu_seconds": list(_cells),
            "process_cpu_seconds": round(time.process_time() - _cpu_start, 3),
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "counts": {c: counts.get(c, 0) for c in CATEGORIES}}
    return atomic_write_text(p, json.dumps(data, indent=2))  # unique temp name, atomic replace


class _TimedFlush:
    """The inline backend's ``flush_figures`` timed as plotting; equal to the function it wraps, so the
    backend's own ``in`` checks and ``unregister`` still find it."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "flush_figures")

    def __call__(self, *a, **k):
        with timed("plotting"):
            return self.fn(*a, **k)

    def __eq__(self, other):
        return other is self or other == self.fn

    def __hash__(self):
        return hash(self.fn)


def install_notebook_hooks(run_dir: str | os.PathLike) -> bool:
    """In an IPython kernel: time the inline backend's figure flushes as ``plotting`` and dump the totals to
    ``run_dir/timings.json`` after every cell. Returns False (and does nothing) outside IPython."""
    try:
        from IPython import get_ipython  # lazy: IPython is slow to import; only the notebook hooks need it
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None or getattr(ip, "_vlnb_timing_hooks", False):
        return ip is not None
    target = Path(run_dir) / TIMINGS_FILE
    reset()

    cell_start = [time.process_time()]

    def wrap_flushes(*_a, **_k):
        cell_start[0] = time.process_time()
        cbs = ip.events.callbacks.get("post_execute", [])
        for i, cb in enumerate(cbs):
            if getattr(cb, "__name__", "") == "flush_figures" and not isinstance(cb, _TimedFlush):
                cbs[i] = _TimedFlush(cb)

    def save(*_a, **_k):
        _cells.append(round(time.process_time() - cell_start[0], 3))
        try:
            dump(target)
        except OSError:
            pass  # the run folder vanished: timings are a courtesy, never an error

    wrap_flushes()
    ip.events.register("pre_run_cell", wrap_flushes)
    ip.events.register("post_run_cell", save)
    ip._vlnb_timing_hooks = True
    return True


def breakdown(run_dir: str | os.PathLike, executed: str | os.PathLike | None, wall: float) -> dict[str, float]:
    """A finished run's wall time ``wall`` split into :data:`CATEGORIES` (from ``run_dir/timings.json``),
    ``other`` (the rest of the cells' execution time, from papermill's per-cell durations in the executed
    notebook) and ``kernel`` (outside the cells: kernel start-up/shutdown, papermill's notebook I/O).
    Missing pieces count as 0; the parts add up to ``wall``."""
    parts = dict.fromkeys(CATEGORIES, 0.0)
    f = Path(run_dir) / TIMINGS_FILE
    try:
        seconds = json.loads(f.read_text()).get("seconds", {})
        parts.update({c: float(seconds.get(c, 0.0)) for c in CATEGORIES})
    except (OSError, ValueError, AttributeError):
        pass
    cells = None
    if executed is not None:
        try:
            nb = json.loads(Path(executed).read_text())
            cells = sum(float((c.get("metadata", {}).get("papermill", {}) or {}).get("duration") or 0.0)
                        for c in nb.get("cells", []))
        except (OSError, ValueError, AttributeError, TypeError):
            cells = None
    timed_total = sum(parts.values())
    if cells is None or cells < timed_total:
        cells = timed_total
    parts["other"] = cells - timed_total
    parts["kernel"] = max(0.0, float(wall) - cells)
    return {k: round(v, 1) for k, v in parts.items()}


def cpu_breakdown(run_dir: str | os.PathLike) -> dict[str, float]:
    """The kernel's process CPU seconds (all threads) per category, ``other`` and ``total``, from
    ``run_dir/timings.json``; on a busy machine these move far less than wall seconds. Empty when absent."""
    try:
        data = json.loads((Path(run_dir) / TIMINGS_FILE).read_text())
        cpu = {c: float(data["cpu_seconds"].get(c, 0.0)) for c in CATEGORIES}
        total = float(data["process_cpu_seconds"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return {}
    cpu["other"] = max(0.0, total - sum(cpu.values()))
    cpu["total"] = total
    return {k: round(v, 1) for k, v in cpu.items()}


def breakdown_table(rows: dict[str, dict[str, float]]):
    """A ``pandas`` table of :func:`breakdown` rows (index: chapter), with a total column and a total row."""
    cols = [*CATEGORIES, "other", "kernel"]
    df = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=cols).fillna(0.0)
    cols = [c for c in cols if c != "kernel" or df[c].any()]  # (a CPU breakdown has no kernel column)
    df = df[cols]
    df["total"] = df[cols].sum(axis=1)
    df.loc["all chapters"] = df.sum(axis=0)
    return df.round(1)


__all__ = ["CATEGORIES", "TIMINGS_FILE", "breakdown", "breakdown_table", "cpu_breakdown", "cpu_totals", "dump", "install_notebook_hooks", "reset", "timed", "timer", "totals"]
