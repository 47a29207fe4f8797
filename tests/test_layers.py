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


def _unexplained_function_imports(path: Path) -> list[str]:
    """Imports inside a function (or method) without a ``# lazy: <reason>`` comment: on the import's own lines, or
    as a comment line directly above it or above the block of imports it belongs to."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    starts = {n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))}
    ends = {n.end_lineno: n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))}
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for n in ast.walk(fn):
            if not isinstance(n, (ast.Import, ast.ImportFrom)) or n.lineno not in starts:
                continue
            ok = any("# lazy:" in line for line in lines[n.lineno - 1:n.end_lineno])
            above = n.lineno - 1  # walk up over the imports of the same block, to the comment above it
            while not ok and above >= 1:
                text = lines[above - 1].strip()
                if text.startswith("# lazy:"):
                    ok = True
                elif above in ends:  # the import just above, on lines ends[above]..above
                    above = ends[above] - 1
                    continue
                break
            if not ok:
                bad.append(f"{path.relative_to(ROOT)}:{n.lineno}: {lines[n.lineno - 1].strip()}")
            starts.discard(n.lineno)  # a nested function's import is reported once
    return bad


def test_function_level_imports_say_why_they_are_not_at_the_top():
    bad = [line for p in sorted((ROOT / "vlnb").rglob("*.py")) for line in _unexplained_function_imports(p)]
    assert not bad, ("imports inside functions belong at the top of the file, unless a '# lazy: <reason>' comment "
                     "says why not (an import cycle, an optional or slow dependency):\n" + "\n".join(bad))


def test_the_function_import_check_sees_one(tmp_path, monkeypatch):
    src = tmp_path / "m.py"
    src.write_text("import os\n\n\ndef f():\n    import json\n\n    # lazy: optional\n    import yaml\n"
                   "    import toml\n\n    import csv  # lazy: a cycle\n    x = 1\n    import re\n    return os, json, x\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _unexplained_function_imports(src) == ["m.py:5: import json", "m.py:13: import re"]
