"""Progress bars: ``tqdm.auto``'s notebook bar only where a notebook can draw it.

``tqdm.auto`` picks the notebook bar in any Jupyter kernel and, when ``ipywidgets`` is not installed (as in
the book's papermill runs), prints a ``TqdmWarning: IProgress not found`` into the cell's output. Here the
notebook bar is used only when ``ipywidgets`` imports; otherwise the plain text bar, which needs nothing.
Book runs disable bars altogether (``TQDM_DISABLE=1``, set by :func:`vlnb.runs.run_notebook`).
"""

from __future__ import annotations

import importlib.util
import warnings

from tqdm.std import TqdmWarning
from tqdm.std import tqdm as text_bar

# Libraries the book uses (huggingface_hub, sentence-transformers …) import ``tqdm.auto`` themselves; in a
# Jupyter kernel without ipywidgets that import warns "IProgress not found" into whichever cell triggers it.
# Their bars fall back to text (and are off in book runs); the warning says nothing about the results.
# ``import vlnb`` installs this one filter (vlnb/__init__.py), so no chapter shows it.
warnings.filterwarnings("ignore", message=r"IProgress not found", category=TqdmWarning)


def _bar_class():
    try:
        from IPython import get_ipython  # lazy: `import vlnb` imports this module; IPython is slow to import

        in_kernel = get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except (ImportError, AttributeError):
        in_kernel = False
    if in_kernel and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_bar  # lazy: needs ipywidgets; only in a Jupyter kernel

        return notebook_bar
    return text_bar


def tqdm(*args, **kwargs):
    """A progress bar (same arguments as ``tqdm.tqdm``)."""
    return _bar_class()(*args, **kwargs)
