"""The chapters are jupytext pairs: ``notebooks/NN_name.py`` (the source people edit) and
``notebooks/NN_name.ipynb`` (what Colab, papermill and the book open). These tests fail when a pair has
drifted, when a parameters cell and its typed config disagree, or when a source does not lint."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from vlnb.config import params_class

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_every_chapter_is_a_pair():
    assert len(NOTEBOOKS) >= 7
    ipynb = {p.stem for p in NOTEBOOKS}
    py = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")}
    assert ipynb == py, f"unpaired: {sorted(ipynb ^ py)}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(nb_path):
    """Same cells, same order, same sources and tags (outputs and ids are not compared)."""
    text = jupytext.read(nb_path.with_suffix(".py"))
    notebook = nbformat.read(nb_path, as_version=4)
    a, b = _cells(text), _cells(notebook)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, (f"{nb_path.stem}: cell {i} differs between .py and .ipynb; "
                        f"run `jupytext --sync notebooks/{nb_path.stem}.py`")
    assert len(a) == len(b), f"{nb_path.stem}: {len(a)} cells in .py, {len(b)} in .ipynb"
    assert notebook.metadata["kernelspec"]["language"] == "python"  # papermill needs it
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert not any(c.get("outputs") for c in notebook.cells), "committed notebooks carry no outputs"


def _parameter_names(nb) -> list[str]:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    names = []
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        names.append(node.targets[0].id)
    return names


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_declares_exactly_the_config(nb_path):
    declared = _parameter_names(jupytext.read(nb_path.with_suffix(".py")))
    fields = list(params_class(nb_path.stem).model_fields)
    assert declared == fields, (f"{nb_path.stem}: parameters cell {declared} != config fields {fields} "
                                f"(vlnb/params or vlnb/config.py)")


def test_parameters_cell_checker_catches_drift():
    """The check above is not vacuous: a missing or reordered name is seen."""
    nb = jupytext.reads('# %% tags=["parameters"]\nprofile = "offline"\nseed = 0\nout_dir = "."\n', fmt="py:percent")
    assert _parameter_names(nb) == ["profile", "seed", "out_dir"]
    assert _parameter_names(nb) != list(params_class("01_data_prep").model_fields)


def test_notebook_sources_lint_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    proc = subprocess.run([ruff, "check", "--output-format", "concise", *map(str, sorted(
        (ROOT / "notebooks").glob("*.py")))], check=False, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
