"""The train / test manifests a recipe trains and evaluates on."""

from __future__ import annotations

import pandas as pd

from ..data import build_manifest
from ..data.manifest import subset
from ..data.profiles import coco_source
from .recipes import recipe


def reference_data(name: str, **data_overrides) -> dict[str, pd.DataFrame]:
    """``{"train": manifest, "test": manifest}`` of recipe ``name`` (bad images already dropped)."""
    r = recipe(name)
    if r.data == "world":
        df, _ = build_manifest("world", **{**r.data_kwargs, **data_overrides})
        return {s: subset(df, (df["split"] == s).to_numpy()) for s in ("train", "test")}
    if r.data == "coco-mini":
        train, _ = build_manifest("coco", split="train2017", **data_overrides)
        test, _ = build_manifest("coco", split="val2017", **data_overrides)
        return {"train": train, "test": test}
    if r.data == "coco":
        kw = {**r.data_kwargs, **data_overrides}
        root, ks = kw.pop("root"), kw.pop("karpathy_split")
        train, _ = build_manifest("coco", **coco_source(root, ks, subset=("train", "restval")), **kw)
        test, _ = build_manifest("coco", **coco_source(root, ks, subset="test"), **kw)
        return {"train": train, "test": test}
    raise ValueError(f"recipe {name!r}: unknown data {r.data!r}")
