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
from .metrics import Outcomes, evaluate_outcomes, gap_table, group_table, in_percent, is_proportion
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
    """The chapter's tables, in the book's unit (:func:`vlnb.fairness.metrics.in_percent`: recalls and accuracies
    in %, gaps in percentage points, the mean similarity a cosine; column ``unit``)."""

    groups: pd.DataFrame  #: group_table rows of every model x data set x grouping (percent)
    gaps: pd.DataFrame  #: gap_table rows of every model x data set x grouping (percent / points)
    outcomes: dict = field(default_factory=dict)  #: (model, dataset) -> Outcomes (proportions, per image)
    group_labels: dict = field(default_factory=dict)  #: dataset -> frame of group labels (index image_id)
    chance: dict = field(default_factory=dict)  #: (model, dataset) -> {zero-shot metric: chance (proportion)}

    def overall(self) -> pd.DataFrame:
        """Every model's value of every metric on its whole test set (tidy: ``model, dataset, metric, value,
        unit, images, chance``; recalls and accuracies in %, their chance level too)."""
        rows = []
        for (model, ds), o in self.outcomes.items():
            for m in o.metrics:
                scale = 100.0 if is_proportion(m) else 1.0
                ch = self.chance.get((model, ds), {}).get(m)
                rows.append({"model": model, "dataset": ds, "metric": m, "value": scale * o.value(m),
                             "unit": "%" if scale == 100 else "cosine", "images": int((o.den[m] > 0).sum()),
                             "chance": scale * ch if ch is not None else np.nan})
        return pd.DataFrame(rows, columns=["model", "dataset", "metric", "value", "unit", "images", "chance"])

    def overall_page(self) -> pd.DataFrame:
        """What the page shows of :meth:`overall`: one row per model and data set, one column per metric
        (recalls and accuracies in % with one decimal, the mean similarity with three; "—" where a model has no
        such metric on that data set)."""
        t = self.overall()
        if t.empty:
            return t
        t = t.assign(value=[round(v, 1 if u == "%" else 3) for v, u in zip(t["value"], t["unit"])])
        wide = t.pivot_table(index=["model", "dataset"], columns="metric", values="value", sort=False)
        wide = wide.rename(columns=lambda m: f"{m} (%)" if is_proportion(m) else m)
        wide.columns.name = None
        wide.insert(0, "images", t.groupby(["model", "dataset"], sort=False)["images"].max())
        return wide.reset_index().astype(object).where(lambda d: d.notna(), "—")

    def overall_page_by_metric(self) -> pd.DataFrame:
        """:meth:`overall_page` turned on its side for a page: one row per metric, one column per model and data
        set (a handful of models fit a page's width; a dozen metric columns do not)."""
        page = self.overall_page()
        if page.empty:
            return page
        page = page.assign(column=page["model"] + " · " + page["dataset"]).set_index("column")
        out = page.drop(columns=["model", "dataset"]).T
        out.columns.name, out.index.name = None, "metric"
        return out


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
    return SubgroupResult(in_percent(cat(groups_rows)), in_percent(gaps), outs, labels, chance)


def itm_zeroshot_pairs(manifests: Mapping[str, pd.DataFrame], datasets: Mapping[str, Sequence[str]] | None = None,
                       templates: str | None = None) -> str:
    """How many image-text passes a pure cross encoder (ITM only, no ITC) would need for this run's zero-shot
    tasks: one per image, class and prompt, for every data set evaluated (``datasets``: ``{model: [data
    sets]}``, None = all of ``manifests``). A dual encoder encodes each image once and each prompt once."""
    names = dict.fromkeys(d for ds in datasets.values() for d in ds) if datasets else dict.fromkeys(manifests)
    parts = []
    for ds in names:
        df = manifests[ds]
        prompts = sum(len(t.class_names) * len(t.templates) for t, _ in zeroshot_tasks(ds, df, templates).values())
        parts.append(f"{len(df) * prompts:,} on {ds} ({len(df):,} images × {prompts:,} class prompts)")
    return "; ".join(parts) or "none"


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


