"""Robustness sweeps: model x data set x corruption x severity, one tidy table, mCE-style summaries.

:func:`run_sweep` evaluates every model on its :class:`EvalTask` s, clean and under every corruption and
severity of :mod:`vlnb.robustness.perturbations`:

- **text once, images per cell.** A dual encoder's text side (zero-shot class embeddings, caption
  embeddings for retrieval) is computed once per model and task; each cell re-encodes only the images,
  through :func:`vlnb.eval.image_features` with the perturbation, so cells are cached on disk under a
  key that includes the perturbation's exact key (a rerun of the same sweep costs nothing). A cross
  encoder (ViLT) has no separate text side: it scores every (image, text) pair of the subset again for
  each cell, so its subset is kept small (``cross_max_images``).
- **metrics per cell**: zero-shot top-1 accuracy for each label set of the task (multi-label: a hit when
  the best class is one of the image's labels; ties count against the model) and retrieval Recall@K in
  both directions (all captions, :func:`vlnb.eval.recall_at_k`), all in percent.
- **tidy table** (:data:`RESULT_COLUMNS`): one row per model, data set, metric, corruption and severity
  0-5, where severity 0 repeats the clean value (so curves start at the clean point) and ``relative`` is
  ``value / clean``.

:func:`summarize` condenses it ImageNet-C style (Hendrycks & Dietterich, 2019): with errors
``E = 100 - value``, the corruption error of model ``f`` on corruption ``c`` is
``CE = sum_s E(f, c, s) / sum_s E(base, c, s)`` (severities 1-5, ``base`` the baseline model on the same
data and metric), the mCE is its mean over corruptions, and the relative mCE uses the degradations
``E(f, c, s) - E(f, clean)`` instead; next to them the baseline-free mean relative robustness.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import build_manifest
from ..data.images import try_open_rgb
from ..data.manifest import subset, texts_and_targets
from ..data.pixels import cacheable, decoded_pixels
from ..data.profiles import evaluation_manifest
from ..data.world import WorldConfig, world_class_names
from ..device import resolve_device  # the chapter's device resolver, re-exported
from ..eval import (
    classification_metrics,
    image_features,
    multilabel_targets,
    recall_at_k,
    text_features,
    zeroshot_classifier,
    zeroshot_scores,
)
from ..eval.chance import recall_chance, zeroshot_chance
from ..eval.compare import WORLD_TEMPLATES, coco_category_names
from ..eval.features import autocast_for, jsonable, model_device
from ..eval.retrieval import check_ks
from ..eval.zeroshot import fill_template
from ..models import CrossEncoder
from ..progress import tqdm
from ..zoo import RECIPES
from ..zoo import chapter_models as _models
from .perturbations import CORRUPTIONS, REFERENCE_SIZE, ObjectMasks, corruption

RESULT_COLUMNS = ["model", "dataset", "task", "metric", "corruption", "severity", "value", "clean", "relative",
                  "n_images", "chance"]
SUMMARY_COLUMNS = ["model", "dataset", "task", "metric", "clean", "mean_corrupted", "relative_robustness",
                   "mCE", "relative_mCE", "baseline", "n_corruptions"]


# ---------------------------------------------------------------------------------------------- tasks
@dataclass
class LabelSet:
    """Zero-shot classes of one task: names, prompt templates (``"{}"`` strings or callables) and
    boolean targets ``(n_images, n_classes)`` aligned with the task's manifest rows."""

    classes: list[str]
    targets: np.ndarray
    templates: Sequence = ("a photo of a {}.",)


@dataclass
class EvalTask:
    """What is measured on one data set: zero-shot label sets and/or caption retrieval."""

    dataset: str
    manifest: pd.DataFrame
    label_sets: dict[str, LabelSet] = field(default_factory=dict)
    retrieval: bool = True

    def __post_init__(self):
        n = len(self.manifest)
        for name, ls in self.label_sets.items():
            if ls.targets.shape != (n, len(ls.classes)):
                raise ValueError(f"task {self.dataset!r}, label set {name!r}: targets {ls.targets.shape} do not match "
                                 f"{n} images x {len(ls.classes)} classes")
        if not self.label_sets and not self.retrieval:
            raise ValueError(f"task {self.dataset!r} measures nothing (no label set and retrieval=False)")


