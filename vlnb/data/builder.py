"""One entry point for every data set: ``build_manifest(name, ...) -> (manifest, bad_image_report)``.

Every builder returns a validated manifest (see :mod:`vlnb.data.manifest`) and the report of images
that were skipped (columns ``image_id, path, reason``), never crashing on one bad file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from ..paths import shared_data_dir
from .coco import load_coco
from .hub import load_cifar100, load_flickr30k, load_pokemon
from .world import build_world_manifest

DATASETS = ("world", "coco", "flickr30k", "pokemon", "cifar100")


def _world(root=None, split=None, **kw):

    return build_world_manifest(**kw)


def _coco(root=None, split=None, **kw):

    if root is None:
        root = shared_data_dir(required=True) / "coco-mini"
    return load_coco(root, split=split or "val2017", **kw)


def _flickr(root=None, split=None, **kw):

    return load_flickr30k(root or "nlphuji/flickr30k", split=split or "test", **kw)


def _pokemon(root=None, split=None, **kw):

    return load_pokemon(root or "reach-vb/pokemon-blip-captions", split=split or "train", **kw)


def _cifar(root=None, split=None, **kw):

    if root is None:
        root = shared_data_dir(required=True) / "cifar100-test-partial" / "cifar100_test_first916.npz"
    return load_cifar100(root, split=split or "test", **kw)


_BUILDERS: dict[str, Callable[..., tuple[pd.DataFrame, pd.DataFrame]]] = {
    "world": _world,
    "coco": _coco,
    "flickr30k": _flickr,
    "pokemon": _pokemon,
    "cifar100": _cifar,
}


def build_manifest(name: str, root: Any = None, split: str | None = None, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the manifest of data set ``name`` (one of :data:`DATASETS`).

    ``root`` is the data set's location: a folder (COCO), a hub id / local ``save_to_disk`` folder /
    parquet file (Flickr30k, Pokemon, CIFAR-100), or an ``.npz`` (the partial CIFAR-100 test set).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return _BUILDERS[name](root=root, split=split, **kwargs)