def gap_headline(gaps: pd.DataFrame, n_perm: int | None = None, level: float = 0.95) -> dict[str, str]:
    """Strings for the prose: how many gaps were testable / detected, and the largest zero-shot gap (a table of
    :func:`subgroup_analysis`, in percent: the gap in percentage points, the groups' values in %).

    With ``n_perm``, also ``holm_floor``: the smallest Holm-adjusted p-value the table's permutation tests can
    reach (``m / (n_perm + 1)`` for ``m`` tests), and whether it is below ``1 - level`` — if not, no gap could
    have been detected whatever the data, and the sentence says so."""
    if gaps.empty:
        return {"n_gap_tested": "0", "n_gap_detected": "0", "n_gap_untestable": "0", "n_gap_at_chance": "0",
                "top_gap": "not measurable in this run", "holm_floor": "no test was run"}
    pct = "unit" in gaps.columns
    testable = gaps[gaps["n_groups"] >= 2]
    out = {"n_gap_tested": str(len(testable)), "n_gap_detected": str(int(testable["gap_detected"].sum())),
           "n_gap_untestable": str(len(gaps) - len(testable))}
    if n_perm is not None:
        m = int(testable["p_value"].notna().sum()) if "p_value" in testable else 0
        floor = m / (n_perm + 1)
        out["holm_floor"] = (f"with {n_perm:,} permutations per test the smallest possible p-value is "
                             f"1/{n_perm + 1:,}, so over {m} tests Holm's smallest adjusted p-value is {floor:.3f}"
                             + (f", below {1 - level:.2f}: a strong enough gap can be detected" if floor < 1 - level
                                else f", not below {1 - level:.2f}: no gap could be detected in this run, whatever "
                                "the data (raise n_perm)"))
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
        v, pts = ((lambda x: f"{x:.1f} %"), " points") if pct else ((lambda x: f"{x:.2f}"), "")
        d = (lambda x: f"{x:.1f}") if pct else (lambda x: f"{x:.2f}")
        out["top_gap"] = (f"{d(r['gap'])}{pts} (interval {d(r['gap_lo'])} to {d(r['gap_hi'])}, permutation p = "
                          f"{_p(r['p_value'])}" + (f", Holm-adjusted {_p(r['p_holm'])}" if "p_holm" in r else "")
                          + f"): {r['model']}, {r['metric']} by {r['grouping']}, "
                          f"{r['best_group']} {v(r['best'])} versus {r['worst_group']} {v(r['worst'])}")
    return out


def _p(p: float) -> str:
    """A p-value for the prose: three decimals, or one significant digit below 0.001 (never "0.000")."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1g}"


def gap_page(gaps: pd.DataFrame, model: str) -> pd.DataFrame:
    """What the page shows of one model's gaps: values and gaps with one decimal (in % and percentage points; the
    mean similarity, a cosine, with three), ratios with two, p-values with four; "—" where a grouping had too few
    large groups to have a gap."""
    cols = ["grouping", "metric", "unit", "n_groups", "best_group", "best", "worst_group", "worst", "gap", "gap_lo",
            "gap_hi", "ratio", "ratio_lo", "ratio_hi", "p_value", "p_holm", "gap_detected", "informative",
            "flagged_groups"]
    t = gaps[gaps["model"] == model]
    t = t[[c for c in cols if c in t.columns]].copy()
    for c in ("best", "worst", "gap", "gap_lo", "gap_hi"):
        if c in t:
            t[c] = [round(x, 1 if u == "%" else 3) for x, u in zip(t[c], t.get("unit", ["%"] * len(t)))]
    t = t.round({"ratio": 2, "ratio_lo": 2, "ratio_hi": 2, "p_value": 4, "p_holm": 4}).reset_index(drop=True)
    return t.astype(object).where(t.notna(), "—")


# ---------------------------------------------------------------------------------------------- chapter glue
def resolve_device(device: str = "auto") -> str:
    """The chapter's device (:func:`vlnb.device.resolve_device`: ``"auto"`` = CUDA when available, else CPU)."""
    return _resolve_device(device)


def chapter_models(cfg, device: str = "auto", progress: bool = True) -> dict:
    """The models of a chapter-7 run: offline the reference models (``cfg.models`` names a subset); full the hub
    models (a dict replaces / adds / drops entries of :data:`vlnb.zoo.HUB_MODELS`, a list keeps those display
    names). Dual encoders and fusion models with an ITC head (BLIP-like, Q-Former; BLIP and BLIP-2 on the hub)
    take part through their ITC embeddings. Pure cross encoders (ViLT) are left out: without ITC embeddings
    they have no zero-shot classifier short of one ITM pass per image, class and prompt
    (:func:`itm_zeroshot_pairs`), and no similarity matrix to take per-group retrieval from."""

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
           "chapter_models", "gap_headline", "gap_page", "gender_sources", "itm_zeroshot_pairs", "resolve_device",
           "subgroup_analysis", "zeroshot_tasks"]