def _head(df: pd.DataFrame, n: int | None) -> pd.DataFrame:
    if n is None or len(df) <= n:
        return df
    if n < 1:
        raise ValueError(f"n_images must be >= 1, got {n}")
    return subset(df, slice(0, n))


def _multilabel(column, classes) -> np.ndarray:
    return multilabel_targets([list(v) for v in column], classes)


def world_task(manifest: pd.DataFrame, n_images: int | None = None, dataset: str = "world",
               attributes: Sequence[str] = ("shape", "colour"), retrieval: bool = True) -> EvalTask:
    """The offline world: zero-shot over shapes (prompt ``"a {shape}"``) and colours (the prompt ensemble
    ``"a {colour} {shape}"`` over every shape: the world's captions name objects that way), multi-label
    targets (any object of that value), and retrieval. The first ``n_images`` rows are kept."""

    spec = (manifest.attrs.get("vlnb") or {}).get("config")
    cfg = WorldConfig.from_dict(spec) if spec else None
    df = _head(manifest, n_images)
    shapes = world_class_names("shape", cfg)
    column = {"shape": "shapes", "colour": "colours", "size": "sizes"}
    sets = {}
    for a in attributes:
        if a not in column:
            raise ValueError(f"world zero-shot attribute must be one of {sorted(column)}, got {a!r}")
        classes = world_class_names(a, cfg)
        if a == "colour":  # "a red circle", "a red square", ... averaged
            templates = tuple((lambda v, s=s: f"a {v} {s}") for s in shapes)
        elif a == "shape":  # chapter 4's and chapter 7's shape prompts, so the same model scores the same
            templates = tuple(WORLD_TEMPLATES)
        else:
            templates = ("a {} object",)
        sets[a] = LabelSet(classes, _multilabel(df[column[a]], classes), templates)
    return EvalTask(dataset, df, sets, retrieval)


def caption_task(manifest: pd.DataFrame, n_images: int | None = None, dataset: str | None = None,
                 templates: Sequence = ("a photo of a {}.",), retrieval: bool = True) -> EvalTask:
    """A captioned photo data set (COCO, Flickr30k...): retrieval, plus zero-shot multi-label
    classification over the ``labels`` column's categories when it has any (classes: a COCO manifest's 80
    categories of its instances file, like chapter 4's :func:`vlnb.eval.compare.coco_category_names` -- not
    only the categories that occur in the images, 78 of 80 in coco-mini; otherwise every label that occurs in
    the *whole* manifest, so a subset keeps the same classes). The first ``n_images`` rows are kept."""
    name = dataset or (manifest.attrs.get("vlnb") or {}).get("name", "data")
    if "primary_category" in manifest:
        classes = coco_category_names(manifest)
    else:
        classes = sorted({lab for labs in manifest["labels"] for lab in labs}) if "labels" in manifest else []
    df = _head(manifest, n_images)
    sets = {}
    if classes:
        sets["category"] = LabelSet(classes, _multilabel(df["labels"], classes), tuple(templates))
    return EvalTask(name, df, sets, retrieval)


def make_task(dataset: str, manifest: pd.DataFrame, n_images: int | None = None, **kw) -> EvalTask:
    """:func:`world_task` for world manifests, :func:`caption_task` for everything else."""
    kind = (manifest.attrs.get("vlnb") or {}).get("name")
    if kind == "world" or dataset == "world":
        return world_task(manifest, n_images, dataset=dataset, **kw)
    return caption_task(manifest, n_images, dataset=dataset, **kw)


# ---------------------------------------------------------------------------------------------- metrics
def _ks(ks) -> tuple[int, ...]:
    return check_ks(ks)


