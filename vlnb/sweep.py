"""Parameter sweeps: every combination of a grid, one ``vlnb run`` each, locally or on a Dask cluster.

    vlnb sweep notebooks/05_robustness.ipynb --grid sweeps/robustness.yaml --out runs/rob-sweep
    vlnb sweep notebooks/05_robustness.ipynb --grid sweeps/robustness.yaml --scheduler tcp://host:8786
    vlnb collect runs/rob-sweep          # -> runs/rob-sweep/collected/<table>.csv

**The grid file** (read with ``yaml.safe_load``; only JSON-compatible values: strings, finite numbers,
booleans, null, lists and string-keyed mappings of them)::

    profile: offline            # optional (default offline; --profile overrides it)
    parameters:                 # optional: the same value in every run
      n_images: {world: 200}
    grid:                       # every combination of these values; each entry is a LIST of values
      corruptions: [[shot_noise], [defocus_blur, motion_blur]]
      seed: [0, 1]

Every combination is validated against the notebook's typed config (:func:`vlnb.config.resolve`) before
anything runs: a bad grid fails at once, naming the combination, parameter and value.

**Runs.** Each combination runs through :func:`vlnb.runs.run_notebook` (the path of ``vlnb run``) into
its own folder ``<out>/<swept values>-<hash>``, the hash being that of the notebook, profile and
parameters. A run whose folder holds a ``run.json`` with ``status: ok`` and the same notebook, profile and
(validated) parameters is skipped, so rerunning the same command resumes a sweep after a crash or Ctrl-C;
a run that failed or was cut off is run again in its folder. A run that fails is recorded with its error
and the others go on. ``out`` must be new, empty, or an earlier sweep's folder. ``<out>/sweep.json`` and ``<out>/sweep_summary.csv``
record every run (parameters, status, seconds, error), updated as runs finish.

**Where runs execute.** Locally, a pool of worker processes sized so that workers x torch threads <=
cores (each kernel gets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = its threads). With ``scheduler`` (an
address such as ``tcp://10.0.0.5:8786``, or a ``distributed.Client``), every run is a task of a **Dask
distributed** cluster (``pip install "vlnb[sweep]"``). The workers need vlnb installed and the notebook,
the data and ``out`` on a shared file system. A worker runs one notebook at a time with as many torch
threads as it has Dask threads (``dask worker ADDRESS --nworkers 4 --nthreads 1`` on a 4-core machine).
When a worker dies mid-run the scheduler moves the run to another worker (Dask's ``allowed-failures``);
an error of the infrastructure raised inside a task (not a notebook failure: that is a result) is retried
``retries`` times.

**Collecting.** :func:`collect` joins every finished run's ``results/<table>.csv`` into one tidy table per
table name (tables of different names have different columns, so they are not stacked): a ``run`` column
(the run folder's name), ``profile``, one column per parameter given to the run (its validated value;
lists and mappings as JSON text; a parameter whose name is already a column of the table is called
``param_<name>``), then the table's own columns. Runs that did not finish are left out, with a warning.
``vlnb collect DIR`` writes them to ``DIR/collected/<table>.csv``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .config import ParameterError, resolve
from .paths import atomic_write_text
from .progress import tqdm
from .runs import THREAD_VARS as _THREAD_VARS
from .runs import injectable, run_notebook, temporary_environ

GRID_KEYS = ("profile", "parameters", "grid")
RESERVED = ("profile", "out_dir")  # set by the sweep itself, never by the grid
SUMMARY_COLUMNS = ("run", "status", "seconds", "error")


class SweepError(ParameterError):
    """A grid file or sweep request that is wrong; the message names the file, entry and value."""


# ---------------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------------
def _check_json(v: Any, where: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise SweepError(f"{where}: {v!r} is not a finite number (only JSON-compatible values)")
    if v is None or isinstance(v, (str, bool, int, float)):
        return
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_json(x, f"{where}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise SweepError(f"{where}: key {k!r} is a {type(k).__name__}, not a string (only JSON-compatible "
                                 "values; quote it)")
            _check_json(x, f"{where}.{k}")
        return
    raise SweepError(f"{where}: {v!r} is a {type(v).__name__}, not a JSON-compatible value (string, number, "
                     "boolean, null, list, mapping); quote it to pass a string")


def load_grid(grid: str | os.PathLike | Mapping) -> dict[str, Any]:
    """Read and check a grid (a YAML file or an equivalent mapping): ``{"profile", "parameters", "grid"}``."""
    src = "grid"
    if not isinstance(grid, Mapping):
        path = Path(grid)
        src = str(path)
        if not path.is_file():
            raise SweepError(f"grid file not found: {path}")
        try:
            grid = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SweepError(f"{path}: not valid YAML (or a tag safe_load refuses): {e}".replace("\n", " ")) from None
    if not isinstance(grid, Mapping):
        raise SweepError(f"{src}: the top level must be a mapping with a 'grid' entry, got {type(grid).__name__}")
    unknown = [k for k in grid if k not in GRID_KEYS]
    if unknown:
        raise SweepError(f"{src}: unknown top-level entr{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                         f"allowed: {', '.join(GRID_KEYS)} (parameters go under 'grid' or 'parameters')")
    axes, fixed = grid.get("grid"), grid.get("parameters") or {}
    if not isinstance(axes, Mapping) or not axes:
        raise SweepError(f"{src}: 'grid' must be a non-empty mapping of parameter -> list of values")
    if not isinstance(fixed, Mapping):
        raise SweepError(f"{src}: 'parameters' must be a mapping of parameter -> value")
    profile = grid.get("profile", "offline")
    if profile not in ("offline", "full"):
        raise SweepError(f"{src}: 'profile' must be offline or full, got {profile!r}")
    for name, values in axes.items():
        if not isinstance(name, str):
            raise SweepError(f"{src}: grid entry {name!r} is not a parameter name")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{src}: grid entry '{name}' must be a non-empty list of values, got {values!r} "
                             f"(a list-valued parameter is a list of lists: {name}: [[a, b], [c]])")
        _check_json(values, f"{src}: grid.{name}")
    for name, value in fixed.items():
        if not isinstance(name, str):
            raise SweepError(f"{src}: parameters entry {name!r} is not a parameter name")
        _check_json(value, f"{src}: parameters.{name}")
    both = sorted(set(axes) & set(fixed))
    if both:
        raise SweepError(f"{src}: {both} appear both in 'grid' and 'parameters'")
    reserved = sorted((set(axes) | set(fixed)) & set(RESERVED))
    if reserved:
        raise SweepError(f"{src}: {reserved} cannot be swept or fixed (profile: the top-level 'profile' entry; "
                         "out_dir: each run's folder is chosen by the sweep)")
    return {"profile": profile, "parameters": dict(fixed), "grid": {k: list(v) for k, v in axes.items()}}


def combinations(grid: Mapping) -> list[dict[str, Any]]:
    """Every combination of ``grid["grid"]`` (file order; the last axis varies fastest), fixed parameters included."""
    axes = grid["grid"]
    return [{**grid["parameters"], **dict(zip(axes, vals))} for vals in itertools.product(*axes.values())]


def _canonical(params: Mapping) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def run_name(notebook: str, profile: str, params: Mapping, swept: list[str]) -> str:
    """``<swept name=value, ...>-<hash>``: readable, file-system safe, and the same on every machine."""
    digest = hashlib.sha1(_canonical({"notebook": Path(notebook).stem, "profile": profile,
                                      "parameters": params}).encode()).hexdigest()[:8]
    parts = []
    for k in swept:
        v = params[k]
        text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        text = re.sub(r"[\[\]{}\"' ]", "", text)
        parts.append(f"{k}={text}")
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "_", "_".join(parts))[:80].strip("_.") or "run"
    return f"{slug}-{digest}"


def validate(notebook: str, grid: Mapping, profile: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every combination validated against the notebook's config: ``[(grid values, validated values)]``, the
    validated ones in the JSON form a run records in ``run.json`` (:func:`vlnb.runs.injectable`). Every bad
    combination is named in one :class:`SweepError` (the first on its first line)."""
    stem = Path(notebook).stem
    combos = combinations(grid)
    errors, out = [], []
    for i, params in enumerate(combos):
        try:
            out.append((params, injectable(resolve(stem, profile=profile, **params), params)))
        except ParameterError as e:
            swept = ", ".join(f"{k}={params[k]!r}" for k in grid["grid"])
            errors.append(f"combination {i + 1}/{len(combos)} ({swept}): {e}")
    seen: dict[str, int] = {}
    for i, (params, validated) in enumerate(out if not errors else []):
        j = seen.setdefault(_canonical(validated), i)
        if j != i:
            errors.append(f"combinations {j + 1} and {i + 1} of {len(combos)} are the same run once validated "
                          f"({_canonical(combos[i])}); list each value once")
    if errors:
        more = errors[1:21] + ([f"... and {len(errors) - 21} more"] if len(errors) > 21 else [])
        raise SweepError(f"{len(errors)} of {len(combos)} grid combination(s) are invalid for notebook '{stem}' "
                         f"(nothing was run); {errors[0]}" + "".join(f"\n  {m}" for m in more))
    return out


