"""Write a vlnb chapter notebook from a list of cells (a development tool, not part of the package).

Chapter sources live next to this file as ``tools/chapters/<stem>.py``; each defines ``CELLS``, a list of
``("md", text)`` / ``("code", text)`` / ``("params", text)`` tuples.  ``python tools/nbgen.py <stem>``
(or ``all``) regenerates ``notebooks/<stem>.ipynb`` with: the Colab badge under the title, the Colab
install cell, kernelspec/language metadata (papermill needs it), stable cell ids and no outputs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
REPO = "vlnb-book/vlnb"
INSTALL = (
    "# In Colab, install vlnb first (locally it is already installed with `pip install -e .`).\n"
    "import sys\n"
    'if "google.colab" in sys.modules:\n'
    f'    %pip install -q "vlnb[all] @ git+https://github.com/{REPO}"'
)


def badge(stem: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{stem}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def make(stem: str, cells: list[tuple[str, str]]) -> Path:
    """``cells[0]`` must be the markdown title cell (``# N. Title`` + intro); the badge goes under its title."""
    kind, first = cells[0]
    first = first.strip("\n")
    if kind != "md" or not first.startswith("# "):
        raise ValueError("the first cell must be markdown starting with '# <title>'")
    title, _, rest = first.partition("\n")
    out = [nbformat.v4.new_markdown_cell(f"{title}\n\n{badge(stem)}\n{rest}".rstrip()),
           nbformat.v4.new_code_cell(INSTALL)]
    for kind, src in cells[1:]:
        src = src.strip("\n")
        if kind == "md":
            out.append(nbformat.v4.new_markdown_cell(src))
        elif kind == "code":
            out.append(nbformat.v4.new_code_cell(src))
        elif kind == "params":
            out.append(nbformat.v4.new_code_cell(src, metadata={"tags": ["parameters"]}))
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
    for i, c in enumerate(out):
        c.id = hashlib.sha1(f"{stem}:{i}".encode()).hexdigest()[:8]
    nb = nbformat.v4.new_notebook(cells=out)
    nb.metadata = {
        "colab": {"provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
    }
    nbformat.validate(nb)
    path = ROOT / "notebooks" / f"{stem}.ipynb"
    nbformat.write(nb, path)
    return path


def _load(stem: str):
    src = ROOT / "tools" / "chapters" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"_chapter_{stem}", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CELLS


if __name__ == "__main__":
    stems = sys.argv[1:] or ["all"]
    if stems == ["all"]:
        stems = sorted(p.stem for p in (ROOT / "tools" / "chapters").glob("[0-9]*.py"))
    for stem in stems:
        print(make(stem, _load(stem)))
