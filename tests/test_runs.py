"""End to end: the CLI, and the session's offline book build (tests/conftest.py::offline_book): chapter 1's papermill
run, the built book, tracked notebooks left clean."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlnb.cli import main
from vlnb.data import load_manifest
from vlnb.paths import shared_data_dir
from vlnb.runs import list_notebooks


def test_notebooks_are_clean_and_have_kernel_metadata():
    import nbformat

    for nb_path in list_notebooks():
        nb = nbformat.read(nb_path, as_version=4)
        assert nb.metadata["kernelspec"]["language"] == "python"
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), f"{nb_path.name}: no parameters cell"
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{nb_path.name}: committed with outputs"
        assert "colab-badge" in nb.cells[0].source


def test_prepare_cli_writes_manifest_and_report(tmp_path, capsys):
    out = tmp_path / "coco.parquet"
    rc = main(["prepare", "coco", "--root", str(shared_data_dir(required=True) / "coco-mini"), "--split", "val2017",
               "--out", str(out)])
    assert rc == 0
    df = load_manifest(out)
    assert len(df) == 79 and all(len(c) >= 5 for c in df["captions"])
    assert "79" in capsys.readouterr().out


def test_prepare_cli_nothing_usable_is_an_error(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    caps = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10, "license": 1}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "a thing"}]}  # like COCO: no categories
    inst = {**caps, "annotations": [], "categories": [{"id": 1, "name": "thing", "supercategory": "x"}]}
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(caps))
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(inst))
    (root / "val2017" / "a.jpg").write_bytes(b"")  # zero-byte: the only image is bad
    rc = main(["prepare", "coco", "--root", str(root), "--split", "val2017", "--out", str(tmp_path / "m.parquet")])
    assert rc != 0
    assert (tmp_path / "m.bad_images.csv").read_text().count("empty file") == 1


def test_run_rejects_unknown_parameter_before_running(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vlnb", "run", str(list_notebooks()[0]), "-p", "world_n_trian", "5", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2 and "world_n_trian" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_chapter1_papermill_run(offline_book):
    """Chapter 1 as the book runs it (papermill via run_notebook, with conftest.BOOK_CH1_PARAMS: a small world)."""
    run, small = offline_book.run("01_data_prep"), offline_book.params["01_data_prep"]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "ok" and record["parameters"]["world_n_train"] == small["world_n_train"]
    assert Path(record["parameters"]["out_dir"]) == run.resolve()
    world = load_manifest(run / "manifests" / "world.parquet")
    assert (world["split"] == "train").sum() == small["world_n_train"]
    assert (world["split"] == "test").sum() == small["world_n_test"]
    assert (run / "results" / "manifest_overview.csv").exists()
    assert (run / "figures" / "world_grid.png").stat().st_size > 1000
    assert (run / "01_data_prep.ipynb").exists()


@pytest.mark.slow
def test_book_build_keeps_tracked_notebooks_clean(offline_book):
    tracked = list_notebooks()
    assert [nb.name for nb in offline_book.notebooks] == [nb.name for nb in tracked]  # the whole book was built
    index, build = offline_book.index, offline_book.build
    assert index.exists() and index.name == "index.html"
    # the build never touched the tracked notebooks (digests just before and just after it)
    assert offline_book.tracked_after == offline_book.tracked_before
    # every chapter ran to the end, and the book is built from the executed copies
    for nb in tracked:
        assert json.loads((offline_book.run(nb.stem) / "run.json").read_text())["status"] == "ok", nb.stem
        assert (build / "src" / "notebooks" / nb.name).is_file(), nb.name
    html = (index.parent / "notebooks" / "01_data_prep.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)
    # glued numbers are rendered into the prose (not left as {glue:text} roles)
    m = re.search(r"This run built (\d+) manifests with (\d+) images", text)
    small = offline_book.params["01_data_prep"]
    n_world = small["world_n_train"] + small["world_n_test"]
    assert m and int(m.group(1)) == 3 and int(m.group(2)) >= n_world
    assert "glue:text" not in text
    # every chapter is rendered, and nothing was left unresolved (glue keys, citations, cross-references)
    for nb in tracked:
        page = index.parent / "notebooks" / f"{nb.stem}.html"
        assert page.exists(), nb.stem
        # no absolute path of the building machine on a page (injected out_dir, printed folders, model names read
        # from the artifacts folder beside the build)
        assert str(build.parent.resolve()) not in page.read_text(), nb.stem
    log = (build / "jupyter-book.log").read_text()
    assert not re.findall(r"WARNING: .*(glue|citation|reference|undefined|unknown document)", log, flags=re.IGNORECASE), \
        log[-2000:]
    _check_built_book(build, index.parent, tracked)


def _check_built_book(build, html_dir, tracked):
    """What a reader of the built book must not meet (vlnb.hygiene, vlnb.synthesis; see tests/test_hygiene.py)."""
    from vlnb.hygiene import external_scripts, scan_notebooks
    from vlnb.synthesis import consistency

    # clean pages: no warnings, path reprs, stray results, duplicate images, over-long tables, nan in prose
    problems = scan_notebooks(sorted((build / "src" / "notebooks").glob("*.ipynb")))
    assert not problems, "\n".join(map(str, problems))
    # a chapter that saved figures shows them on its page (CI's MPLBACKEND=Agg must not reach the kernels)
    from vlnb.hygiene import missing_figures

    missing = [m for nb in tracked if (m := missing_figures(build / "src" / "notebooks" / nb.name,
                                                            build / "runs" / nb.stem / "figures"))]
    assert not missing, "\n".join(missing)
    # equations and pages render without a network: no script comes from elsewhere
    assert external_scripts(html_dir) == {}
    assert (html_dir / "_static" / "mathjax" / "MathJax.js").exists()
    # every run's tables are downloadable from its chapter page: the files are in the HTML output and linked
    for nb in tracked:
        csvs = sorted((build / "runs" / nb.stem / "results").glob("*.csv"))
        page = (html_dir / "notebooks" / f"{nb.stem}.html").read_text()
        for csv in csvs:
            assert (html_dir / "runs" / nb.stem / "results" / csv.name).exists(), (nb.stem, csv.name)
            assert f"../runs/{nb.stem}/results/{csv.name}" in page, (nb.stem, csv.name)
    # a headline number measured by two chapters (the same model on the same images) is the same number
    agree = consistency(build / "runs").dropna(subset=["agree"])
    assert len(agree) >= 2 and agree["agree"].astype(bool).all(), agree.to_string()


def test_book_jobs_split_the_cores_and_never_exceed_them(monkeypatch):
    from vlnb.runs import BOOK_FIRST, BOOK_LAST, BOOK_LONGEST_FIRST, book_first, book_jobs, longest_first

    monkeypatch.delenv("VLNB_BOOK_JOBS", raising=False)
    assert book_jobs(5, cores=2) == (2, 1)          # default: one chapter per core, one thread each
    assert book_jobs(5, jobs=1, cores=2) == (1, 2)  # one at a time: every core for it
    assert book_jobs(5, jobs=8, cores=4) == (4, 1)  # never more kernels than cores
    assert book_jobs(1, cores=16) == (1, 16)        # never more kernels than chapters
    assert book_jobs(5, jobs=2, cores=5) == (2, 2)  # threads x jobs <= cores
    monkeypatch.setenv("VLNB_BOOK_JOBS", "1")
    assert book_jobs(5, cores=2) == (1, 2)
    monkeypatch.setenv("VLNB_BOOK_JOBS", "two")
    with pytest.raises(ValueError, match="VLNB_BOOK_JOBS"):
        book_jobs(5, cores=2)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        book_jobs(5, jobs=0, cores=2)
    # the chapters that others read run before them; the synthesis after them
    stems = [nb.stem for nb in list_notebooks()]
    assert set(BOOK_FIRST) <= set(stems) and set(BOOK_LAST) <= set(stems)
    assert max(stems.index(s) for s in BOOK_FIRST) < min(stems.index(s) for s in BOOK_LAST)
    # offline, chapter 1 (local data only) runs beside the middle chapters; the full profile's downloads go first
    assert book_first("full") == BOOK_FIRST and book_first("offline") == ("02_clip_training",)
    # side by side, the longest middle chapters start first; every chapter is still run once
    middle = [nb for nb in list_notebooks() if nb.stem not in BOOK_FIRST + BOOK_LAST]
    order = [nb.stem for nb in longest_first(middle)]
    assert sorted(order) == sorted(nb.stem for nb in middle) and set(BOOK_LONGEST_FIRST) <= set(order)
    assert order[: len(BOOK_LONGEST_FIRST)] == list(BOOK_LONGEST_FIRST)
    assert order[len(BOOK_LONGEST_FIRST):] == sorted(order[len(BOOK_LONGEST_FIRST):])  # the rest in book order


def test_book_cli_refuses_zero_jobs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["book", "--jobs", "0"])
    assert e.value.code == 2 and "--jobs" in capsys.readouterr().err
