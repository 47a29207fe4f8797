"""Subgroups of the book's test sets: COCO categories, caption-derived perceived gender, world attributes.

Every function returns a frame indexed by ``image_id`` with one column per *grouping* (a way of cutting
the test set into groups) and one group label per image, ready for :func:`vlnb.fairness.group_table`:

- :func:`coco_groups` -- ``category`` (the largest object's category, the manifest's ``primary_category``),
  ``supercategory`` (that category's COCO supercategory) and ``gender`` (see :mod:`vlnb.fairness.gender`).
- :func:`world_groups` -- ``colour`` / ``shape`` / ``size`` (of the largest object), ``background``, and
  ``rare group`` (whether the image shows the value a rare-group world made rare: ``"rare"`` / ``"other"``).

An image that belongs to no group of a grouping (a COCO image without objects) gets ``None`` and is left
out of that grouping's analysis.
"""

from __future__ import annotations

import json

import pandas as pd

from .gender import gender_labels


def coco_supercategories(manifest: pd.DataFrame) -> dict[str, str]:
    """``{category: supercategory}`` from the instances file(s) the COCO manifest was built from."""
    spec = manifest.attrs.get("vlnb", {}).get("annotations") or {}
    files = spec.get("instances") or []
    files = [files] if isinstance(files, str) else list(files)
    out: dict[str, str] = {}
    for f in files:
        try:
            with open(f) as fh:
                out.update({c["name"]: c["supercategory"] for c in json.load(fh).get("categories", [])})
        except OSError:
            continue
    if not out:
        raise ValueError(
            "cannot map COCO categories to supercategories: the manifest does not point at a readable "
            "instances_*.json (build it with vlnb.data.build_manifest('coco', ...))"
        )
    return out


def coco_groups(manifest: pd.DataFrame, min_captions: int = 1) -> pd.DataFrame:
    """``category``, ``supercategory`` and ``gender`` of every image of a COCO manifest (index ``image_id``)."""
    missing = [c for c in ("image_id", "captions", "primary_category") if c not in manifest.columns]
    if missing:
        raise ValueError(f"coco_groups needs a COCO manifest (columns image_id, captions, primary_category); "
                         f"missing {missing}")
    sup = coco_supercategories(manifest)
    cat = [c if isinstance(c, str) and c else None for c in manifest["primary_category"]]
    unknown = sorted({c for c in cat if c is not None and c not in sup})
    if unknown:
        raise ValueError(f"categories {unknown} are not in the instances file's category list")
    gender = gender_labels(manifest, min_captions=min_captions)["gender"].to_numpy()
    return pd.DataFrame({"category": cat, "supercategory": [sup.get(c) if c else None for c in cat],
                         "gender": gender}, index=pd.Index(manifest["image_id"], name="image_id"))


WORLD_GROUPINGS = {"colour": "primary_colour", "shape": "primary_shape", "size": "primary_size",
                   "background": "background"}


def world_groups(manifest: pd.DataFrame) -> pd.DataFrame:
    """``colour``, ``shape``, ``size`` (largest object), ``background`` and ``rare group`` of every world image."""
    missing = [c for c in [*WORLD_GROUPINGS.values(), "contains_rare"] if c not in manifest.columns]
    if missing:
        raise ValueError(f"world_groups needs an offline-world manifest; missing columns {missing}")
    out = pd.DataFrame({k: manifest[c].astype(str).to_numpy() for k, c in WORLD_GROUPINGS.items()},
                       index=pd.Index(manifest["image_id"], name="image_id"))
    out["rare group"] = ["rare" if r else "other" for r in manifest["contains_rare"]]
    return out


def dataset_groups(manifest: pd.DataFrame, min_captions: int = 1) -> pd.DataFrame:
    """:func:`world_groups` or :func:`coco_groups` (``min_captions`` for the gender label), whichever fits."""
    if "primary_colour" in manifest.columns:
        return world_groups(manifest)
    if "primary_category" in manifest.columns:
        return coco_groups(manifest, min_captions=min_captions)
    raise ValueError("no subgroups are defined for this manifest (neither an offline-world nor a COCO manifest)")


__all__ = ["WORLD_GROUPINGS", "coco_groups", "coco_supercategories", "dataset_groups", "world_groups"]