# ---------------------------------------------------------------------------------------------------
# Finished runs
# ---------------------------------------------------------------------------------------------------
def _read_record(run_dir: Path) -> dict | None:
    try:
        rec = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _run_params(rec: Mapping) -> dict[str, Any]:
    return {k: v for k, v in (rec.get("parameters") or {}).items() if k not in RESERVED}


def finished_runs(out: Path, notebook: str, profile: str) -> dict[str, Path]:
    """``{canonical parameters: run folder}`` of the runs under ``out`` that finished (``run.json`` status ok)
    for this notebook and profile."""
    done = {}
    for rj in sorted(Path(out).glob("*/run.json")):
        rec = _read_record(rj.parent)
        if rec and rec.get("status") == "ok" and rec.get("notebook") == Path(notebook).name \
                and rec.get("profile") == profile:
            done[_canonical(_run_params(rec))] = rj.parent
    return done


# ---------------------------------------------------------------------------------------------------
# One run (in a pool worker, a Dask worker, or in-process)
# ---------------------------------------------------------------------------------------------------
_RUN_LOCK = threading.Lock()  # run_notebook sets os.environ for its kernel: one run per process at a time


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    # papermill's message ends with the failing cell's exception; keep the location and the last line
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    tail = lines[-1].strip() if len(lines) > 1 else ""
    # the cell's exception first (what a summary table shows), then where the executed notebook is
    msg = f"{tail} [{head}]" if tail and tail != lines[0] else head
    return msg[:500]