def _zeroshot_metrics(scores: torch.Tensor, targets: np.ndarray) -> dict[str, float]:
    keep = targets.any(axis=1)
    if not keep.any():
        return {}
    return {"top1": 100.0 * classification_metrics(scores[torch.from_numpy(keep)], targets[keep], ks=(1,))["top1"]}


def _retrieval_metrics(sim: torch.Tensor, t2i: np.ndarray, ks) -> dict[str, float]:
    return recall_at_k(sim, t2i, ks)


class _TextSide:
    """Per (model, task): the text embeddings computed once (dual) or the texts to pair (cross)."""

    def __init__(self, model, task: EvalTask, cross: bool, cache_dir, batch_size: int):
        self.cross = cross
        self.texts, self.t2i = texts_and_targets(task.manifest) if task.retrieval else ([], np.zeros(0, np.int64))
        self.classifiers: dict[str, torch.Tensor] = {}
        self.prompts: dict[str, list[str]] = {}
        if cross:  # a cross encoder scores image x prompt pairs: one prompt (the first template) per class

            self.prompts = {n: [fill_template(ls.templates[0], c) for c in ls.classes] for n, ls in task.label_sets.items()}
            return
        for n, ls in task.label_sets.items():
            self.classifiers[n] = zeroshot_classifier(model, ls.classes, ls.templates, batch_size=batch_size)
        if task.retrieval and self.texts:
            self.text_emb = text_features(model, self.texts, batch_size=max(batch_size, 64), cache_dir=cache_dir,
                                          progress=False)


def _cell_metrics(model, task: EvalTask, text: _TextSide, image_ids: list, scores_for: Callable,
                  ks) -> tuple[dict, dict]:
    """Metrics of one cell and their exact chance levels (:mod:`vlnb.eval.chance`, percent, on the images
    and captions the cell evaluated); ``scores_for(kind, name)`` gives ``(n_kept_images, n_texts_or_classes)``
    scores."""
    pos = {iid: r for r, iid in enumerate(task.manifest["image_id"])}
    rows = np.asarray([pos[i] for i in image_ids], dtype=np.int64)
    out, chance = {}, {}
    for name, ls in task.label_sets.items():
        for m, v in _zeroshot_metrics(scores_for("zeroshot", name), ls.targets[rows]).items():
            out[(f"zeroshot:{name}", m)] = v
            chance[(f"zeroshot:{name}", m)] = 100.0 * zeroshot_chance(ls.targets[rows], len(ls.classes))["top1"]
    if task.retrieval and len(text.texts):
        # captions of skipped images have no image to retrieve: drop them, renumber the rest
        new = np.full(len(task.manifest), -1, dtype=np.int64)
        new[rows] = np.arange(len(rows))
        t2i = new[text.t2i]
        keep = t2i >= 0
        sim = scores_for("retrieval", None)[:, torch.from_numpy(keep)]
        for m, v in _retrieval_metrics(sim, t2i[keep], ks).items():
            out[("retrieval", m)] = v
        chance.update({("retrieval", m): v for m, v in recall_chance(t2i[keep], len(rows), ks).items()})
    return out, chance


def _dual_cell(model, task, text: _TextSide, perturbation, ks, batch_size, cache_dir, num_workers):
    fs = image_features(model, task.manifest, batch_size=batch_size, cache_dir=cache_dir, perturbation=perturbation,
                        num_workers=num_workers, progress=False)

    def scores_for(kind, name):
        if kind == "zeroshot":
            return zeroshot_scores(model, fs.embeddings, text.classifiers[name])
        with torch.inference_mode():
            return model.similarity(fs.embeddings, text.text_emb).float().cpu()

    return *_cell_metrics(model, task, text, fs.image_ids, scores_for, ks), len(fs)


