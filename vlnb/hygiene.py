"""Checks that the rendered book reads clean: what a student should never see on a page.

- :func:`scan_notebook` looks at an *executed* notebook's outputs: warnings (``TqdmWarning``,
  ``UserWarning``, ``Warning:`` …), reprs of paths (``PosixPath(...)``), a stray repr as a cell's only
  result (``'0.2'``, ``None``, ``[<Axes …>]``), the same image rendered twice, tables too long for a page,
  and ``nan`` / ``n/a`` glued into the prose.
- :func:`external_scripts` lists the ``<script src="http…">`` of a built HTML book (the book must render,
  equations included, without a network).
- :func:`bibliography_problems` compares the keys of a ``.bib`` file with the ``{cite}`` keys of the
  sources: every entry cited, every citation in the bibliography.

The book-build test runs them on every page of a build; ``tests/test_hygiene.py`` checks the scanners
themselves on synthetic notebooks.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nbformat

#: A warning class name or a ``Warning:`` prefix, as Python's warnings module prints them.
WARNING_RE = re.compile(r"\b[A-Z]\w*Warning\b|\bWarning:|\bWARNING\b")
PATH_REPR_RE = re.compile(r"\b(?:Posix|Windows|Pure\w*)?Path\(['\"]")
#: What must never be glued into prose: a missing value printed as text.
MISSING_RE = re.compile(r"(?<![\w.])(?:nan|NaN|n/a|N/A|inf|<NA>|NaT)(?![\w])")
#: Rows above which a table is too long for a page (show a top-N and link the CSV).
MAX_TABLE_ROWS = 30


@dataclass(frozen=True)
class Problem:
    notebook: str
    cell: int  # index of the cell in the notebook (-1: the notebook as a whole)
    kind: str  # warning | path-repr | stray-repr | duplicate-image | long-table | missing-in-prose
    detail: str

    def __str__(self) -> str:
        return f"{self.notebook} cell {self.cell}: {self.kind}: {self.detail}"


def _text(x) -> str:
    return "".join(x) if isinstance(x, list) else str(x or "")


def _table_rows(html: str) -> int:
    """Body rows of the largest ``<table>`` in an HTML output."""
    best = 0
    for body in re.findall(r"<tbody>(.*?)</tbody>", html, flags=re.DOTALL):
        best = max(best, len(re.findall(r"<tr\b", body)))
    return best


def _is_glue(output) -> bool:
    return "scrapbook" in (output.get("metadata") or {})


def scan_notebook(nb, name: str = "notebook", max_table_rows: int = MAX_TABLE_ROWS) -> list[Problem]:
    """Every hygiene problem in the outputs of an executed notebook (an ``nbformat`` node or a path)."""
    if isinstance(nb, (str, Path)):
        name = Path(nb).stem if name == "notebook" else name
        nb = nbformat.read(str(nb), as_version=4)
    problems: list[Problem] = []
    seen_images: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            texts = []
            if kind == "stream":
                texts.append(_text(out.get("text")))
            elif kind == "error":
                problems.append(Problem(name, i, "error", f"{out.get('ename')}: {out.get('evalue')}"))
                continue
            data = out.get("data") or {}
            if _is_glue(out):  # a value glued into the prose: it is read inside a sentence
                prefix = (out.get("metadata") or {}).get("scrapbook", {}).get("mime_prefix", "")
                for mime in ("text/plain", "text/markdown", "text/html"):
                    key = next((k for k in (prefix + mime, mime) if k in data), None)
                    if key is not None:
                        value = _text(data[key])
                        if mime == "text/plain":
                            value = value.strip("'\"")
                        if MISSING_RE.search(value):
                            problems.append(Problem(name, i, "missing-in-prose", f"glued value {value[:120]!r}"))
                            break
                continue
            if "text/plain" in data:
                texts.append(_text(data["text/plain"]))
            for t in texts:
                m = WARNING_RE.search(t)
                if m:
                    line = next(ln for ln in t.splitlines() if m.group(0) in ln)
                    problems.append(Problem(name, i, "warning", line.strip()[:160]))
                if PATH_REPR_RE.search(t):
                    problems.append(Problem(name, i, "path-repr", t.strip()[:160]))
            if kind == "execute_result" and set(data) <= {"text/plain"}:
                problems.append(Problem(name, i, "stray-repr", _text(data.get("text/plain")).strip()[:160]))
            if "text/html" in data:
                rows = _table_rows(_text(data["text/html"]))
                if rows > max_table_rows:
                    problems.append(Problem(name, i, "long-table", f"{rows} rows (show a top-N, link the CSV)"))
            for mime in ("image/png", "image/jpeg", "image/svg+xml"):
                if mime in data:
                    h = hashlib.sha1(_text(data[mime]).encode()).hexdigest()
                    if h in seen_images:
                        problems.append(Problem(name, i, "duplicate-image",
                                                f"same image as cell {seen_images[h]}"))
                    else:
                        seen_images[h] = i
    return problems


def scan_notebooks(paths: Iterable[str | Path], **kw) -> list[Problem]:
    return [p for path in paths for p in scan_notebook(Path(path), **kw)]


def shown_figures(path: str | Path) -> int:
    """How many figures (``image/png`` outputs) an executed notebook shows."""
    nb = json.loads(Path(path).read_text())
    return sum("image/png" in out.get("data", {}) for c in nb.get("cells", []) if c.get("cell_type") == "code"
               for out in c.get("outputs", []))


def missing_figures(executed: str | Path, figures_dir: str | Path) -> str | None:
    """A problem line when a run saved figures (``figures/*.png``) but its executed notebook shows none of them
    (a kernel whose matplotlib backend draws nowhere, e.g. an inherited ``MPLBACKEND=Agg``); else None."""
    saved = sorted(Path(figures_dir).glob("*.png")) if Path(figures_dir).is_dir() else []
    if saved and shown_figures(executed) == 0:
        return f"{Path(executed).name}: saved {len(saved)} figure(s) under {figures_dir} but shows none on its page"
    return None


SCRIPT_SRC_RE = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", flags=re.IGNORECASE)


def external_scripts(html_dir: str | Path) -> dict[str, set[str]]:
    """``{page: {url, …}}`` of every ``<script src>`` that points off the machine (http, https or //)."""
    found: dict[str, set[str]] = {}
    for page in sorted(Path(html_dir).rglob("*.html")):
        srcs = {s for s in SCRIPT_SRC_RE.findall(page.read_text(errors="replace"))
                if re.match(r"(?i)(https?:)?//", s)}
        if srcs:
            found[str(page.relative_to(html_dir))] = srcs
    return found


BIB_KEY_RE = re.compile(r"@\w+\s*\{\s*([^,\s]+)\s*,")
CITE_RE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def bib_keys(bib_text: str) -> set[str]:
    return set(BIB_KEY_RE.findall(bib_text))


def cite_keys(texts: Iterable[str]) -> set[str]:
    keys: set[str] = set()
    for t in texts:
        for group in CITE_RE.findall(t):
            keys.update(k.strip() for k in group.split(",") if k.strip())
    return keys


def bibliography_problems(bib_text: str, sources: Iterable[str]) -> dict[str, set[str]]:
    """``{"uncited": keys in the bib no source cites, "missing": keys cited but not in the bib}``."""
    entries, cited = bib_keys(bib_text), cite_keys(sources)
    return {"uncited": entries - cited, "missing": cited - entries}
