"""Per-image annotations that do not fit a manifest cell (masks, boxes), reachable by ``image_id``.

A manifest's ``attrs["vlnb"]["annotations"]`` says where they come from, e.g.
``{"kind": "coco", "instances": "/path/instances_val2017.json"}`` or ``{"kind": "world", ...}``.
Providers register a factory for their kind; :func:`get_annotations` dispatches.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd


@dataclass
class ObjectAnnotation:
    """One object in one image. ``bbox`` is COCO-style ``(x, y, w, h)`` in pixels of the original image."""

    category: str
    bbox: tuple[float, float, float, float]
    mask: np.ndarray | None = None  # (H, W) bool
    area: float | None = None
    attributes: dict = field(default_factory=dict)


_PROVIDERS: dict[str, Callable[[dict], Callable[[object], list[ObjectAnnotation]]]] = {}


def register_provider(kind: str):
    """Decorator: ``factory(spec) -> lookup(image_id) -> list[ObjectAnnotation]``."""

    def deco(factory):
        _PROVIDERS[kind] = factory
        return factory

    return deco


@lru_cache(maxsize=16)
def _lookup(kind: str, spec_key: str):

    return _PROVIDERS[kind](json.loads(spec_key))


def get_annotations(df: pd.DataFrame, image_id) -> list[ObjectAnnotation]:
    """Objects (category, box, mask) of ``image_id`` in the manifest ``df``."""

    spec = dict(df.attrs.get("vlnb", {}).get("annotations") or {})
    if not spec:
        name = df.attrs.get("vlnb", {}).get("name", "?")
        raise KeyError(f"data set '{name}' has no per-image annotations (no masks or boxes)")
    kind = spec.get("kind")
    if kind not in _PROVIDERS:
        # providers register when their module is imported; import only the one this spec names

        try:
            importlib.import_module(f"{__package__}.{kind}")
        except ModuleNotFoundError:
            pass
    if kind not in _PROVIDERS:
        raise KeyError(f"unknown annotation kind {kind!r}; known: {sorted(_PROVIDERS)}")
    return _lookup(kind, json.dumps(spec, sort_keys=True))(image_id)
