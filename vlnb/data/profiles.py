"""Which data sets each profile uses, built in one call (chapter 1 and later chapters)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .builder import build_manifest
from .images import REPORT_COLUMNS


def _resolve(path: str | None) -> str | None:
    """Relative paths in parameters are relative to the repository (the run folder is elsewhere)."""
    if path is None:
        return None
    from ..paths import REPO_ROOT

    p = Path(path)
    return str(p if p.is_absolute() or p.exists() else REPO_ROOT / p)


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
        kw = {"karpathy_split": _resolve(cfg.coco_karpathy_split)} if cfg.coco_karpathy_split else {}
        add("coco", *build_manifest("coco", root=_resolve(cfg.coco_root), split=("train2017", "val2017"),
                                    progress=progress, **kw))
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
    from .manifest import summary

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
    get = lambda key: getattr(cfg, key, None) if cfg is not None else None  # noqa: E731
    if name == "world":
        from ..zoo import reference_data

        df, report = reference_data("scratch-world")["test"], pd.DataFrame(columns=REPORT_COLUMNS)
    elif name == "coco-mini":
        df, report = build_manifest("coco", split="val2017")
    elif name == "coco":
        kw = {"karpathy_split": _resolve(get("coco_karpathy_split"))} if get("coco_karpathy_split") else {}
        df, report = build_manifest("coco", root=_resolve(get("coco_root")),
                                    split=("train2017", "val2017") if kw else "val2017", **kw)
    elif name == "cifar100":
        src = get("cifar100_source")
        df, report = build_manifest("cifar100", root=_resolve(src) if src and Path(str(src)).suffix else src)
    elif name in ("flickr30k", "pokemon"):
        src = get(f"{name}_source")
        if not src:
            raise ValueError(f"data set {name!r} needs the parameter {name}_source (a hub id or local copy)")
        df, report = build_manifest(name, root=src, **({"split": "test"} if name == "flickr30k" else {}))
    else:
        raise ValueError(f"unknown evaluation data set {name!r}: offline world | coco-mini | cifar100; "
                         "full coco | flickr30k | cifar100 | pokemon")
    if max_images is not None and len(df) > max_images:
        attrs = dict(df.attrs)
        df = df.iloc[:max_images].reset_index(drop=True)
        df.attrs = attrs
    return df, report