def run_one(notebook: str, params: Mapping, profile: str, out_dir: str, threads: int | None) -> dict:
    """Execute one combination with :func:`vlnb.runs.run_notebook`; a failing notebook is a result
    (``status: failed`` and its error), not an exception. The kernel gets ``threads`` torch/OMP threads."""
    with _RUN_LOCK, temporary_environ({k: str(threads) for k in _THREAD_VARS} if threads else {}):
        t0 = time.time()
        try:
            # force: the sweep owns its run folders (a failed or interrupted run is redone in place)
            run_notebook(notebook, dict(params), profile=profile, out_dir=out_dir, progress=False, force=True)
            status, error = "ok", ""
        except Exception as e:  # noqa: BLE001 -- recorded, the sweep goes on
            status, error = "failed", _one_line(e)
    return {"run": Path(out_dir).name, "status": status, "seconds": round(time.time() - t0, 1), "error": error}


def _dask_run_one(notebook: str, params: Mapping, profile: str, out_dir: str, threads: int | None) -> dict:
    try:
        from distributed import get_worker  # lazy: dask is optional (the sweep extra)

        worker = get_worker()
    except (ImportError, ValueError):  # not in a worker (e.g. a synchronous scheduler)
        worker = None
    rec = run_one(notebook, params, profile, out_dir, threads or (worker.state.nthreads if worker else None))
    if worker is not None:
        rec["worker"] = worker.address
    return rec


