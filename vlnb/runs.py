"""Papermill runs and the book build.

- :func:`run_notebook` executes one notebook with validated parameters into a run folder
  (the executed notebook, ``run.json`` and the notebook's own result files land there).
- :func:`build_book` executes every notebook in order into ``_build/`` and builds the HTML book from
  the executed copies; the tracked notebooks are never modified.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .config import resolve
from .paths import REPO_ROOT, atomic_write_text, notebooks_dir
from .timing import breakdown, breakdown_table, cpu_breakdown

BOOK_FILES = ("_config.yml", "_toc.yml", "book")


class RunError(RuntimeError):
    """A notebook run or book build that failed; the message says which notebook/cell and where the log is."""


def list_notebooks(root: Path | None = None) -> list[Path]:
    """The book's notebooks, in chapter order (``01_…``, ``02_…``)."""
    nbs = sorted((root or notebooks_dir()).glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise RunError(f"no notebooks found in {root or notebooks_dir()}")
    return nbs


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a repository
        return None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    # onnxruntime computes the towers' image features on a CPU (vlnb.models.onnx_cpu): its float rounding
    # differs from torch's
    for mod in ("torch", "transformers", "numpy", "pandas", "papermill", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):  # not installed, or no version: leave it out
            continue
    return out


class OutDirError(RunError):
    """An output folder vlnb will not write into (it holds someone else's files, or the source notebooks)."""


#: Written into a build folder vlnb created: only such a folder's ``src/`` and ``html/`` are ever deleted.
BUILD_MARKER = ".vlnb-build"
#: What vlnb itself puts in a build folder (a default ``_build`` from before the marker holds only these).
BUILD_ENTRIES = {"src", "html", "runs", "jb", "jupyter-book.log", "timings.json", "timings.csv", "timings_cpu.csv",
                 BUILD_MARKER}


def injectable(cfg, params: Mapping[str, Any]) -> dict[str, Any]:
    """The validated values of the ``params`` names, as plain JSON values (what papermill writes into the
    notebook's injected cell: never the raw CLI/YAML objects)."""
    dumped = json.loads(json.dumps(cfg.model_dump(mode="json"), allow_nan=False))
    return {k: dumped[k] for k in params if k in dumped}


def is_run_dir(path: Path) -> bool:
    """A folder a vlnb run wrote (its ``run.json`` names the notebook)."""
    try:
        rec = json.loads((Path(path) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and "notebook" in rec and "profile" in rec


def prepare_run_dir(out: Path, notebook: Path, force: bool = False) -> None:
    """Create ``out`` for a run of ``notebook``, refusing folders whose files vlnb does not own."""
    out = Path(out).resolve()
    src_dirs = {notebook.parent.resolve(), notebooks_dir().resolve()}
    if out in src_dirs or any(d in out.parents for d in src_dirs) or out == REPO_ROOT.resolve():
        raise OutDirError(f"--out {out}: refusing to write a run into the notebooks' own folder (the executed "
                          "copy would replace the source); choose a folder outside it, e.g. runs/<name>")
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_run_dir(out):
            raise OutDirError(f"--out {out}: folder is not empty and is not a vlnb run folder (no run.json); "
                              "vlnb will not write into it: choose a new or empty folder")
        if not force:
            raise OutDirError(f"--out {out}: holds an earlier vlnb run; pass --force (force=True) to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # mark the folder as a run folder at once: a run killed before it ends can still be replaced with --force
    atomic_write_text(out / "run.json", json.dumps({"notebook": notebook.name, "profile": None,
                                                    "status": "running"}, indent=2))


@contextlib.contextmanager
def temporary_environ(updates: Mapping[str, str]):
    """Set ``updates`` in ``os.environ`` (which the notebook kernels, subprocesses, inherit) for the block, then put
    back each variable as it was, unset ones unset."""
    before = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    profile: str = "offline",
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log_output: bool = False,
    force: bool = False,
) -> Path:
    """Execute ``notebook`` with papermill into ``out_dir`` and return the executed notebook's path.

    Parameters are validated first (unknown name / wrong type -> :class:`vlnb.config.ParameterError`
    before anything runs) and only the *validated* values, in JSON form, are injected into the notebook.
    The run folder receives the executed notebook, ``run.json`` (parameters, profile, versions, timing,
    git commit) and whatever the notebook writes (``results/``, ``figures/``).

    ``out_dir`` must be new or empty; an existing vlnb run folder (one with ``run.json``) is replaced only
    with ``force=True``, any other non-empty folder is refused (:class:`OutDirError`), and so is the
    notebooks' own folder (the executed copy would replace the source).
    """
    import papermill as pm  # lazy: papermill is slow to import; only running a notebook needs it

    nb = Path(notebook).resolve()
    if not nb.exists():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    params = dict(parameters or {})
    cfg = resolve(nb.stem, profile=profile, **params)  # fail fast, naming the parameter
    if out_dir is None:  # runs/<notebook>-<time> under the working directory, never under the notebooks' folder
        base = Path("runs").resolve()
        if nb.parent == base.parent or nb.parent in base.parents:
            base = nb.parent.parent / "runs"
        out_dir = base / f"{nb.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out_dir).resolve()
    prepare_run_dir(out, nb, force=force)
    executed = out / nb.name
    injected = {**injectable(cfg, params), "profile": profile, "out_dir": str(out)}
    (out / "timings.json").unlink(missing_ok=True)  # this run's kernel writes a fresh one (vlnb.timing)
    t0 = time.time()
    record = {
        "notebook": nb.name,
        "profile": profile,
        "parameters": injected,
        "git_commit": _git_commit(),
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    # the kernel inherits these: its run folder, and no tqdm bars (thousands of lines of stderr in an
    # executed notebook / the rendered book); export TQDM_DISABLE=0 to keep them
    env = {"VLNB_RUN_DIR": str(out), "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"),
           # download links to results/ and figures/ (NotebookRun.link): relative to the executed notebook, or
           # where a book build copies the run folder (build_book sets VLNB_LINK_BASE per chapter)
           "VLNB_LINK_BASE": os.environ.get("VLNB_LINK_BASE", ""),
           # libraries imported before vlnb (transformers, sentence-transformers) import tqdm.auto, which warns
           # "IProgress not found" into the page in a kernel without ipywidgets: filtered from the kernel's start
           # (vlnb.progress filters it too, once vlnb is imported)
           "PYTHONWARNINGS": ",".join(w for w in (os.environ.get("PYTHONWARNINGS"), KERNEL_WARNING_FILTER) if w),
           # figures are shown in the executed notebook (and so in the book) even when the caller's environment
           # picks a non-interactive backend for itself (CI exports MPLBACKEND=Agg, which a kernel would inherit)
           "MPLBACKEND": KERNEL_MPL_BACKEND}
    try:
        with temporary_environ(env):
            pm.execute_notebook(
                str(nb),
                str(executed),
                parameters=injected,
                cwd=str(out),
                language="python",
                kernel_name="python3",
                progress_bar=progress,
                log_output=log_output,
            )
        record["status"] = "ok"
    except Exception as e:  # noqa: BLE001 -- any failure: papermill's error names the failing cell; keep the partial notebook
        record["status"] = f"failed: {type(e).__name__}"
        raise RunError(f"notebook {nb.name} failed (executed copy with the error: {executed}):\n{e}") from None
    finally:
        record["seconds"] = round(time.time() - t0, 1)
        # where the time went (vlnb.timing): training / decode / encoding / metrics / plotting / other / kernel,
        # in wall seconds and in the kernel's CPU seconds
        record["timing"] = breakdown(out, executed if executed.exists() else None, record["seconds"])
        record["timing_cpu"] = cpu_breakdown(out)
        atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))
    return executed


#: A ``PYTHONWARNINGS`` entry for the chapters' kernels (see run_notebook).
KERNEL_WARNING_FILTER = "ignore:IProgress not found"
#: The chapters' kernels draw figures into the notebook (ipykernel's inline backend), whatever ``MPLBACKEND`` says.
KERNEL_MPL_BACKEND = "module://matplotlib_inline.backend_inline"

#: Folder of the HTML book that holds each chapter's tables and figures: ``<html>/runs/<stem>/{results,figures}``.
RUN_FILES_DIR = "runs"


def copy_run_files(runs: Path, dest: Path) -> None:
    """Copy every run's ``results/`` and ``figures/`` into the HTML book, where the chapters' download links
    (``NotebookRun.link``/``downloads``) point."""
    for run_dir in sorted(p for p in Path(runs).iterdir() if p.is_dir()):
        for sub in ("results", "figures"):
            if (run_dir / sub).is_dir():
                shutil.copytree(run_dir / sub, dest / run_dir.name / sub, dirs_exist_ok=True)


def _prune_toc(toc: Path, stems: set[str]) -> None:
    """Drop chapters that were not executed in this build (a partial build must still be a valid book)."""
    keep = []
    for line in toc.read_text().splitlines():
        m = re.match(r"\s*- file: notebooks/(\S+)\s*$", line)
        if m and m.group(1) not in stems:
            continue
        keep.append(line)
    toc.write_text("\n".join(keep) + "\n")


def claim_build_dir(build: Path, default: bool = False) -> Path:
    """The resolved build folder, created and marked as vlnb's; refuses a non-empty folder vlnb did not create.

    The default ``<repo>/_build`` of a build from before the marker is adopted when it holds nothing but
    what vlnb writes there (:data:`BUILD_ENTRIES`, with ``src/_toc.yml`` and ``html/index.html``).
    """
    build = build.resolve()
    if build.exists() and not build.is_dir():
        raise OutDirError(f"--build-dir {build}: exists and is not a folder")
    marker = build / BUILD_MARKER
    if build.is_dir() and not marker.exists():
        entries = {p.name for p in build.iterdir()}
        looks_built = (entries <= BUILD_ENTRIES and (not (build / "src").exists() or (build / "src" / "_toc.yml").is_file())
                       and (not (build / "html").exists() or (build / "html" / "index.html").is_file()))
        if entries and not (default and looks_built):
            raise OutDirError(f"--build-dir {build}: folder is not empty and was not created by vlnb (no "
                              f"{BUILD_MARKER} marker); vlnb deletes src/ and html/ of its build folder, so "
                              "it will not use this one: choose a new or empty folder")
    build.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        atomic_write_text(marker, "This folder was created by `vlnb book`; vlnb may delete src/, html/, runs/, jb/ here.\n")
    return build


#: Chapters the others read: data preparation, and the reference models chapter 2 trains.
BOOK_FIRST = ("01_data_prep", "02_clip_training")
#: Offline, chapter 1 only reports on local data (the shared files, the generated world) that every chapter
#: builds its own manifests from, through the same caches; nothing reads its run but the synthesis chapter. So
#: it runs with the middle chapters there, not alone before chapter 2 with a core idle. The full profile keeps it
#: first: its manifests download the hub data sets the later chapters read.
BOOK_FIRST_OFFLINE = ("02_clip_training",)
#: The synthesis chapter reads every other chapter's run folder.
BOOK_LAST = ("08_synthesis",)
#: The middle chapters that take longest start first when they run side by side, so the short ones fill the gaps at
#: the end (a cold build's seconds, benchmarks/book_profile.py: chapters 4, 5 and 7 take 100-190 s each, 5 usually
#: a little longer than 4; 1, 3 and 6 take 10-70 s); the others follow in book order.
BOOK_LONGEST_FIRST = ("04_compare", "05_robustness", "07_fairness")


def book_first(profile: str) -> tuple[str, ...]:
    """The chapters a book build of ``profile`` runs first, one at a time, before the others."""
    return BOOK_FIRST_OFFLINE if profile == "offline" else BOOK_FIRST


def longest_first(notebooks: list[Path]) -> list[Path]:
    """``notebooks`` with :data:`BOOK_LONGEST_FIRST` first (in that order), the rest after them in book order."""
    rank = {stem: i for i, stem in enumerate(BOOK_LONGEST_FIRST)}
    return sorted(notebooks, key=lambda nb: rank.get(nb.stem, len(rank)))


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def book_jobs(n_chapters: int, jobs: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """``(chapters side by side, threads per kernel)`` for the book's middle chapters: by default one chapter per
    core, one thread each (their models are small: two one-thread kernels finish sooner than one with two
    threads, measured in benchmarks/book_profile.py); ``jobs`` caps it, ``VLNB_BOOK_JOBS`` sets the default."""
    if cores is None:
        from .device import available_cores  # lazy: it imports torch, which CLI start-up skips

        cores = available_cores()
    if jobs is None:
        env = os.environ.get("VLNB_BOOK_JOBS", "")
        if env and not env.isdigit():
            raise ValueError(f"VLNB_BOOK_JOBS must be a positive integer, got {env!r}")
        jobs = int(env) if env else cores
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    jobs = max(1, min(jobs, n_chapters, cores))
    return jobs, max(1, cores // jobs)


def _book_chapter(nb: Path, params: Mapping, profile: str, out_dir: Path, progress: bool,
                  threads: int | None = None) -> Path:
    """Execute one chapter of a book build (in this process, or in a pool worker with ``threads`` threads)."""
    env = {"VLNB_LINK_BASE": f"../{RUN_FILES_DIR}/{nb.stem}/"}  # from html/notebooks/<stem>.html
    if threads:
        env.update({k: str(threads) for k in THREAD_VARS})
    with temporary_environ(env):
        return run_notebook(nb, params, profile=profile, out_dir=out_dir, progress=progress and not threads)


def build_book(
    profile: str = "offline",
    build_dir: str | os.PathLike | None = None,
    notebooks: list[Path] | None = None,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    jobs: int | None = None,
) -> Path:
    """Execute every notebook in order, then ``jupyter-book build`` the executed copies.

    :func:`book_first` chapters run first (they train the reference models the others load), :data:`BOOK_LAST`
    last (it reads the other runs); the chapters in between only read, so ``jobs`` of them run side by side,
    the cores split between their kernels (:func:`book_jobs`; ``jobs=1``: one at a time, every core each).

    Layout under ``build_dir`` (default ``<repo>/_build``): ``runs/<notebook>/`` (run folders),
    ``src/`` (book sources + executed notebooks), ``html/index.html`` (the book).
    Returns the path of ``index.html``.

    vlnb marks a build folder it creates (``.vlnb-build``) and only ever deletes inside a marked folder; a
    non-empty folder without the marker is refused (:class:`OutDirError`).
    """
    t_book = time.time()
    build = claim_build_dir(Path(build_dir or REPO_ROOT / "_build"), default=build_dir is None)
    src = build / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in BOOK_FILES:
        s = REPO_ROOT / name
        if s.is_dir():
            shutil.copytree(s, src / name)
        else:
            shutil.copy2(s, src / name)
    (src / "notebooks").mkdir()
    timings, parts, cpu_parts = {}, {}, {}
    todo = list(notebooks or list_notebooks())
    first = [nb for nb in todo if nb.stem in book_first(profile)]
    last = [nb for nb in todo if nb.stem in BOOK_LAST]
    middle = [nb for nb in todo if nb not in first and nb not in last]
    jobs, threads = book_jobs(len(middle), jobs)

    def done(nb: Path, executed: Path, t0: float) -> None:
        # the book's copy: paths under the build folder as "…/runs/<chapter>/…" (papermill's injected out_dir,
        # printed output folders), not the absolute path of the machine that built it; the run folder keeps its own
        text = executed.read_text(encoding="utf-8")
        for prefix in dict.fromkeys([str(build.resolve()), str(build.absolute())]):
            text = text.replace(prefix, "…")
        (src / "notebooks" / nb.name).write_text(text, encoding="utf-8")
        timings[nb.stem] = round(time.time() - t0, 1)
        try:
            rec = json.loads((executed.parent / "run.json").read_text())
            timings[nb.stem] = rec.get("seconds", timings[nb.stem])  # its own run, also when side by side
            parts[nb.stem], cpu_parts[nb.stem] = rec["timing"], rec.get("timing_cpu") or {}
        except (OSError, ValueError, KeyError):
            pass
        print(f"[vlnb book] {nb.name}: {timings[nb.stem]} s", flush=True)

    def args(nb: Path) -> tuple:
        print(f"[vlnb book] executing {nb.name} ({profile}) ...", flush=True)
        if (build / "runs" / nb.stem).exists():  # the marked build folder is vlnb's: its old runs go
            shutil.rmtree(build / "runs" / nb.stem)
        return nb, (parameters or {}).get(nb.stem, {}), profile, build / "runs" / nb.stem, progress

    for nb in first:
        t0 = time.time()
        done(nb, _book_chapter(*args(nb)), t0)
    if jobs > 1:  # chapters that only read what the first ones wrote: side by side, threads split between them
        t_mid = time.time()
        print(f"[vlnb book] {len(middle)} chapters, {jobs} at a time with {threads} thread(s) each", flush=True)
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_book_chapter, *args(nb), threads): nb for nb in longest_first(middle)}
            failed = []
            for fut in as_completed(futures):
                try:
                    done(futures[fut], fut.result(), t_mid)
                except RunError as e:
                    failed.append(str(e))
            if failed:
                raise RunError("\n\n".join(failed))
        timings["parallel chapters (wall)"] = round(time.time() - t_mid, 1)
    else:
        for nb in middle:
            t0 = time.time()
            done(nb, _book_chapter(*args(nb)), t0)
    for nb in last:
        t0 = time.time()
        done(nb, _book_chapter(*args(nb)), t0)
    _prune_toc(src / "_toc.yml", {nb.stem for nb in todo})
    html = build / "html"
    if html.exists():
        shutil.rmtree(html)
    t0 = time.time()
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src)]
    cmd += ["--path-output", str(build / "jb")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # the return code is read below
    log = build / "jupyter-book.log"
    log.write_text(proc.stdout + "\n" + proc.stderr)
    built = build / "jb" / "_build" / "html"
    if proc.returncode != 0 or not (built / "index.html").exists():
        raise RunError(f"jupyter-book build failed (exit {proc.returncode}); see {log}\n{proc.stderr[-3000:]}")
    shutil.move(str(built), str(html))
    copy_run_files(build / "runs", html / RUN_FILES_DIR)
    timings["jupyter-book"] = round(time.time() - t0, 1)
    timings["book (wall)"] = round(time.time() - t_book, 1)
    (build / "timings.json").write_text(json.dumps(timings, indent=2))
    if parts:  # where each chapter's time went (vlnb.timing), also as a CSV
        table = breakdown_table(parts)
        table.to_csv(build / "timings.csv", index_label="chapter")
        print(f"[vlnb book] wall seconds per chapter and category:\n{table.to_string()}", flush=True)
        if any(cpu_parts.values()):
            cpu = breakdown_table({k: v for k, v in cpu_parts.items() if v})
            cpu.to_csv(build / "timings_cpu.csv", index_label="chapter")
            print(f"[vlnb book] kernel CPU seconds per chapter and category:\n{cpu.to_string()}", flush=True)
    print(f"[vlnb book] built {html / 'index.html'}  timings: {timings}", flush=True)
    return html / "index.html"
