"""Atomic, safely loadable training checkpoints and exact random-state capture.

A checkpoint holds only tensors and plain containers of str/int/float/bool/None, so it loads with
``torch.load(path, weights_only=True)`` (no arbitrary unpickling). It is written to a temporary file
in the same folder and moved into place with :func:`os.replace`, so a crash mid-write never leaves a
half-written checkpoint behind: the previous one stays valid.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..paths import atomic_write, clean_stale_temp


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) random states as weights-only-safe values."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically (temporary file + ``os.replace``) and return the path."""

    path = Path(path)
    clean_stale_temp(path.parent, path.name)  # left by a writer killed mid-write (SIGKILL, power loss)
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a clear error if it is missing or unsafe."""

    path = Path(path)
    clean_stale_temp(path.parent, path.name)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for non-weights-only content, RuntimeError for junk
        raise RuntimeError(
            f"cannot load checkpoint {path} with weights_only=True ({type(e).__name__}: {e}); it is "
            "corrupt or holds objects other than tensors and plain containers"
        ) from e