def _pool_init(threads: int) -> None:
    os.environ.update({k: str(threads) for k in _THREAD_VARS})
    os.environ.setdefault("TQDM_DISABLE", "1")


def pool_size(n_runs: int, workers: int | None = None, threads: int | None = None,
              cores: int | None = None) -> tuple[int, int]:
    """``(workers, threads per worker)`` with workers x threads <= cores; defaults fill the cores."""
    if cores is None:
        from .device import available_cores  # lazy: it imports torch, which CLI start-up skips

        cores = available_cores()
    if workers is not None and workers < 1 or threads is not None and threads < 1:
        raise SweepError(f"--workers and --threads must be >= 1 (got workers={workers}, threads={threads})")
    if workers is None:
        workers = max(1, min(n_runs, cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // workers)
    if workers * threads > cores:
        raise SweepError(f"{workers} worker(s) x {threads} thread(s) = {workers * threads} > {cores} core(s): "
                         "lower --workers or --threads")
    return workers, threads


# ---------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------
def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))  # unique temp name, atomic replace


def default_out(notebook: str, grid: str | os.PathLike | Mapping) -> Path:
    """``runs/sweep-<notebook>-<grid file>``: the same command resumes into the same folder."""
    tag = Path(grid).stem if not isinstance(grid, Mapping) else "grid"
    return Path("runs") / f"sweep-{Path(notebook).stem}-{tag}"


