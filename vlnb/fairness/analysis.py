"""The chapter's loop: every model on its test set(s), every grouping, one tidy table of groups and one of gaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import build_manifest
from ..data.profiles import evaluation_manifest, repo_path
from ..device import resolve_device as _resolve_device
from ..eval.chance import zeroshot_chance
from ..eval.compare import zeroshot_task
from ..paths import shared_data_dir
from ..zoo import chapter_models as _models
from .controlled import world_attribute_task
from .gender import read_coco_captions
from .groups import dataset_groups
from .metrics import Outcomes, evaluate_outcomes, gap_table, group_table
from .stats import holm_adjust

#: Groupings analysed per kind of data set, and the groups that are shown but never ranked.
DEFAULT_GROUPINGS = {"world": ("colour", "shape", "background"), "coco": ("supercategory", "gender")}
EXCLUDED_GROUPS = {"gender": ("unlabelled",)}


def zeroshot_tasks(dataset: str, manifest: pd.DataFrame, templates: str | None = None) -> dict:
    """The zero-shot tasks of a test set: world -> shape and colour of the largest object; COCO -> the
    80 categories ("any label": a top-1 class that is any of the image's categories counts)."""

    if "primary_colour" in manifest.columns:
        return {"zero-shot shape": (world_attribute_task(manifest, "shape"), "primary"),
                "zero-shot colour": (world_attribute_task(manifest, "colour"), "primary")}
    task = zeroshot_task(dataset, manifest, templates)
    return {"zero-shot category": (task, next(iter(task.targets)))}


@dataclass
class SubgroupResult:
    groups: pd.DataFrame  #: group_table rows of every model x data set x grouping
    gaps: pd.DataFrame  #: gap_table rows of every model x data set x grouping
    outcomes: dict = field(default_factory=dict)  #: (model, dataset) -> Outcomes
    group_labels: dict = field(default_factory=dict)  #: dataset -> frame of group labels (index image_id)


def subgroup_analysis(
    models: Mapping,
    manifests: Mapping[str, pd.DataFrame],
    datasets: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    groupings: Mapping[str, Sequence[str]] | None = None,
    templates: str | None = None,
    ks: Sequence[int] = (1, 5),
    min_size: int = 10,
    level: float = 0.95,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    min_gender_captions: int = 1,
    cache_dir=None,
    progress: bool = True,
) -> SubgroupResult:
    """Evaluate every model on its data sets and analyse every grouping.

    ``datasets``: a list (each model on each) or ``{model: [data sets]}``; None = all of ``manifests``.
    ``groupings``: ``{data set: [groupings]}`` (defaults: :data:`DEFAULT_GROUPINGS` by kind of data set).
    """
    groups_rows, gap_rows, outs, labels, chance = [], [], {}, {}, {}
    for name, model in models.items():
        names = datasets.get(name, []) if isinstance(datasets, Mapping) else (datasets or list(manifests))
        for ds in names:
            if ds not in manifests:
                raise KeyError(f"model {name!r}: no manifest for data set {ds!r} (have {sorted(manifests)})")
            df = manifests[ds]
            if ds not in labels:
                labels[ds] = dataset_groups(df, min_captions=min_gender_captions)
            kind = "world" if "primary_colour" in df.columns else "coco"
            zs_tasks = zeroshot_tasks(ds, df, templates)
            out: Outcomes = evaluate_outcomes(model, df, ds, model_name=name, zeroshot=zs_tasks,
                                              ks=ks, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
            chance[name, ds] = zeroshot_chance_levels(zs_tasks)
            outs[name, ds] = out
            for grouping in (groupings or {}).get(ds, DEFAULT_GROUPINGS[kind]):
                if grouping not in labels[ds].columns:
                    raise KeyError(f"data set {ds!r} has no grouping {grouping!r}; known: {list(labels[ds].columns)}")
                g = labels[ds][grouping]
                kw = {"min_size": min_size, "exclude": EXCLUDED_GROUPS.get(grouping, ()), "level": level,
                      "n_boot": n_boot, "seed": seed}
                groups_rows.append(group_table(out, g, grouping, **kw))
                gap_rows.append(gap_table(out, g, grouping, n_perm=n_perm, **kw))
    cat = lambda parts: pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame()
    gaps = flag_at_chance(adjust_gap_tests(cat(gap_rows), level), outs, chance)
    return SubgroupResult(cat(groups_rows), gaps, outs, labels)


def zeroshot_chance_levels(tasks: dict) -> dict[str, float]:
    """``{"<task> top-1": chance}`` of the zero-shot tasks of :func:`zeroshot_tasks` (exact top-1 chance of a
    random ranking of the task's classes, :func:`vlnb.eval.chance.zeroshot_chance`)."""

    out = {}
    for metric, (task, variant) in tasks.items():
        out[f"{metric} top-1"] = zeroshot_chance(task.targets[variant], len(task.class_names))["top1"]
    return out


def flag_at_chance(gaps: pd.DataFrame, outcomes: dict, chance: dict) -> pd.DataFrame:
    """Add ``overall`` (the model's value of the metric on the whole test set), ``chance`` and ``informative``
    (overall at least twice chance) to a gaps table. A gap between groups of a classifier at chance says
    nothing about the groups — it is flagged as uninformative, as chapter 5 does for its curves. Metrics
    without a chance level here (retrieval, similarity) stay informative."""
    if gaps.empty:
        return gaps
    gaps = gaps.copy()
    overall, ch = [], []
    for r in gaps.itertuples(index=False):
        o = outcomes.get((r.model, r.dataset))
        overall.append(float(o.value(r.metric)) if o is not None and r.metric in o.metrics else np.nan)
        ch.append(chance.get((r.model, r.dataset), {}).get(r.metric, np.nan))
    gaps["overall"], gaps["chance"] = overall, ch
    gaps["informative"] = ~(gaps["overall"] < 2 * gaps["chance"])  # NaN chance: no comparison -> informative
    return gaps


def adjust_gap_tests(gaps: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Multiple testing: one permutation test per (model, data set, grouping, metric) is a family of tests, so
    ``p_holm`` is Holm's adjusted p-value over the whole table and ``gap_detected`` means ``p_holm < 1 - level``
    (family-wise error rate at most ``1 - level``); ``p_value`` stays the unadjusted one."""

    if gaps.empty or "p_value" not in gaps:
        return gaps
    gaps = gaps.copy()
    gaps["p_holm"] = holm_adjust(gaps["p_value"].to_numpy(dtype=float))
    gaps["gap_detected"] = (gaps["p_holm"] < 1 - level).fillna(False).astype(bool)
    return gaps


def gap_headline(gaps: pd.DataFrame) -> dict[str, str]:
    """Strings for the prose: how many gaps were testable / detected, and the largest zero-shot gap."""
    if gaps.empty:
        return {"n_gap_tested": "0", "n_gap_detected": "0", "n_gap_untestable": "0", "n_gap_at_chance": "0",
                "top_gap": "not measurable in this run"}
    testable = gaps[gaps["n_groups"] >= 2]
    out = {"n_gap_tested": str(len(testable)), "n_gap_detected": str(int(testable["gap_detected"].sum())),
           "n_gap_untestable": str(len(gaps) - len(testable))}
    zs = testable[testable["metric"].str.startswith("zero-shot")]
    n_at_chance = 0
    if "informative" in zs:
        n_at_chance = int((~zs["informative"].astype(bool)).sum())
        zs = zs[zs["informative"].astype(bool)]
    out["n_gap_at_chance"] = str(n_at_chance)
    if zs.empty:
        out["top_gap"] = ("not measurable in this run (no grouping had two groups large enough"
                          + (", or the classifier was under twice chance" if n_at_chance else "") + ")")
    else:
        r = zs.loc[zs["gap"].idxmax()]
        out["top_gap"] = (f"{r['gap']:.2f} (interval {r['gap_lo']:.2f} to {r['gap_hi']:.2f}, permutation p = "
                          f"{r['p_value']:.3f}" + (f", Holm-adjusted {r['p_holm']:.3f}" if "p_holm" in r else "")
                          + f"): {r['model']}, {r['metric']} by {r['grouping']}, "
                          f"{r['best_group']} {r['best']:.2f} versus {r['worst_group']} {r['worst']:.2f}")
    return out


# ---------------------------------------------------------------------------------------------- chapter glue
def resolve_device(device: str = "auto") -> str:
    """The chapter's device (:func:`vlnb.device.resolve_device`: ``"auto"`` = CUDA when available, else CPU)."""
    return _resolve_device(device)


def chapter_models(cfg, device: str = "auto", progress: bool = True) -> dict:
    """The dual encoders of a chapter-7 run: offline the reference models (``cfg.models`` names a subset);
    full the hub models (a dict replaces / adds / drops entries of :data:`vlnb.zoo.HUB_MODELS`, a list keeps
    those display names). Cross encoders (ViLT) are left out: they have no zero-shot classifier and no
    similarity matrix to take per-group retrieval from."""

    return _models(cfg, device=device, progress=progress, include_cross=False)


def chapter_datasets(cfg, model_names: Sequence[str]) -> dict[str, list[str]]:
    """``{model: [data sets]}`` from ``cfg.datasets`` (a list applies to every model)."""
    if isinstance(cfg.datasets, Mapping):
        unknown = [m for m in cfg.datasets if m not in model_names]
        if unknown:
            raise KeyError(f"datasets names model(s) {unknown} that this run does not evaluate; models: "
                           f"{list(model_names)}")
        return {m: list(cfg.datasets.get(m, [])) for m in model_names}
    return {m: list(cfg.datasets) for m in model_names}


def chapter_manifests(cfg, names: Sequence[str]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The test manifests (:func:`vlnb.data.profiles.evaluation_manifest`) and their bad-image reports."""

    out, reports = {}, []
    for name in dict.fromkeys(names):
        df, report = evaluation_manifest(name, cfg, max_images=cfg.max_images)
        out[name] = df
        if len(report):
            reports.append(report.assign(dataset=name))
    return out, (pd.concat(reports, ignore_index=True) if reports else pd.DataFrame(columns=["dataset"]))


def gender_sources(cfg) -> dict[str, pd.DataFrame]:
    """Caption sets whose caption-derived gender the chapter counts, as ``{name: frame(image_id, captions)}``.

    offline: the coco-mini images (train2017 + val2017 manifests) and ``cfg.gender_caption_files`` (default:
    the shared official val2017 captions, all 5,000 images). full: ``cfg.gender_caption_files`` (default:
    the COCO root's train2017 and val2017 captions).
    """

    out: dict[str, pd.DataFrame] = {}
    files = cfg.gender_caption_files
    if cfg.profile == "offline":
        mini, _ = build_manifest("coco", split=("train2017", "val2017"), progress=False)
        out["coco-mini (train + val manifests)"] = mini[["image_id", "captions"]]
        if files is None:
            files = [str(shared_data_dir(required=True) / "coco-captions-val2017" / "captions_val2017.json")]
    for f in files or []:
        path = Path(repo_path(f))
        out[f"{path.stem} (all images)"] = read_coco_captions(path)
    return out


__all__ = ["DEFAULT_GROUPINGS", "EXCLUDED_GROUPS", "SubgroupResult", "chapter_datasets", "chapter_manifests",
           "chapter_models", "gap_headline", "gender_sources", "resolve_device", "subgroup_analysis", "zeroshot_tasks"]