class _CrossPixels:
    """A cross encoder's [0, 1] pixels of the task's images, decoded and preprocessed once."""

    def __init__(self, model, task: EvalTask):
        pre = model.preprocess
        if cacheable(pre):  # the shared pixel cache (vlnb.data.pixels): decoded once for every cell and chapter
            px = decoded_pixels(task.manifest, pre, progress=False)
            ok = px.ok_rows
            self.ids = [px.image_ids[r] for r in ok]
            self.pixels = px.unit(ok) if len(ok) else torch.empty(0, 3, 1, 1)
            return
        ids, xs = [], []
        for iid, src in zip(task.manifest["image_id"], task.manifest["image"]):
            img, _ = try_open_rgb(src)
            if img is not None:
                ids.append(iid)
                xs.append(pre.to_unit([img])[0])
        # images of different sizes (ViLT keeps each aspect ratio) stay a list, scored one at a time
        same = len({tuple(x.shape) for x in xs}) <= 1
        self.ids, self.pixels = ids, (torch.stack(xs) if same else xs) if xs else torch.empty(0, 3, 1, 1)


def _cross_cell(model, task, text: _TextSide, pixels: _CrossPixels, perturbation, ks, batch_size):
    pre, dev = model.preprocess, model_device(model)
    ids = [jsonable(i) for i in pixels.ids]
    cache: dict[str, torch.Tensor] = {}

    def score_matrix(texts: list[str]) -> torch.Tensor:
        out = torch.empty(len(ids), len(texts))
        with torch.inference_mode(), autocast_for(model):
            step = max(1, batch_size // 8) if isinstance(pixels.pixels, torch.Tensor) else 1
            for s in range(0, len(ids), step):
                batch = pixels.pixels[s : s + step]
                x = (batch if isinstance(batch, torch.Tensor) else torch.stack(batch)).to(dev)
                if perturbation is not None:
                    x = perturbation(x, ids=ids[s : s + len(x)])
                x = pre.normalize(x)
                for i in range(len(x)):
                    for t in range(0, len(texts), batch_size):
                        chunk = texts[t : t + batch_size]
                        out[s + i, t : t + len(chunk)] = model.score(x[i : i + 1].expand(len(chunk), -1, -1, -1),
                                                                     chunk).float().cpu()
        return out

    def scores_for(kind, name):
        key = f"{kind}:{name}"
        if key not in cache:
            cache[key] = score_matrix(text.prompts[name] if kind == "zeroshot" else list(text.texts))
        return cache[key]

    return *_cell_metrics(model, task, text, pixels.ids, scores_for, ks), len(ids)


# ---------------------------------------------------------------------------------------------- sweep
def auto_batch_size(model, device=None) -> int:
    """128 on CUDA; on a CPU about 256k pixels a batch (64 images of 64 px, 5 of 224 px): larger CPU batches
    buy nothing and cost page faults on every activation allocation (measured on the towers: batch 40
    spent twice its compute time in the kernel, batch 4 almost none)."""

    dev = torch.device(device) if device is not None else model_device(model)
    if dev.type == "cuda":
        return 128
    size = getattr(model.preprocess, "output_size", None)
    return 4 if not size else int(min(64, max(4, 262144 // (size[0] * size[1]))))


def _cells(corruptions: Sequence[str], severities: Sequence[int]) -> list[tuple[str, int]]:
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= 5]
    if bad:
        raise ValueError(f"severities must be ints in 0..5, got {bad}")
    return [(c, int(s)) for c in dict.fromkeys(corruptions) for s in sorted(set(severities)) if s > 0]


def run_sweep(
    models: Mapping[str, object],
    tasks: Mapping[str, Sequence[EvalTask]] | Sequence[EvalTask],
    corruptions: Sequence[str],
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    ks: Sequence[int] = (1, 5),
    reference_size: int | None = REFERENCE_SIZE,
    occlusion_fill: float = 0.5,
    batch_size: int | None = None,
    cache_dir=None,
    num_workers: int = 0,
    cross_max_images: int = 100,
    progress: bool = True,
    timings: list | None = None,
) -> pd.DataFrame:
    """Evaluate ``models`` (name -> vlnb model) on ``tasks`` under every corruption x severity.

    ``tasks``: a list (every model on every task) or ``{model name: [tasks]}``. ``batch_size`` None picks
    :func:`auto_batch_size` per model. A cross encoder sees at
    most the first ``cross_max_images`` images of a task (with their captions). ``timings``, when a list,
    receives one dict per cell (model, dataset, corruption, severity, seconds, cached). Returns the tidy
    table (:data:`RESULT_COLUMNS`, values in percent).
    """

    cells = _cells(corruptions, severities)
    ks = _ks(ks)
    if isinstance(tasks, Mapping):
        missing = [m for m in models if m not in tasks]
        if missing:
            raise KeyError(f"no tasks given for model(s) {missing}; tasks are given for {sorted(tasks)}")
    per_model = {m: list(tasks[m]) if isinstance(tasks, Mapping) else list(tasks) for m in models}
    total = sum(len(t) for t in per_model.values()) * (1 + len(cells))
    bar = None
    if progress:
        bar = tqdm(total=total, desc="robustness sweep")
    rows = []
    for mname, model in models.items():
        cross = isinstance(model, CrossEncoder)
        bs = batch_size or auto_batch_size(model)
        for task in per_model[mname]:
            if cross and len(task.manifest) > cross_max_images:
                task = EvalTask(task.dataset, _head(task.manifest, cross_max_images),
                                {n: LabelSet(ls.classes, ls.targets[:cross_max_images], ls.templates)
                                 for n, ls in task.label_sets.items()}, task.retrieval)
            text = _TextSide(model, task, cross, cache_dir, max(bs, 64))
            pixels = _CrossPixels(model, task) if cross else None
            masks = ObjectMasks(task.manifest, model.preprocess)
            clean = None
            for c, s in [("clean", 0), *cells]:
                p = None if c == "clean" else corruption(c, s, seed=seed, reference_size=reference_size,
                                                         masks=masks if c == "occlusion_object" else None,
                                                         fill=occlusion_fill)
                if bar is not None:
                    bar.set_postfix_str(f"{mname} / {task.dataset} / {c} {s}")
                t0 = time.perf_counter()
                if cross:
                    metrics, chance, n = _cross_cell(model, task, text, pixels, p, ks, bs)
                else:
                    metrics, chance, n = _dual_cell(model, task, text, p, ks, bs, cache_dir, num_workers)
                if timings is not None:
                    timings.append({"model": mname, "dataset": task.dataset, "corruption": c, "severity": s,
                                    "seconds": time.perf_counter() - t0})
                if clean is None:
                    clean, clean_chance = metrics, chance
                    continue
                for (tname, metric), v in metrics.items():
                    base = clean[(tname, metric)]
                    rel = v / base if base > 0 else float("nan")
                    rows.append({"model": mname, "dataset": task.dataset, "task": tname, "metric": metric,
                                 "corruption": c, "severity": s, "value": v, "clean": base, "relative": rel,
                                 "n_images": n, "chance": clean_chance[(tname, metric)]})
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.update(1)
            for (tname, metric), v in clean.items():  # severity 0 of every corruption = the clean value
                rows += [{"model": mname, "dataset": task.dataset, "task": tname, "metric": metric, "corruption": c,
                          "severity": 0, "value": v, "clean": v, "relative": 1.0 if v > 0 else float("nan"),
                          "n_images": n, "chance": clean_chance[(tname, metric)]} for c in dict.fromkeys(corruptions)]
            if masks.missing:
                warnings.warn(f"{mname} / {task.dataset}: {len(masks.missing)} image(s) have no object mask at the "
                              "model's input; occlusion_object put the patch in their centre")
    if bar is not None:
        bar.close()
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return df.sort_values(["model", "dataset", "task", "metric", "corruption", "severity"], kind="stable",
                          ignore_index=True)


# ---------------------------------------------------------------------------------------------- summaries
def summarize(results: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """One row per (model, data set, task, metric): clean value, mean corrupted value and mean relative
    robustness over corruptions x severities 1-5, and the mCE / relative mCE against ``baseline`` (NaN
    where the baseline was not evaluated on that data and metric, or where its errors / degradations sum
    to zero so the ratio is undefined). See the module docstring for the formulas."""
    need = set(RESULT_COLUMNS) - set(results.columns)
    if need:
        raise KeyError(f"results lack column(s) {sorted(need)}; pass the table run_sweep returns")
    if baseline is not None and baseline not in set(results["model"]):
        raise KeyError(f"baseline model {baseline!r} is not in the results (models: {sorted(set(results['model']))})")
    cor = results[results["severity"] > 0].copy()
    cor["error"] = 100.0 - cor["value"]
    cor["degradation"] = cor["clean"] - cor["value"]  # = E(c, s) - E(clean)
    keys = ["dataset", "task", "metric"]
    per_c = cor.groupby(["model", *keys, "corruption"], sort=False).agg(
        error=("error", "sum"), degradation=("degradation", "sum"), n_sev=("severity", "nunique")).reset_index()
    out = []
    for (model, ds, task, metric), g in cor.groupby(["model", *keys], sort=False):
        row = {"model": model, "dataset": ds, "task": task, "metric": metric, "clean": float(g["clean"].iloc[0]),
               "mean_corrupted": float(g["value"].mean()), "relative_robustness": float(g["relative"].mean()),
               "mCE": np.nan, "relative_mCE": np.nan, "baseline": baseline, "n_corruptions": int(g["corruption"].nunique())}
        if baseline is not None:
            mine = per_c[(per_c["model"] == model) & (per_c["dataset"] == ds) & (per_c["task"] == task)
                         & (per_c["metric"] == metric)].set_index("corruption")
            base = per_c[(per_c["model"] == baseline) & (per_c["dataset"] == ds) & (per_c["task"] == task)
                         & (per_c["metric"] == metric)].set_index("corruption")
            common = [c for c in mine.index if c in base.index and mine.loc[c, "n_sev"] == base.loc[c, "n_sev"]]
            if common:
                ce = [mine.loc[c, "error"] / base.loc[c, "error"] if base.loc[c, "error"] > 0 else np.nan for c in common]
                rce = [mine.loc[c, "degradation"] / base.loc[c, "degradation"] if base.loc[c, "degradation"] > 1e-9
                       else np.nan for c in common]
                row["mCE"] = float(np.mean(ce)) if not np.isnan(ce).any() else np.nan
                row["relative_mCE"] = float(np.mean(rce)) if not np.isnan(rce).any() else np.nan
        out.append(row)
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def corruption_errors(results: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per (model, data set, task, metric, corruption): the corruption error CE against ``baseline``."""
    cor = results[results["severity"] > 0].assign(error=lambda d: 100.0 - d["value"])
    keys = ["dataset", "task", "metric", "corruption"]
    tot = cor.groupby(["model", *keys]).agg(error=("error", "sum")).reset_index()
    base = tot[tot["model"] == baseline].rename(columns={"error": "baseline_error"}).drop(columns="model")
    m = tot.merge(base, on=keys, how="inner")
    m["CE"] = np.where(m["baseline_error"] > 0, m["error"] / m["baseline_error"].where(m["baseline_error"] > 0), np.nan)
    return m


def is_monotone(values: Sequence[float], tolerance: float = 0.0, decreasing: bool = True) -> bool:
    """Whether ``values`` (a metric over increasing severity) never rises (or falls) by more than ``tolerance``."""
    v = np.asarray(values, dtype=float)
    d = np.diff(v)
    return bool((d <= tolerance).all() if decreasing else (d >= -tolerance).all())


def monotonicity(results: pd.DataFrame, tolerance: float = 0.0) -> pd.DataFrame:
    """Per (model, data set, task, metric, corruption): whether the metric never rises with severity by
    more than ``tolerance`` points, and the clean -> worst-severity drop."""
    out = []
    keys = ["model", "dataset", "task", "metric", "corruption"]
    for k, g in results.sort_values("severity").groupby(keys, sort=False):
        v = g["value"].to_numpy()
        out.append({**dict(zip(keys, k)), "monotone": is_monotone(v, tolerance), "drop": float(v[0] - v[-1]),
                    "max_rise": float(np.max(np.diff(v), initial=0.0))})
    return pd.DataFrame(out)


def chance_levels(tasks: Mapping[str, Sequence[EvalTask]] | Sequence[EvalTask]) -> pd.DataFrame:
    """Expected zero-shot top-1 accuracy (percent) of random scores per data set and label set on the tasks'
    whole manifests (:func:`vlnb.eval.chance.zeroshot_chance`: the mean, over labelled images, of (labels of
    the image) / (classes))."""
    seen, rows = set(), []
    for t in (t for ts in (tasks.values() if isinstance(tasks, Mapping) else [tasks]) for t in ts):
        for name, ls in t.label_sets.items():
            if (t.dataset, name) in seen:
                continue
            seen.add((t.dataset, name))
            rows.append({"dataset": t.dataset, "task": f"zeroshot:{name}", "classes": len(ls.classes),
                         "chance_top1": 100.0 * zeroshot_chance(ls.targets, len(ls.classes))["top1"]})
    return pd.DataFrame(rows, columns=["dataset", "task", "classes", "chance_top1"])


def chance_table(results: pd.DataFrame) -> pd.DataFrame:
    """Chance level (percent) of every (model, data set, task, metric) in ``results``: the exact level
    :func:`run_sweep` recorded for the images and captions it evaluated (:mod:`vlnb.eval.chance`)."""
    keys = ["model", "dataset", "task", "metric"]
    if "chance" not in results.columns:
        raise KeyError("results lack the 'chance' column; pass the table run_sweep returns")
    return results.drop_duplicates(keys)[keys + ["chance"]].reset_index(drop=True)


def headline_metrics(results: pd.DataFrame, k: int = 5) -> list[tuple[str, str]]:
    """The ``(task, metric)`` pairs a chapter plots: zero-shot top-1 of every label set and text->image
    Recall@k (the largest swept K <= ``k``; text->image averages over all captions, the less noisy side)."""
    pairs = results[["task", "metric"]].drop_duplicates()
    out = [(t, m) for t, m in pairs.itertuples(index=False) if t.startswith("zeroshot:") and m == "top1"]
    ret = sorted({int(m.split("@")[1]) for t, m in pairs.itertuples(index=False) if t == "retrieval"
                  and m.startswith("t2i_R@")})
    if ret:
        kk = max([x for x in ret if x <= k] or ret[:1])
        out.append(("retrieval", f"t2i_R@{kk}"))
    return out


def _select(results: pd.DataFrame, metrics: Sequence[tuple[str, str]] | None) -> pd.DataFrame:
    if metrics is None:
        return results
    return results[results.set_index(["task", "metric"]).index.isin(list(metrics))]


def degradation_table(results: pd.DataFrame, metrics: Sequence[tuple[str, str]] | None = None,
                      chance: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (model, data set, task, metric, corruption): clean value, value at the highest swept severity
    (``worst``, with that ``severity``) and the ``drop`` (clean - worst, in points). With ``chance`` (a
    :func:`chance_table`) also the chance level and ``informative``: clean at least twice chance."""
    df = _select(results, metrics)
    keys = ["model", "dataset", "task", "metric", "corruption"]
    last = df.sort_values("severity").groupby(keys, sort=False).tail(1)
    out = last[keys + ["clean", "value", "severity"]].rename(columns={"value": "worst"})
    out["drop"] = out["clean"] - out["worst"]
    if chance is not None:
        out = out.merge(chance, on=["model", "dataset", "task", "metric"], how="left")
        out["informative"] = out["clean"] >= 2 * out["chance"]
    return out.sort_values(keys, ignore_index=True)


def noise_tolerance(results: pd.DataFrame) -> float:
    """One image's worth of a percentage on the smallest evaluation set: ``100 / min(n_images)``."""
    n = results["n_images"].min() if len(results) else 0
    return float(100.0 / n) if n else 0.0


# ---------------------------------------------------------------------------------------------- chapter glue
def chapter_models(cfg, device: str = "auto", progress: bool = True) -> dict:
    """The models of a :class:`~vlnb.params.05_robustness.RobustnessParams` run (see
    :func:`vlnb.zoo.chapter_models`). Offline, when ``models`` is None and ``datasets`` maps model names to
    data sets (the offline default), only the models it names are loaded: the other reference models
    (the fusion models of chapter 2) have no data set here."""

    if cfg.profile == "offline" and not getattr(cfg, "models", None) and isinstance(cfg.datasets, Mapping):
        cfg = cfg.model_copy(update={"models": list(cfg.datasets)})
    return _models(cfg, device=device, progress=progress)


def _manifest(name: str, cfg) -> pd.DataFrame:
    if name == "world":  # the scratch reference model's test split, without generating its training images

        kw = {**RECIPES["scratch-world"].data_kwargs, "n_train": 0}
        df, _ = build_manifest("world", **kw)
        return df

    return evaluation_manifest(name, cfg)[0]


def chapter_tasks(cfg, model_names: Sequence[str]) -> dict[str, list[EvalTask]]:
    """``{model: [EvalTask]}`` from ``cfg.datasets`` and ``cfg.n_images`` (each manifest built once)."""
    if isinstance(cfg.datasets, Mapping):
        missing = [m for m in model_names if m not in cfg.datasets]
        if missing:
            raise KeyError(f"parameter 'datasets' names no data set for model(s) {missing} "
                           f"(it has {sorted(cfg.datasets)}); give a list to use the same data sets for all")
        per_model = {m: list(cfg.datasets[m]) for m in model_names}
    else:
        per_model = {m: list(cfg.datasets) for m in model_names}
    built: dict[str, EvalTask] = {}
    for name in dict.fromkeys(d for ds in per_model.values() for d in ds):
        n = cfg.n_images.get(name) if isinstance(cfg.n_images, Mapping) else cfg.n_images
        built[name] = make_task(name, _manifest(name, cfg), n)
    return {m: [built[d] for d in ds] for m, ds in per_model.items()}


def unit_pixels(manifest: pd.DataFrame, preprocess, n: int = 4) -> tuple[torch.Tensor, list]:
    """The first ``n`` decodable images of ``manifest`` as ``[0, 1]`` pixels under ``preprocess`` and their ids."""

    if cacheable(preprocess):
        px = decoded_pixels(manifest, preprocess, progress=False)
        ok = px.ok_rows[:n]
        if not len(ok):
            raise ValueError("no decodable image in the manifest")
        return px.unit(ok), [manifest["image_id"].iloc[r] for r in ok]
    xs, ids = [], []
    for iid, src in zip(manifest["image_id"], manifest["image"]):
        img, _ = try_open_rgb(src)
        if img is not None:
            xs.append(preprocess.to_unit([img])[0])
            ids.append(iid)
        if len(xs) == n:
            break
    if not xs:
        raise ValueError("no decodable image in the manifest")
    return torch.stack(xs), ids


def read_results(run_dirs: Sequence, name: str = "robustness_results") -> pd.DataFrame:
    """Concatenate the tidy tables of several sweep runs (``<run>/results/<name>.csv``), e.g. one papermill
    run per corruption subset; a cell measured in more than one run keeps its last value."""
    frames = []
    for d in run_dirs:
        f = Path(d) / "results" / f"{name}.csv"
        if not f.is_file():
            raise FileNotFoundError(f"no sweep table at {f}")
        frames.append(pd.read_csv(f))
    if not frames:
        raise ValueError("no run folders given")
    df = pd.concat(frames, ignore_index=True)
    keys = ["model", "dataset", "task", "metric", "corruption", "severity"]
    return df.drop_duplicates(keys, keep="last").sort_values(keys, ignore_index=True)


__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "EvalTask",
    "LabelSet",
    "caption_task",
    "chance_levels",
    "chance_table",
    "chapter_models",
    "chapter_tasks",
    "corruption_errors",
    "degradation_table",
    "headline_metrics",
    "is_monotone",
    "make_task",
    "monotonicity",
    "noise_tolerance",
    "read_results",
    "resolve_device",  # re-exported from vlnb.device
    "run_sweep",
    "summarize",
    "unit_pixels",
    "world_task",
]
