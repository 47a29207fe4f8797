"""Where things live: the repository, the shared offline data, caches and run folders.

Every location can be overridden by an environment variable so that Colab, CI and a laptop
can all run the same notebooks:

- ``VLNB_SHARED_DATA``: the offline data folder (default: ``<repo>/../shared/data``).
- ``VLNB_CACHE``: feature/manifests cache (default: ``<repo>/.cache/vlnb`` or ``~/.cache/vlnb``).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def shared_data_dir(required: bool = False) -> Path:
    """The folder holding the real offline data (coco-mini, CIFAR-100 partial, CLIP tokenizer...)."""
    env = os.environ.get("VLNB_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if required:
        raise FileNotFoundError(
            "vlnb could not find the shared offline data folder. Looked in: "
            + ", ".join(str(c) for c in candidates)
            + ". Set VLNB_SHARED_DATA to the folder that holds coco-mini/ and cifar100-test-partial/."
        )
    return candidates[0] if candidates else REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    env = os.environ.get("VLNB_CACHE")
    if env:
        p = Path(env)
    elif os.access(REPO_ROOT, os.W_OK):
        p = REPO_ROOT / ".cache" / "vlnb"
    else:
        p = Path.home() / ".cache" / "vlnb"
    p.mkdir(parents=True, exist_ok=True)
    return p


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks"