def sweep(
    notebook: str | os.PathLike,
    grid: str | os.PathLike | Mapping,
    out: str | os.PathLike | None = None,
    profile: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    scheduler=None,
    retries: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every combination of ``grid`` (see the module docstring) and return the summary table
    (``run``, the swept parameters, ``status`` ok / skipped / failed, ``seconds``, ``error``).

    ``scheduler``: None (a local process pool of ``workers`` x ``threads``), a Dask scheduler address,
    or a ``distributed.Client``.
    """
    nb = Path(notebook).resolve()
    if not nb.is_file():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    g = load_grid(grid)
    profile = profile or g["profile"]
    combos = validate(nb.name, g, profile)  # fail before anything runs
    if scheduler is None:
        workers, threads = pool_size(len(combos), workers, threads)
    out = Path(out or default_out(nb.name, grid)).resolve()
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "sweep.json").is_file():
        raise SweepError(f"--out {out}: folder is not empty and is not a vlnb sweep folder (no sweep.json); "
                         "choose a new or empty folder (the same --out resumes a sweep)")
    client, own = _connect(scheduler) if scheduler is not None else (None, False)  # before anything is written
    try:
        return _execute(nb, g, profile, combos, out, workers, threads, client, retries, progress)
    finally:
        if own:
            client.close()


def _connect(scheduler):
    """``(distributed.Client, whether this function opened it)``; an unreachable scheduler is a SweepError."""
    try:
        from distributed import Client  # lazy: dask is optional (the sweep extra)
    except ImportError:
        raise SweepError('--scheduler needs Dask distributed: pip install "vlnb[sweep]"') from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(scheduler, timeout="20s"), True
    except (OSError, ValueError) as e:
        raise SweepError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})") from None


def _execute(nb: Path, g: dict, profile: str, combos: list, out: Path, workers, threads, client, retries: int,
             progress: bool) -> pd.DataFrame:
    swept = list(g["grid"])
    out.mkdir(parents=True, exist_ok=True)
    done = finished_runs(out, nb.name, profile)
    rows, todo = [], []
    for params, validated in combos:
        name = run_name(nb.name, profile, params, swept)
        row = {"run": name, **{k: params[k] for k in swept}, "status": "pending", "seconds": None, "error": ""}
        prev = done.get(_canonical(validated))
        if prev is not None:
            row.update(run=prev.name, status="skipped", error="already finished")
        else:
            todo.append((name, params))
        rows.append(row)
    by_name = {r["run"]: r for r in rows}
    record = {"notebook": str(nb), "profile": profile, "grid": g, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "runs": rows}
    lock = threading.Lock()

    def save():
        with lock:
            _write_json(out / "sweep.json", record)
            summary_table(rows, swept).to_csv(out / "sweep_summary.csv", index=False)

    def finish(rec: dict):
        by_name[rec["run"]].update({k: rec[k] for k in ("status", "seconds", "error")})
        if rec.get("worker"):
            by_name[rec["run"]]["worker"] = rec["worker"]
        save()

    n_skip = len(rows) - len(todo)
    print(f"[vlnb sweep] {nb.name} ({profile}): {len(rows)} run(s), {n_skip} already finished, "
          f"{len(todo)} to run -> {out}", flush=True)
    save()
    interrupted = False
    if todo and client is None:
        workers = min(workers, len(todo))
        print(f"[vlnb sweep] local: {workers} worker(s) x {threads} thread(s)", flush=True)
    if todo:
        bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress, file=sys.stdout)
        try:
            if client is not None:
                _run_dask(client, nb, todo, profile, out, threads, retries, finish, bar)
            else:
                _run_local(nb, todo, profile, out, workers, threads, finish, bar)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
    for r in rows:
        if r["status"] == "pending":
            r["status"], r["error"] = "not run", "interrupted" if interrupted else "not run"
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save()
    table = summary_table(rows, swept)
    print(table.to_string(index=False, max_colwidth=60), flush=True)
    counts = table["status"].value_counts().to_dict()
    print(f"[vlnb sweep] {', '.join(f'{v} {k}' for k, v in counts.items())}; summary: {out / 'sweep_summary.csv'}",
          flush=True)
    if interrupted:
        print("[vlnb sweep] interrupted: rerun the same command to resume (finished runs are skipped)", flush=True)
        raise KeyboardInterrupt
    return table


def summary_table(rows: list[dict], swept: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for k in swept:  # lists / mappings as JSON text in the table
        df[k] = [v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v) for v in df[k]]
    cols = ["run", *swept, "status", "seconds", "error"] + [c for c in df.columns if c == "worker"]
    return df[cols]


def _run_local(nb, todo, profile, out, workers, threads, finish, bar) -> None:
    if workers == 1:  # in this process: no pool to start, Ctrl-C stops at once
        for name, params in todo:
            finish(run_one(str(nb), params, profile, str(out / name), threads))
            bar.update()
        return
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_pool_init,
                               initargs=(threads,))
    try:
        futs = {pool.submit(run_one, str(nb), params, profile, str(out / name), threads): name
                for name, params in todo}
        for fut in as_completed(futs):
            try:
                rec = fut.result()
            except Exception as e:  # noqa: BLE001 -- a worker process that died (BrokenProcessPool)
                rec = {"run": futs[fut], "status": "failed", "seconds": None, "error": _one_line(e)}
            finish(rec)
            bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(client, nb, todo, profile, out, threads, retries, finish, bar) -> None:
    from distributed import as_completed  # lazy: dask is optional (the sweep extra)

    n = len(client.scheduler_info().get("workers", {}))
    print(f"[vlnb sweep] Dask: {client.scheduler.address} with {n} worker(s)", flush=True)
    futs, token = {}, uuid.uuid4().hex[:8]  # a fresh key per sweep: never an old result of the cluster
    try:
        for name, params in todo:
            f = client.submit(_dask_run_one, str(nb), params, profile, str(out / name), threads,
                              key=f"vlnb-sweep-{token}-{name}", pure=False, retries=retries)
            futs[f] = name
        for fut in as_completed(futs):
            try:
                rec = fut.result()
            except Exception as e:  # noqa: BLE001 -- e.g. KilledWorker after too many worker deaths
                rec = {"run": futs[fut], "status": "failed", "seconds": None, "error": _one_line(e)}
            finish(rec)
            bar.update()
    except KeyboardInterrupt:
        client.cancel(list(futs))
        raise


# ---------------------------------------------------------------------------------------------------
# Collecting
# ---------------------------------------------------------------------------------------------------
def _cell(v):
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)


def collect(directory: str | os.PathLike, table: str | None = None) -> dict[str, pd.DataFrame] | pd.DataFrame:
    """Join the ``results/*.csv`` of every finished run under ``directory`` into one tidy table per name.

    Returns ``{table name: DataFrame}`` (or one DataFrame with ``table=``): a ``run`` column, one column
    per parameter of the run (see the module docstring), then the table's columns; rows ordered by run
    folder, then as in each file. Runs that did not finish are left out (with a warning), as are
    unreadable CSV files (a warning names each).
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {directory}")
    runs = sorted(p.parent for p in root.glob("*/run.json"))
    if not runs:
        raise FileNotFoundError(f"no run folders (*/run.json) under {directory}")
    frames: dict[str, list[pd.DataFrame]] = {}
    skipped = []
    for run in runs:
        rec = _read_record(run)
        if not rec or rec.get("status") != "ok":
            skipped.append(run.name)
            continue
        params = {"profile": rec.get("profile"), **_run_params(rec)}
        for csv in sorted((run / "results").glob("*.csv")):
            if table is not None and csv.stem != table:
                continue
            try:
                df = pd.read_csv(csv)
            except pd.errors.EmptyDataError:
                continue  # a table with no columns at all: nothing to join
            except (OSError, ValueError) as e:
                warnings.warn(f"{csv}: not a readable CSV table, left out ({e})", stacklevel=2)
                continue
            cols = {}
            for k, v in params.items():
                cols[f"param_{k}" if k in df.columns else k] = _cell(v)
            head = pd.DataFrame({"run": run.name, **cols}, index=df.index)
            frames.setdefault(csv.stem, []).append(pd.concat([head, df], axis=1))
    if skipped:
        warnings.warn(f"{len(skipped)} run(s) under {directory} did not finish and are left out: "
                      + ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""), stacklevel=2)
    out = {name: pd.concat(fs, ignore_index=True) for name, fs in sorted(frames.items())}
    if table is not None:
        if table not in out:
            raise FileNotFoundError(f"no finished run under {directory} has results/{table}.csv")
        return out[table]
    return out


def write_collected(directory: str | os.PathLike, dest: str | os.PathLike | None = None) -> dict[str, Path]:
    """:func:`collect` into ``dest`` (default ``<directory>/collected``), one ``<table>.csv`` each."""
    tables = collect(directory)
    dest = Path(dest or Path(directory) / "collected")
    marker = dest / ".vlnb-collected"  # a folder collect wrote before: its tables are replaced
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir()) and not marker.exists()):
        raise SweepError(f"--out {dest}: exists and was not written by vlnb collect; choose a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by `vlnb collect`; its <table>.csv files are replaced by the next collect\n")
    paths = {}
    for name, df in tables.items():
        paths[name] = dest / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


__all__ = [
    "SweepError",
    "collect",
    "combinations",
    "finished_runs",
    "load_grid",
    "pool_size",
    "run_name",
    "run_one",
    "summary_table",
    "sweep",
    "validate",
    "write_collected",
]
