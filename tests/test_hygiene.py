"""The page-hygiene scanners (vlnb.hygiene) on synthetic notebooks and pages: each problem is seen, a clean
notebook passes. The book-build test (tests/test_runs.py) runs the same scanners on every built chapter."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from vlnb.hygiene import bibliography_problems, external_scripts, scan_notebook

PNG_A = base64.b64encode(b"\x89PNG fake image A").decode()
PNG_B = base64.b64encode(b"\x89PNG fake image B").decode()


def nb_with(*outputs_per_cell):
    cells = [new_markdown_cell("# a chapter")]
    for outs in outputs_per_cell:
        cells.append(new_code_cell("x", outputs=list(outs)))
    return new_notebook(cells=cells)


def kinds(nb):
    return sorted({p.kind for p in scan_notebook(nb, "t")})


def table_html(n_rows: int) -> str:
    rows = "".join(f"<tr><td>{i}</td></tr>" for i in range(n_rows))
    return f"<table class='dataframe'><thead><tr><th>a</th></tr></thead><tbody>{rows}</tbody></table>"


def test_a_clean_notebook_has_no_problem():
    nb = nb_with(
        [new_output("stream", name="stdout", text="3 manifests written\n")],
        [new_output("display_data", data={"image/png": PNG_A, "text/plain": "<Figure size 640x480 with 1 Axes>"})],
        [new_output("execute_result", data={"text/html": table_html(10), "text/plain": "   a\n0  1"},
                    execution_count=1)],
        [new_output("display_data", data={"text/plain": "'12.5'"}, metadata={"scrapbook": {"name": "x"}})],
    )
    assert scan_notebook(nb, "t") == []


def test_warnings_in_streams_and_results_are_found():
    for text in ("/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n",
                 "x.py:3: UserWarning: warmup_steps=50 >= total_steps=45\n",
                 "Warning: something odd\n"):
        nb = nb_with([new_output("stream", name="stderr", text=text)])
        assert kinds(nb) == ["warning"], text
    # "warning" as an ordinary word in a table or a sentence is not a warning
    assert kinds(nb_with([new_output("stream", name="stdout", text="no warnings were raised\n")])) == []


def test_path_reprs_and_stray_scalar_results_are_found():
    nb = nb_with([new_output("execute_result", data={"text/plain": "PosixPath('/tmp/run/figures/a.png')"},
                             execution_count=1)])
    assert kinds(nb) == ["path-repr", "stray-repr"]
    nb = nb_with([new_output("execute_result", data={"text/plain": "'0.2'"}, execution_count=1)])
    assert kinds(nb) == ["stray-repr"]


def test_duplicate_images_in_a_chapter_are_found():
    img = {"image/png": PNG_A, "text/plain": "<Figure>"}
    nb = nb_with([new_output("display_data", data=img), new_output("display_data", data=img)])
    found = scan_notebook(nb, "t")
    assert [p.kind for p in found] == ["duplicate-image"] and "cell 1" in found[0].detail
    nb = nb_with([new_output("display_data", data=img)], [new_output("display_data", data=img)])
    assert kinds(nb) == ["duplicate-image"]  # across cells too
    other = {"image/png": PNG_B, "text/plain": "<Figure>"}
    assert kinds(nb_with([new_output("display_data", data=img), new_output("display_data", data=other)])) == []


def test_long_tables_are_found():
    long = nb_with([new_output("execute_result", data={"text/html": table_html(56), "text/plain": "..."},
                               execution_count=1)])
    assert kinds(long) == ["long-table"]
    assert "56 rows" in scan_notebook(long, "t")[0].detail


def test_nan_and_na_glued_into_prose_are_found():
    for value in ("'nan'", "'relative mCE nan'", "'n/a'", "'gap 0.12 (n/a)'"):
        nb = nb_with([new_output("display_data", data={"text/plain": value}, metadata={"scrapbook": {"name": "x"}})])
        assert kinds(nb) == ["missing-in-prose"], value
    # as myst-nb writes a glue (papermill record): the value sits under the record's mime prefix
    rec = new_output("display_data", data={"application/papermill.record/text/plain": "'relative mCE nan'"},
                     metadata={"scrapbook": {"name": "x", "mime_prefix": "application/papermill.record/"}})
    assert kinds(nb_with([rec])) == ["missing-in-prose"]
    for value in ("'finance'", "'0.5 (nanometre)'", "'banana 3'"):
        nb = nb_with([new_output("display_data", data={"text/plain": value}, metadata={"scrapbook": {"name": "x"}})])
        assert kinds(nb) == [], value


def test_errors_are_found(tmp_path):
    nb = nb_with([new_output("error", ename="ValueError", evalue="boom", traceback=[])])
    path = tmp_path / "03_x.ipynb"
    nbformat.write(nb, str(path))
    found = scan_notebook(path)
    assert [(p.notebook, p.kind) for p in found] == [("03_x", "error")]


def test_external_scripts_are_listed(tmp_path):
    (tmp_path / "a.html").write_text('<script src="_static/mathjax/MathJax.js?config=x"></script>'
                                     '<script src="../_static/doctools.js"></script>')
    assert external_scripts(tmp_path) == {}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text(
        '<script defer="defer" src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
        "<script SRC='//cdnjs.cloudflare.com/require.js'></script>")
    assert external_scripts(tmp_path) == {str(Path("sub/b.html")): {
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js", "//cdnjs.cloudflare.com/require.js"}}


def test_bibliography_problems():
    bib = "@article{a2020x,\n title={A}}\n@book{ b1999y ,\n title={B}}\n"
    assert bibliography_problems(bib, ["see {cite}`a2020x,b1999y`"]) == {"uncited": set(), "missing": set()}
    assert bibliography_problems(bib, ["{cite:p}`a2020x` and {cite}`c2001z`"]) == {"uncited": {"b1999y"},
                                                                                    "missing": {"c2001z"}}


def test_the_book_sources_cite_every_entry_and_only_entries():
    root = Path(__file__).resolve().parents[1]
    sources = [p.read_text() for p in [*sorted((root / "notebooks").glob("*.py")), *sorted((root / "book").rglob("*.md"))]]
    problems = bibliography_problems((root / "book" / "references.bib").read_text(), sources)
    assert problems == {"uncited": set(), "missing": set()}, problems


def test_a_built_book_loads_no_external_script_and_serves_mathjax(tmp_path):
    """The repository's _config.yml and book/ pages, built without notebooks: equations are rendered by the
    MathJax copy in the build (vlnb.bookext), no page loads a script from the network, and the
    bibliography labels read like the citations (author–year)."""
    import shutil
    import subprocess
    import sys

    from vlnb.bookext import mathjax_source

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(root / "_config.yml", src / "_config.yml")
    shutil.copytree(root / "book", src / "book")
    (src / "book" / "math.md").write_text("# Math\n\nInline $a^2$ and {cite}`radford2021clip`.\n\n$$\\sum_i x_i$$\n")
    (src / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/math\n"
                                  "  - file: book/bibliography\n")
    proc = subprocess.run([sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src),
                           "--path-output", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    html = tmp_path / "out" / "_build" / "html"
    assert proc.returncode == 0 and (html / "index.html").exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert external_scripts(html) == {}
    page = (html / "book" / "math.html").read_text()
    assert mathjax_source() is not None, "vlnb[book] installs jupyter-server-mathjax (the packaged MathJax)"
    assert '_static/mathjax/MathJax.js?config=' in page and (html / "_static" / "mathjax" / "MathJax.js").exists()
    assert "Radford <em>et al.</em>, 2021" in page
    bib = (html / "book" / "bibliography.html").read_text()
    assert "Radford et al., 2021" in bib and "RKH" not in bib


def test_every_vlnb_run_command_in_the_book_names_real_parameters():
    """The exercises' and prose's ``vlnb run notebooks/NN_x.ipynb -p NAME VALUE …`` commands validate against the
    chapter's typed config (a renamed parameter would break a student's run)."""
    import re
    import shlex

    from vlnb.config import coerce_cli_value, resolve

    root = Path(__file__).resolve().parents[1]
    commands = []
    for src in [*sorted((root / "notebooks").glob("*.py")), *sorted((root / "book").rglob("*.md")), root / "README.md"]:
        for line in src.read_text().splitlines():
            m = re.search(r"vlnb run (notebooks/(\d\d_\w+)\.ipynb[^`]*)", line.lstrip("# "))
            if m:
                commands.append((src.name, m.group(2), m.group(1)))
    assert len(commands) >= 14, commands  # two exercises per chapter at least
    for src, stem, cmd in commands:
        words = shlex.split(cmd)
        params, profile = {}, "offline"
        for i, w in enumerate(words):
            if w == "-p":
                params[words[i + 1]] = coerce_cli_value(words[i + 2], words[i + 1])
            elif w == "--profile":
                profile = words[i + 1]
        resolve(stem, profile=profile, **params)  # raises ParameterError naming the parameter
        assert (root / "notebooks" / f"{stem}.ipynb").exists(), (src, cmd)


def test_preview_links_and_downloads(tmp_path, monkeypatch):
    """A long table is shown as a top-N with a link to its full CSV; savefig leaves no repr; the downloads list
    links every table and figure, relative to the executed notebook or under the book build's link base."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from vlnb.config import NotebookRun

    monkeypatch.setenv("VLNB_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("VLNB_LINK_BASE", raising=False)
    run = NotebookRun("01_data_prep", set())
    df = pd.DataFrame({"name": [f"r{i}" for i in range(56)], "drop": [float(i) for i in range(56)]})
    html = run.preview(df, "long", top=12, sort_by="drop").data
    assert len(pd.read_csv(tmp_path / "results" / "long.csv")) == 56
    assert html.count("<tr") == 12 + 1 and "r55" in html and "r0<" not in html  # largest drops first
    assert 'href="results/long.csv"' in html and "12 of 56 rows" in html
    df["note"] = "a wide column the page need not show"
    narrow = run.preview(df, "wide", top=3, sort_by="drop", columns=["name", "drop"]).data
    assert "wide column" not in narrow and "r55" in narrow
    assert list(pd.read_csv(tmp_path / "results" / "wide.csv").columns) == ["name", "drop", "note"]  # the CSV keeps all
    fig, _ = plt.subplots()
    assert run.savefig(fig, "f") is None and (tmp_path / "figures" / "f.png").exists()
    assert run.glue("x", "0.2") is None  # a cell ending with a glue shows no stray '0.2'
    plt.close(fig)
    monkeypatch.setenv("VLNB_LINK_BASE", "../runs/01_data_prep/")
    links = run.downloads().data
    assert 'href="../runs/01_data_prep/results/long.csv"' in links and 'href="../runs/01_data_prep/figures/f.png"' in links


def test_kernel_warning_filter_silences_tqdm_iprogress_from_the_start():
    """Chapters' kernels get PYTHONWARNINGS with this filter (vlnb.runs.run_notebook): tqdm.auto's
    "IProgress not found", raised by libraries imported before vlnb, never reaches a page; other warnings do."""
    import os
    import subprocess
    import sys

    from vlnb.runs import KERNEL_WARNING_FILTER

    code = ("import warnings; from tqdm.std import TqdmWarning; "
            "warnings.warn('IProgress not found. Please update jupyter and ipywidgets.', TqdmWarning); "
            "warnings.warn('something else', UserWarning)")
    env = {**os.environ, "PYTHONWARNINGS": KERNEL_WARNING_FILTER}
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
    assert "IProgress" not in err and "something else" in err


def test_a_run_that_saved_figures_but_shows_none_is_found(tmp_path):
    import json

    from vlnb.hygiene import missing_figures, shown_figures

    def nb(outputs):
        return {"cells": [{"cell_type": "code", "source": "fig", "outputs": outputs, "metadata": {}}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "curves.png").write_bytes(b"png")
    blind = tmp_path / "blind.ipynb"
    blind.write_text(json.dumps(nb([{"output_type": "stream", "name": "stdout", "text": "ok"}])))
    shown = tmp_path / "shown.ipynb"
    shown.write_text(json.dumps(nb([{"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "F"},
                                     "metadata": {}}])))
    assert shown_figures(blind) == 0 and shown_figures(shown) == 1
    assert "saved 1 figure(s)" in missing_figures(blind, tmp_path / "figures")
    assert missing_figures(shown, tmp_path / "figures") is None
    assert missing_figures(blind, tmp_path / "no-figures") is None  # a chapter without figures shows none: fine


@pytest.mark.parametrize("display", [False, True])
def test_glue_writes_what_myst_nb_glue_writes(monkeypatch, tmp_path, display):
    """vlnb writes the glue output itself (myst_nb.ext.glue's import costs a kernel ~2 s): the same display
    call, for a number and a table, shown or not."""
    myst_glue = pytest.importorskip("myst_nb.ext.glue")
    import IPython.display

    from vlnb.config import GLUE_PREFIX, NotebookRun

    assert GLUE_PREFIX == myst_glue.GLUE_PREFIX
    monkeypatch.setenv("VLNB_RUN_DIR", str(tmp_path))
    run = NotebookRun("01_data_prep", set())
    for value in (12.5, pd.DataFrame({"a": [1, 2]})):
        calls = {}
        monkeypatch.setattr(myst_glue, "ipy_display", lambda *a, calls=calls, **k: calls.setdefault("myst_nb", (a, k)))
        monkeypatch.setattr(IPython.display, "display", lambda *a, calls=calls, **k: calls.setdefault("vlnb", (a, k)))
        myst_glue.glue("v", value, display=display)
        assert run.glue("v", value, display=display) is None
        assert calls["vlnb"] == calls["myst_nb"]
        assert calls["vlnb"][1]["metadata"]["scrapbook"]["name"] == "v"
