"""Papermill runs and the book build.

- :func:`run_notebook` executes one notebook with validated parameters into a run folder
  (the executed notebook, ``run.json`` and the notebook's own result files land there).
- :func:`build_book` executes every notebook in order into ``_build/`` and builds the HTML book from
  the executed copies; the tracked notebooks are never modified.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import resolve
from .paths import REPO_ROOT, notebooks_dir

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
    except Exception:
        return None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "numpy", "pandas", "papermill"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def run_notebook(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    profile: str = "offline",
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log_output: bool = False,
) -> Path:
    """Execute ``notebook`` with papermill into ``out_dir`` and return the executed notebook's path.

    Parameters are validated first (unknown name / wrong type -> :class:`vlnb.config.ParameterError`
    before anything runs). The run folder receives the executed notebook, ``run.json`` (parameters,
    profile, versions, timing, git commit) and whatever the notebook writes (``results/``, ``figures/``).
    """
    import papermill as pm

    nb = Path(notebook).resolve()
    if not nb.exists():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    params = dict(parameters or {})
    resolve(nb.stem, profile=profile, **params)  # fail fast, naming the parameter
    out = Path(out_dir or Path("runs") / f"{nb.stem}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    executed = out / nb.name
    injected = {**params, "profile": profile, "out_dir": str(out)}
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
    env = {"VLNB_RUN_DIR": str(out), "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    env_before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
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
    except Exception as e:  # papermill's error names the failing cell; keep the partial notebook
        record["status"] = f"failed: {type(e).__name__}"
        raise RunError(f"notebook {nb.name} failed (executed copy with the error: {executed}):\n{e}") from None
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        record["seconds"] = round(time.time() - t0, 1)
        (out / "run.json").write_text(json.dumps(record, indent=2, default=str))
    return executed


def _prune_toc(toc: Path, stems: set[str]) -> None:
    """Drop chapters that were not executed in this build (a partial build must still be a valid book)."""
    keep = []
    for line in toc.read_text().splitlines():
        m = re.match(r"\s*- file: notebooks/(\S+)\s*$", line)
        if m and m.group(1) not in stems:
            continue
        keep.append(line)
    toc.write_text("\n".join(keep) + "\n")


def build_book(
    profile: str = "offline",
    build_dir: str | os.PathLike | None = None,
    notebooks: list[Path] | None = None,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> Path:
    """Execute every notebook in order, then ``jupyter-book build`` the executed copies.

    Layout under ``build_dir`` (default ``<repo>/_build``): ``runs/<notebook>/`` (run folders),
    ``src/`` (book sources + executed notebooks), ``html/index.html`` (the book).
    Returns the path of ``index.html``.
    """
    build = Path(build_dir or REPO_ROOT / "_build").resolve()
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
    timings = {}
    for nb in notebooks or list_notebooks():
        t0 = time.time()
        print(f"[vlnb book] executing {nb.name} ({profile}) ...", flush=True)
        executed = run_notebook(
            nb, (parameters or {}).get(nb.stem, {}), profile=profile, out_dir=build / "runs" / nb.stem, progress=progress
        )
        shutil.copy2(executed, src / "notebooks" / nb.name)
        timings[nb.stem] = round(time.time() - t0, 1)
        print(f"[vlnb book] {nb.name}: {timings[nb.stem]} s", flush=True)
    _prune_toc(src / "_toc.yml", {nb.stem for nb in notebooks or list_notebooks()})
    html = build / "html"
    if html.exists():
        shutil.rmtree(html)
    t0 = time.time()
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src)]
    cmd += ["--path-output", str(build / "jb")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = build / "jupyter-book.log"
    log.write_text(proc.stdout + "\n" + proc.stderr)
    built = build / "jb" / "_build" / "html"
    if proc.returncode != 0 or not (built / "index.html").exists():
        raise RunError(f"jupyter-book build failed (exit {proc.returncode}); see {log}\n{proc.stderr[-3000:]}")
    shutil.move(str(built), str(html))
    timings["jupyter-book"] = round(time.time() - t0, 1)
    (build / "timings.json").write_text(json.dumps(timings, indent=2))
    print(f"[vlnb book] built {html / 'index.html'}  timings: {timings}", flush=True)
    return html / "index.html"
