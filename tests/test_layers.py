"""The package's structure: imports point one way (import-linter, contract in pyproject.toml) and no module
imports another module's private names."""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_one_way(capsys):
    from importlinter.cli import lint_imports

    cwd = Path.cwd()
    os.chdir(ROOT)  # lint-imports reads the contract from ./pyproject.toml
    try:
        status = lint_imports(no_cache=True, no_logo=True)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "1 kept, 0 broken" in out


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT)}:{n.lineno}: from {'.' * n.level}{n.module or ''} import {a.name}"
            for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]


def test_no_private_names_imported_across_modules():
    bad = [line for p in sorted((ROOT / "vlnb").rglob("*.py")) for line in _private_imports(p)]
    assert not bad, "private names imported from another module (make them public or move the caller):\n" + "\n".join(bad)


def test_the_private_import_check_sees_one(tmp_path, monkeypatch):
    src = tmp_path / "m.py"
    src.write_text("from .other import _hidden, visible\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _private_imports(src) == ["m.py:1: from .other import _hidden"]


def test_the_package_map_names_every_module_and_sub_package():
    import vlnb

    doc = vlnb.__doc__
    names = [p.stem for p in (ROOT / "vlnb").glob("*.py") if p.stem != "__init__"]
    names += [p.parent.name for p in (ROOT / "vlnb").glob("*/__init__.py")]
    missing = sorted(n for n in names if f":mod:`vlnb.{n}`" not in doc)
    assert not missing, f"vlnb/__init__.py's map of the package lacks {missing}"
