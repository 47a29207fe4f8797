"""Which data sets each profile uses, built in one call (chapter 1 and later chapters)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..paths import REPO_ROOT
from .builder import build_manifest
from .coco import coco_split_folders
from .images import REPORT_COLUMNS
from .manifest import subset, summary
from .world import REFERENCE_WORLD


def repo_path(path: str | None) -> str | None:
    """Relative paths in parameters are relative to the repository (the run folder is elsewhere)."""
    if path is None:
        return None

    p = Path(path)
    return str(p if p.is_absolute() or p.exists() else REPO_ROOT / p)


def coco_source(coco_root: str | None, coco_karpathy_split: str | None, default_split="val2017",
                subset: str | tuple = "test") -> dict:
    """``build_manifest("coco", **kwargs)`` arguments of a chapter's COCO parameters, resolved in one place.

    ``coco_root`` / ``coco_karpathy_split``: relative paths are relative to the repository (None root: the
    shared coco-mini). A Karpathy split file (Karpathy's ``dataset_coco.json`` or LAVIS's
    ``coco_karpathy_test.json``; ``""`` or None: none) selects its ``subset`` and the folders its images live
    in: val2014 alone for the 5k test when ``root`` has the 2014 layout, else train2017 + val2017 (the same
    images under the same ids). Without one the folders are ``default_split``.
    """

    root = repo_path(coco_root)
    ks = repo_path(coco_karpathy_split) if coco_karpathy_split else None
    kw: dict = {"root": root}
    if ks:
        kw.update(karpathy_split=ks, karpathy_subset=subset,
                  split=coco_split_folders(root, ks, subset) if root else ("train2017", "val2017"))
    else:
        kw["split"] = default_split
    return kw


def profile_manifests(cfg, progress: bool = True) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Build every manifest of ``cfg.profile`` (a :class:`vlnb.config.DataPrepParams`).

    Returns ``({name: manifest}, bad_image_report)`` where the report has a ``dataset`` column.
    offline: the procedural world, coco-mini (train2017 + val2017), the real partial CIFAR-100 test set.
    full: the world, COCO 2017 Karpathy 5k test, Flickr30k 1k test, Pokémon captions, CIFAR-100 test.
    """
    out: dict[str, pd.DataFrame] = {}
    reports = []

    def add(name, df, report):
        out[name] = df
        if len(report):
            reports.append(report.assign(dataset=name))

    add("world", *build_manifest("world", n_train=cfg.world_n_train, n_test=cfg.world_n_test,
                                  image_size=cfg.world_image_size, seed=cfg.seed))
    if cfg.profile == "offline" and cfg.coco_root is None:
        add("coco-mini", *build_manifest("coco", split=("train2017", "val2017"), progress=progress))
        add("cifar100", *build_manifest("cifar100"))
    else:
        add("coco", *build_manifest("coco", progress=progress,
                                    **coco_source(cfg.coco_root, cfg.coco_karpathy_split, ("train2017", "val2017"))))
        if cfg.flickr30k_source:
            add("flickr30k", *build_manifest("flickr30k", root=cfg.flickr30k_source, split="test"))
        if cfg.pokemon_source:
            add("pokemon", *build_manifest("pokemon", root=cfg.pokemon_source))
        if cfg.cifar100_source:
            add("cifar100", *build_manifest("cifar100", root=cfg.cifar100_source, split="test"))
    report = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame(columns=["dataset", *REPORT_COLUMNS])
    return out, report[["dataset", *REPORT_COLUMNS]]


def overview(manifests: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One tidy row per (data set, split): images, captions, captions per image, labelled images."""

    return pd.concat([summary(df).assign(dataset=name) for name, df in manifests.items()], ignore_index=True)[
        ["dataset", "split", "images", "captions", "captions_per_image", "labelled_images"]
    ]


def evaluation_manifest(name: str, cfg=None, max_images: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test manifest a chapter evaluates on, by name, and its bad-image report.

    offline names: ``world`` (the test split of the world the scratch reference model was trained on),
    ``coco-mini`` (the real val2017 subset), ``cifar100`` (916 real test images). full names: ``coco``
    (``cfg.coco_root`` with the Karpathy 5k test split of ``cfg.coco_karpathy_split``; val2017 without it),
    ``flickr30k`` (1k test of ``cfg.flickr30k_source``), ``cifar100`` (``cfg.cifar100_source`` test split),
    ``pokemon`` (``cfg.pokemon_source``). ``max_images`` keeps the first that many rows.
    """
    get = lambda key: getattr(cfg, key, None) if cfg is not None else None
    if name == "world":
        world, _ = build_manifest("world", **REFERENCE_WORLD)
        df, report = subset(world, (world["split"] == "test").to_numpy()), pd.DataFrame(columns=REPORT_COLUMNS)
    elif name == "coco-mini":
        df, report = build_manifest("coco", split="val2017")
    elif name == "coco":
        df, report = build_manifest("coco", **coco_source(get("coco_root"), get("coco_karpathy_split")))
    elif name == "cifar100":
        src = get("cifar100_source")
        df, report = build_manifest("cifar100", root=repo_path(src) if src and Path(str(src)).suffix else src)
    elif name in ("flickr30k", "pokemon"):
        src = get(f"{name}_source")
        if not src:
            raise ValueError(f"data set {name!r} needs the parameter {name}_source (a hub id or local copy)")
        df, report = build_manifest(name, root=src, **({"split": "test"} if name == "flickr30k" else {}))
    else:
        raise ValueError(f"unknown evaluation data set {name!r}: offline world | coco-mini | cifar100; "
                         "full coco | flickr30k | cifar100 | pokemon")
    if max_images is not None and len(df) > max_images:
        df = subset(df, slice(0, max_images))
    return df, report
