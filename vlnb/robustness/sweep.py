"""Robustness sweeps: model x data set x corruption x severity, one tidy table, mCE-style summaries.

:func:`run_sweep` evaluates every model on its :class:`EvalTask` s, clean and under every corruption and
severity of :mod:`vlnb.robustness.perturbations`:

- **text once, images per cell.** A dual encoder's text side (zero-shot class embeddings, caption
  embeddings for retrieval) is computed once per model and task; each cell re-encodes only the images,
  through :func:`vlnb.eval.image_features` with the perturbation, so cells are cached on disk under a
  key that includes the perturbation's exact key (a rerun of the same sweep costs nothing). A cross
  encoder (ViLT) has no separate text side: it scores every (image, text) pair of the subset again for
  each cell, so its subset is kept small (``cross_max_images``).
- **chapter 4's re-rank protocol** (``rerank_k`` > 0, :func:`plan_sweep`): on the first ``cross_max_images``
  images of a data set (the *re-rank subset*, its own data set ``"<name>[:n]"``) ITM heads re-rank their own ITC
  top-k (ITM + ITC), a cross encoder re-ranks the ITC top-k of the dual encoder ``first_stage`` (ITM alone), all
  on the same corrupted pixels; every dual encoder there is also scored by ITC, so each re-ranked row has an ITC
  row on the same images beside it.
- **per-image hits** (``hits=[]``, :data:`HITS_COLUMNS`): each image's hits and weight in every cell, from which
  every value of the table is recomputed and resampled (:mod:`vlnb.robustness.intervals`).
- **side by side** (``workers``): on a CPU, models that do not depend on one another run in parallel threads
  that share torch's threads (:func:`auto_workers`).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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
from ..device import (
    resolve_device,  # the chapter's device resolver, re-exported
    torch_threads,
)
from ..eval import (
    classification_metrics,
    image_features,
    multilabel_targets,
    recall_at_k,
    text_features,
    zeroshot_classifier,
    zeroshot_scores,
)
from ..eval.bootstrap import per_image_hits
from ..eval.chance import recall_chance, zeroshot_chance
from ..eval.compare import WORLD_TEMPLATES, coco_category_names, rerank_label
from ..eval.features import autocast_for, jsonable, model_device, pixels_key
from ..eval.rerank import rerank_similarity
from ..eval.retrieval import DIRECTIONS, check_ks
from ..eval.templates import get_templates
from ..eval.zeroshot import fill_template
from ..models import CrossEncoder
from ..progress import tqdm
from ..timing import timed, untimed
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
    #: what the prompts are, for tables (e.g. "openai_imagenet_7"); None: the first template
    prompts: str | None = None
    #: the one prompt per class a cross encoder scores when it scores every pair (None: the first template)
    cross_template: str | Callable | None = None

    def describe(self) -> str:
        """``"<n> classes, <m> prompts (<what>)"`` for overview tables."""
        what = self.prompts or (self.templates[0] if isinstance(self.templates[0], str) else "callable")
        return f"{len(self.classes)} classes, {len(self.templates)} prompt{'s' * (len(self.templates) > 1)} ({what})"


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
            what = "'a {colour} {shape}' over every shape"
        elif a == "shape":  # chapter 4's and chapter 7's shape prompts, so the same model scores the same
            templates, what = tuple(WORLD_TEMPLATES), "chapter 4's world prompts"
        else:
            templates, what = ("a {} object",), None
        sets[a] = LabelSet(classes, _multilabel(df[column[a]], classes), templates, what)
    return EvalTask(dataset, df, sets, retrieval)


def caption_task(manifest: pd.DataFrame, n_images: int | None = None, dataset: str | None = None,
                 templates: Sequence | str = ("a photo of a {}.",), retrieval: bool = True,
                 cross_template: str = "a photo of a {}.") -> EvalTask:
    """A captioned photo data set (COCO, Flickr30k...): retrieval, plus zero-shot multi-label
    classification over the ``labels`` column's categories when it has any (classes: a COCO manifest's 80
    categories of its instances file, like chapter 4's :func:`vlnb.eval.compare.coco_category_names` -- not
    only the categories that occur in the images, 78 of 80 in coco-mini; otherwise every label that occurs in
    the *whole* manifest, so a subset keeps the same classes). The first ``n_images`` rows are kept.

    ``templates``: the prompt templates, or the name of a set of :mod:`vlnb.eval.templates` (chapter 4's
    ``coco_templates``, e.g. ``"openai_imagenet_7"``); a cross encoder scoring every pair uses
    ``cross_template`` alone (one forward pass per image, class and prompt)."""
    what = templates if isinstance(templates, str) else None
    templates = get_templates(templates) if isinstance(templates, str) else tuple(templates)
    name = dataset or (manifest.attrs.get("vlnb") or {}).get("name", "data")
    if "primary_category" in manifest:
        classes = coco_category_names(manifest)
    else:
        classes = sorted({lab for labs in manifest["labels"] for lab in labs}) if "labels" in manifest else []
    df = _head(manifest, n_images)
    sets = {}
    if classes:
        sets["category"] = LabelSet(classes, _multilabel(df["labels"], classes), templates, what, cross_template)
    return EvalTask(name, df, sets, retrieval)


def make_task(dataset: str, manifest: pd.DataFrame, n_images: int | None = None, templates=None, **kw) -> EvalTask:
    """:func:`world_task` for world manifests, :func:`caption_task` for everything else; ``templates`` (None: the
    default) are the photo data sets' prompts (the world has its own)."""
    kind = (manifest.attrs.get("vlnb") or {}).get("name")
    if kind == "world" or dataset == "world":
        return world_task(manifest, n_images, dataset=dataset, **kw)
    return caption_task(manifest, n_images, dataset=dataset, **({"templates": templates} if templates else {}), **kw)


# ---------------------------------------------------------------------------------------------- metrics
def _ks(ks) -> tuple[int, ...]:
    return check_ks(ks)


def _zeroshot_metrics(scores: torch.Tensor, targets: np.ndarray) -> dict[str, float]:
    keep = targets.any(axis=1)
    if not keep.any():
        return {}
    return {"top1": 100.0 * classification_metrics(scores[torch.from_numpy(keep)], targets[keep], ks=(1,))["top1"]}


def zeroshot_hits(scores, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the top-1 hit (1.0 / 0.0) and its weight (1.0 for an image with a label, 0.0 without), with
    :func:`vlnb.eval.classification_metrics`' pessimistic rank (ties count against the model), so
    ``100 * hit.sum() / weight.sum()`` is the top-1 accuracy."""
    s = scores.detach().float().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, np.float32)
    y = np.asarray(targets, dtype=bool)
    best = np.where(y, s, -np.inf).max(axis=1, keepdims=True)
    rank = ((s >= best) & ~y).sum(axis=1)
    keep = y.any(axis=1)
    return ((rank == 0) & keep).astype(np.float64), keep.astype(np.float64)


def retrieval_hits(ranks: Mapping, text_to_image, n_images: int, ks) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per image, from :func:`vlnb.eval.retrieval.retrieval_ranks`: ``{"i2t_R@k": (hit, weight), "t2i_R@k": (hits,
    captions)}`` -- image->text: 1.0 when one of its captions is in the top k (weight 1.0 for an image with a
    caption); text->image: how many of its captions find it in the top k (weight: its number of captions). A
    Recall@K is ``100 * hit.sum() / weight.sum()``; a bootstrap over images re-weights both."""
    h = per_image_hits(ranks, text_to_image, n_images, ks)  # {direction: ((len(ks), n) hits, weights)}
    return {f"{d}_R@{k}": (h[d][0][a], h[d][1]) for d in DIRECTIONS for a, k in enumerate(ks)}


def _retrieval(sims, t2i: np.ndarray, n_images: int, ks) -> tuple[dict[str, float], dict]:
    """Recall@K both ways and per-image hits of one similarity matrix, or of ``{"i2t": m, "t2i": m}`` (a
    re-ranking, :func:`vlnb.eval.rerank.rerank_similarity`: each direction from its own matrix)."""
    per = sims if isinstance(sims, Mapping) else {d: sims for d in DIRECTIONS}
    metrics, hits = {}, {}
    for d in DIRECTIONS if isinstance(sims, Mapping) else (None,):
        m, ranks = recall_at_k(per[d or "i2t"], t2i, ks, return_ranks=True)
        h = retrieval_hits(ranks, t2i, n_images, ks)
        metrics.update({k: v for k, v in m.items() if d is None or k.startswith(d)})
        hits.update({k: v for k, v in h.items() if d is None or k.startswith(d)})
    return metrics, hits


class _TextSide:
    """Per (model, task): the text embeddings computed once (dual) or the texts to pair (cross)."""

    def __init__(self, model, task: EvalTask, cross: bool, cache_dir, batch_size: int):
        self.cross = cross
        self.texts, self.t2i = texts_and_targets(task.manifest) if task.retrieval else ([], np.zeros(0, np.int64))
        self.classifiers: dict[str, torch.Tensor] = {}
        self.prompts: dict[str, list[str]] = {}
        if cross:  # a cross encoder scores image x prompt pairs: one prompt (the first template) per class

            self.prompts = {n: [fill_template(ls.cross_template or ls.templates[0], c) for c in ls.classes]
                            for n, ls in task.label_sets.items()}
            return
        for n, ls in task.label_sets.items():
            self.classifiers[n] = zeroshot_classifier(model, ls.classes, ls.templates, batch_size=batch_size)
        if task.retrieval and self.texts:
            self.text_emb = text_features(model, self.texts, batch_size=max(batch_size, 64), cache_dir=cache_dir,
                                          progress=False)


RERANK_TASK = "itm-rerank"  #: the ``task`` of rows scored by an ITM head / cross encoder re-ranking ITC's top-k


def _cell_metrics(task: EvalTask, text: _TextSide, image_ids: list, scores_for: Callable,
                  ks) -> tuple[dict, dict, dict]:
    """Metrics of one cell, their exact chance levels (:mod:`vlnb.eval.chance`, percent, on the images and
    captions the cell evaluated) and per-image hits ``{(task, metric): (hit, weight)}`` aligned with
    ``image_ids``; ``scores_for(kind, name)`` gives ``(n_kept_images, n_texts_or_classes)`` scores."""
    pos = {iid: r for r, iid in enumerate(task.manifest["image_id"])}
    rows = np.asarray([pos[i] for i in image_ids], dtype=np.int64)
    out, chance, hits = {}, {}, {}
    for name, ls in task.label_sets.items():
        scores = scores_for("zeroshot", name)
        for m, v in _zeroshot_metrics(scores, ls.targets[rows]).items():
            out[(f"zeroshot:{name}", m)] = v
            chance[(f"zeroshot:{name}", m)] = 100.0 * zeroshot_chance(ls.targets[rows], len(ls.classes))["top1"]
            hits[(f"zeroshot:{name}", m)] = zeroshot_hits(scores, ls.targets[rows])
    if task.retrieval and len(text.texts):
        # captions of skipped images have no image to retrieve: drop them, renumber the rest
        new = np.full(len(task.manifest), -1, dtype=np.int64)
        new[rows] = np.arange(len(rows))
        t2i = new[text.t2i]
        keep = t2i >= 0
        sim = scores_for("retrieval", None)[:, torch.from_numpy(keep)]
        metrics, h = _retrieval(sim, t2i[keep], len(rows), ks)
        for m, v in metrics.items():
            out[("retrieval", m)] = v
            hits[("retrieval", m)] = h[m]
        chance.update({("retrieval", m): v for m, v in recall_chance(t2i[keep], len(rows), ks).items()})
    return out, chance, hits


@dataclass
class _Cell:
    """What one cell measured: values, chance levels and per-image hits keyed by ``(dataset, task, metric)``,
    the images behind them per data set, and the similarities a re-ranker of this cell starts from."""

    values: dict = field(default_factory=dict)
    chance: dict = field(default_factory=dict)
    hits: dict = field(default_factory=dict)
    image_ids: dict = field(default_factory=dict)
    first_stage: tuple | None = None  #: (ITC similarities, image ids, texts, text->image) on the re-rank subset

    def add(self, dataset: str, image_ids: list, values: dict, chance: dict, hits: dict):
        self.image_ids[dataset] = list(image_ids)
        for (t, m), v in values.items():
            key = (dataset, t, m)
            self.values[key], self.chance[key], self.hits[key] = v, chance[(t, m)], hits[(t, m)]


def _subset_similarity(sim: torch.Tensor, image_ids: list, text: _TextSide, task: EvalTask, subset: EvalTask):
    """The ITC similarities of the re-rank subset's images (those of ``image_ids`` in ``subset``) and their
    captions, cut from the full cell's ``(n_images, n_texts)`` matrix: ``(sim, ids, texts, text->image)``."""
    wanted = set(subset.manifest["image_id"])
    keep = [r for r, iid in enumerate(image_ids) if iid in wanted]
    ids = [image_ids[r] for r in keep]
    pos = {iid: r for r, iid in enumerate(task.manifest["image_id"])}
    new = np.full(len(task.manifest), -1, dtype=np.int64)
    new[[pos[i] for i in ids]] = np.arange(len(ids))
    t2i = new[text.t2i]
    cols = np.flatnonzero(t2i >= 0)
    sub = sim[torch.as_tensor(keep, dtype=torch.long)][:, torch.from_numpy(cols)]
    return sub, ids, [text.texts[j] for j in cols], t2i[cols]


def _rerank_rows(cell: _Cell, dataset: str, cross, pixels: _CrossPixels, first: tuple, perturbation, k: int,
                 combine: str, ks, batch_size: int, cache_dir=None) -> None:
    """Re-rank ``first``'s ITC top-``k`` (:func:`_subset_similarity`) with ``cross`` on the same corrupted
    images (:func:`vlnb.eval.rerank.rerank_similarity`, pair scores cached like the cells' features) and add the
    :data:`RERANK_TASK` rows to ``cell``."""
    sim, ids, texts, t2i = first
    x = pixels.select(ids, model_device(cross), perturbation, batch_size)
    key = pixels_key(pixels.preprocess, pixels.manifest, ids, perturbation)
    reranked, _ = rerank_similarity(sim, cross, x, texts, k=k, batch_size=256, combine=combine, progress=False,
                                    images_key=key, cache_dir=cache_dir)
    values, hits = _retrieval(reranked, t2i, len(ids), ks)
    chance = recall_chance(t2i, len(ids), ks)
    cell.add(dataset, ids, {(RERANK_TASK, m): v for m, v in values.items()},
             {(RERANK_TASK, m): v for m, v in chance.items()}, {(RERANK_TASK, m): v for m, v in hits.items()})


def _dual_cell(model, task, text: _TextSide, perturbation, ks, batch_size, cache_dir, num_workers,
               subset: EvalTask | None = None, subset_name: str | None = None, own_itm: tuple | None = None) -> _Cell:
    """One cell of a dual encoder: ITC metrics on the task; with ``subset``, also ITC on the re-rank subset
    (data set ``subset_name``, when it is not the whole task) and, with ``own_itm`` = ``(cross encoder,
    pixels, k, batch size)``, its ITM head re-ranking its own ITC top-k there (ITM + ITC, as LAVIS)."""
    fs = image_features(model, task.manifest, batch_size=batch_size, cache_dir=cache_dir, perturbation=perturbation,
                        num_workers=num_workers, progress=False)
    sim = None
    if task.retrieval and len(text.texts):
        with torch.inference_mode():
            sim = model.similarity(fs.embeddings, text.text_emb).float().cpu()

    def scores_for(kind, name):
        return zeroshot_scores(model, fs.embeddings, text.classifiers[name]) if kind == "zeroshot" else sim

    cell = _Cell()
    cell.add(task.dataset, fs.image_ids, *_cell_metrics(task, text, fs.image_ids, scores_for, ks))
    if subset is not None and sim is not None:
        first = _subset_similarity(sim, fs.image_ids, text, task, subset)
        cell.first_stage = first
        if subset_name != task.dataset:
            s, ids, _, t2i = first
            values, hits = _retrieval(s, t2i, len(ids), ks)
            chance = recall_chance(t2i, len(ids), ks)
            cell.add(subset_name, ids, {("retrieval", m): v for m, v in values.items()},
                     {("retrieval", m): v for m, v in chance.items()}, {("retrieval", m): v for m, v in hits.items()})
        if own_itm is not None:
            cross, pixels, k, bs = own_itm
            _rerank_rows(cell, subset_name, cross, pixels, first, perturbation, k, "itm+itc", ks, bs, cache_dir)
    return cell


class _CrossPixels:
    """A cross encoder's [0, 1] pixels of the task's images, decoded and preprocessed once (through the pixel
    cache when the preprocess allows it: then rows are read from its memory map only when asked for)."""

    def __init__(self, model, task: EvalTask):
        pre = self.preprocess = model.preprocess
        self.manifest = task.manifest  # what the pixels are (a part of the re-ranked pairs' cache key)
        self._px, self._pixels = None, None
        if cacheable(pre):  # the shared pixel cache (vlnb.data.pixels): decoded once for every cell and chapter
            self._px = decoded_pixels(task.manifest, pre, progress=False)
            self.ids = [self._px.image_ids[r] for r in self._px.ok_rows]
            return
        ids, xs = [], []
        for iid, src in zip(task.manifest["image_id"], task.manifest["image"]):
            img, _ = try_open_rgb(src)
            if img is not None:
                ids.append(iid)
                xs.append(pre.to_unit([img])[0])
        # images of different sizes (ViLT keeps each aspect ratio) stay a list, scored one at a time
        same = len({tuple(x.shape) for x in xs}) <= 1
        self.ids, self._pixels = ids, (torch.stack(xs) if same else xs) if xs else torch.empty(0, 3, 1, 1)

    @property
    def pixels(self):
        """All images' ``[0, 1]`` pixels: a ``(N, 3, H, W)`` tensor, or a list when their sizes differ."""
        if self._pixels is None:
            ok = self._px.ok_rows
            self._pixels = self._px.unit(ok) if len(ok) else torch.empty(0, 3, 1, 1)
        return self._pixels

    def select(self, ids: list, device, perturbation, batch_size: int) -> torch.Tensor:
        """The normalised model input of ``ids`` (in that order) under ``perturbation`` (None: clean), on ``device``."""
        pos = {iid: r for r, iid in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise KeyError(f"{len(missing)} image(s) of the first stage have no pixels here, e.g. {missing[:3]}")
        if self._px is not None:
            x = self._px.unit(self._px.rows_of(ids))
        elif isinstance(self._pixels, torch.Tensor):
            x = self._pixels[[pos[i] for i in ids]]
        else:
            raise ValueError("re-ranking needs images of one size; this cross encoder keeps each image's aspect "
                             "ratio (score every pair instead: first_stage=None)")
        out = []
        for s in range(0, len(x), max(1, batch_size)):
            b = x[s : s + batch_size].to(device)
            if perturbation is not None:
                b = perturbation(b, ids=[jsonable(i) for i in ids[s : s + len(b)]])
            out.append(self.preprocess.normalize(b))
        return torch.cat(out) if out else x


def _cross_cell(model, task, text: _TextSide, pixels: _CrossPixels, perturbation, ks, batch_size) -> _Cell:
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

    cell = _Cell()
    cell.add(task.dataset, pixels.ids, *_cell_metrics(task, text, pixels.ids, scores_for, ks))
    return cell


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


def auto_workers(models: Mapping[str, object]) -> int:
    """Models evaluated side by side by :func:`run_sweep`: one per torch CPU thread when every model is on a CPU
    (at most one per model), else 1 (a GPU runs one model at a time)."""
    if any(model_device(m).type != "cpu" for m in models.values()):
        return 1
    return max(1, min(len(models), torch.get_num_threads()))


def _cells(corruptions: Sequence[str], severities: Sequence[int]) -> list[tuple[str, int]]:
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= 5]
    if bad:
        raise ValueError(f"severities must be ints in 0..5, got {bad}")
    return [(c, int(s)) for c in dict.fromkeys(corruptions) for s in sorted(set(severities)) if s > 0]


@dataclass
class Evaluation:
    """How one model is evaluated on one data set in a sweep (:func:`plan_sweep`)."""

    model: str
    task: EvalTask  #: what its cells run on (a cross encoder scoring every pair: the first ``cross_max_images``)
    #: "dual" (ITC), "cross" (a cross encoder scoring every image x text pair) or "rerank" (a cross encoder
    #: re-ranking the ITC top-k of the first stage, its ITM score alone: chapter 4's ViLT protocol)
    mode: str
    subset: EvalTask | None = None  #: the re-rank subset of the data set (None: no model re-ranks there)
    subset_name: str | None = None  #: its data set name: ``"world[:40]"``, or the data set's own when whole
    own_itm: bool = False  #: a dual encoder whose ITM head re-ranks its own ITC top-k (ITM + ITC, as LAVIS)

    def protocols(self, rerank_k: int, first_stage: str | None) -> list[dict]:
        """One row per (data set, task) this evaluation produces: ``dataset, task, protocol, images``."""
        t, out = self.task, []
        if self.mode == "rerank":
            return [{"dataset": self.subset_name, "task": RERANK_TASK, "images": len(self.subset.manifest),
                     "protocol": rerank_label(f"{first_stage} ITC", rerank_k, "ITM", "itm")}]
        for name, ls in t.label_sets.items():
            how = (f"one prompt per class scored by the cross encoder ({len(ls.classes)} classes)"
                   if self.mode == "cross" else f"nearest class embedding, {ls.describe()}")
            out.append({"dataset": t.dataset, "task": f"zeroshot:{name}", "images": len(t.manifest),
                        "protocol": f"zero-shot: {how}; hit when the top class is any of the image's labels"})
        if t.retrieval:
            out.append({"dataset": t.dataset, "task": "retrieval", "images": len(t.manifest),
                        "protocol": "every image x caption pair scored by the cross encoder" if self.mode == "cross"
                        else "ITC (cosine of the embeddings), all captions"})
        if self.subset is not None:
            if self.subset_name != t.dataset:
                out.append({"dataset": self.subset_name, "task": "retrieval", "images": len(self.subset.manifest),
                            "protocol": "ITC (cosine of the embeddings), all captions"})
            if self.own_itm:
                out.append({"dataset": self.subset_name, "task": RERANK_TASK, "images": len(self.subset.manifest),
                            "protocol": rerank_label("ITC", rerank_k, "own ITM", "itm+itc")})
        return out


def _reranks(model, rerank_k: int, first_stage: str | None) -> bool:
    if rerank_k <= 0:
        return False
    if isinstance(model, CrossEncoder):
        return first_stage is not None
    return callable(getattr(model, "cross_encoder", None))


def plan_sweep(models: Mapping[str, object], tasks: Mapping[str, Sequence[EvalTask]] | Sequence[EvalTask],
               rerank_k: int = 0, first_stage: str | None = None, cross_max_images: int = 100) -> list[Evaluation]:
    """What :func:`run_sweep` evaluates, model by model and data set by data set, dual encoders first.

    With ``rerank_k`` > 0, chapter 4's re-rank protocol on the first ``cross_max_images`` images of a data set
    (the *re-rank subset*, named ``"<data set>[:n]"`` unless it is the whole data set): a dual encoder with an ITM
    head (BLIP-like, Q-Former) re-ranks its own ITC top-``rerank_k`` by ITM + ITC; a cross encoder (ViLT-like)
    re-ranks the ITC top-``rerank_k`` of the dual encoder ``first_stage`` by its ITM score alone; and every dual
    encoder on that data set is also scored by ITC on the subset, so each re-ranked row has an ITC row on the
    same images beside it. Without a re-rank (``rerank_k`` 0 or no ``first_stage``) a cross encoder scores every
    image x text pair of the first ``cross_max_images`` images (zero-shot: one prompt per class)."""
    if isinstance(rerank_k, bool) or not isinstance(rerank_k, (int, np.integer)) or rerank_k < 0:
        raise ValueError(f"rerank_k must be an int >= 0, got {rerank_k!r}")
    if cross_max_images < 1:
        raise ValueError(f"cross_max_images must be >= 1, got {cross_max_images}")
    if isinstance(tasks, Mapping):
        missing = [m for m in models if m not in tasks]
        if missing:
            raise KeyError(f"no tasks given for model(s) {missing}; tasks are given for {sorted(tasks)}")
    per_model = {m: list(tasks[m]) if isinstance(tasks, Mapping) else list(tasks) for m in models}
    cross_rerankers = [m for m, model in models.items()
                       if isinstance(model, CrossEncoder) and _reranks(model, rerank_k, first_stage)]
    if cross_rerankers:
        if first_stage not in models or isinstance(models[first_stage], CrossEncoder):
            raise ValueError(f"first_stage {first_stage!r} must be one of the swept dual encoders "
                             f"({sorted(m for m in models if not isinstance(models[m], CrossEncoder))}): the cross "
                             f"encoder(s) {cross_rerankers} re-rank its ITC top-k")
        first_sets = {t.dataset for t in per_model[first_stage] if t.retrieval}
        for m in cross_rerankers:
            lacking = [t.dataset for t in per_model[m] if t.dataset not in first_sets]
            if lacking:
                raise ValueError(f"{m} re-ranks {first_stage}'s ITC top-k, but {first_stage} does not run retrieval "
                                 f"on {lacking}")
    rerank_sets = {t.dataset for m, model in models.items() if _reranks(model, rerank_k, first_stage)
                   for t in per_model[m] if t.retrieval}
    subsets: dict[str, tuple[EvalTask, str]] = {}
    for t in (t for ts in per_model.values() for t in ts):
        if t.dataset in rerank_sets and t.dataset not in subsets:
            sub = _head(t.manifest, cross_max_images)
            name = t.dataset if len(sub) == len(t.manifest) else f"{t.dataset}[:{len(sub)}]"
            subsets[t.dataset] = (EvalTask(name, sub, {}, True), name)
    duals, crosses = [], []
    for m, model in models.items():
        for task in per_model[m]:
            sub, name = subsets.get(task.dataset, (None, None)) if task.retrieval else (None, None)
            if not isinstance(model, CrossEncoder):
                duals.append(Evaluation(m, task, "dual", sub, name, sub is not None and _reranks(model, rerank_k,
                                                                                                  first_stage)))
            elif _reranks(model, rerank_k, first_stage):
                crosses.append(Evaluation(m, task, "rerank", sub, name))
            else:
                if len(task.manifest) > cross_max_images:
                    task = EvalTask(task.dataset, _head(task.manifest, cross_max_images),
                                    {n: replace(ls, targets=ls.targets[:cross_max_images])
                                     for n, ls in task.label_sets.items()}, task.retrieval)
                crosses.append(Evaluation(m, task, "cross"))
    return duals + crosses


def fusion_models(models: Mapping[str, object]) -> list[str]:
    """The models with an image-text-matching head: cross encoders (ViLT) and dual encoders that also have one
    (BLIP, BLIP-2, the book's blip-world and qformer-world)."""
    return [m for m, model in models.items()
            if isinstance(model, CrossEncoder) or callable(getattr(model, "cross_encoder", None))]


def protocol_table(plan: Sequence[Evaluation], rerank_k: int = 0, first_stage: str | None = None) -> pd.DataFrame:
    """One row per (model, data set, task) of a :func:`plan_sweep`: how it is scored and on how many images."""
    rows = [{"model": ev.model, **r} for ev in plan for r in ev.protocols(rerank_k, first_stage)]
    return pd.DataFrame(rows, columns=["model", "dataset", "task", "images", "protocol"])


HITS_COLUMNS = ["model", "dataset", "task", "metric", "corruption", "severity", "image_id", "hit", "n"]


def _hits_frame(model: str, cell: _Cell, corruption: str, severity: int) -> list[pd.DataFrame]:
    return [pd.DataFrame({"model": model, "dataset": ds, "task": task, "metric": metric, "corruption": corruption,
                          "severity": severity, "image_id": cell.image_ids[ds], "hit": h, "n": w},
                         columns=HITS_COLUMNS)
            for (ds, task, metric), (h, w) in cell.hits.items()]


def _chains(plan: Sequence[Evaluation], models: Mapping[str, object],
            first_stage: str | None) -> list[list[Evaluation]]:
    """The plan cut into chains that must run one after another (every evaluation of one model; a re-ranking
    cross encoder after its first stage), the costliest first (images x input pixels, a rough measure)."""
    chain_of: dict[str, int] = {}
    chains: list[list[Evaluation]] = []
    for ev in plan:
        key = first_stage if ev.mode == "rerank" and first_stage in chain_of else ev.model
        if key not in chain_of:
            chain_of[key] = len(chains)
            chains.append([])
        chain_of.setdefault(ev.model, chain_of[key])
        chains[chain_of[key]].append(ev)

    def cost(chain) -> int:
        size = [getattr(models[ev.model].preprocess, "output_size", None) or (224, 224) for ev in chain]
        return sum(len(ev.task.manifest) * int(np.prod(hw)) for ev, hw in zip(chain, size))

    return sorted(chains, key=cost, reverse=True)


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
    rerank_k: int = 0,
    first_stage: str | None = None,
    hits: list | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Evaluate ``models`` (name -> vlnb model) on ``tasks`` under every corruption x severity.

    ``tasks``: a list (every model on every task) or ``{model name: [tasks]}``. ``batch_size`` None picks
    :func:`auto_batch_size` per model. ``rerank_k``, ``first_stage``, ``cross_max_images``: what is re-ranked and
    where, and what a cross encoder scores otherwise (:func:`plan_sweep`). ``timings``, when a list, receives one
    dict per cell (model, dataset, corruption, severity, seconds). ``hits``, when a list, receives the per-image
    hits of every cell as frames of :data:`HITS_COLUMNS` (``corruption="clean"``, ``severity=0`` for the clean
    images; ``pd.concat(hits)`` for the table of :func:`vlnb.robustness.intervals.drop_intervals`). ``workers`` > 1
    runs independent models side by side in that many threads, sharing torch's CPU threads among them (two small
    models on one thread each keep two cores busy; one of them on two threads keeps them waiting on each other);
    every cell is computed the same way in any order. :func:`auto_workers` picks a number. Returns the tidy table
    (:data:`RESULT_COLUMNS`, values in percent).
    """

    cells = _cells(corruptions, severities)
    ks = _ks(ks)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = plan_sweep(models, tasks, rerank_k, first_stage, cross_max_images)
    if any(ev.own_itm or ev.mode == "rerank" for ev in plan) and max(ks) > rerank_k:
        raise ValueError(f"Recall@{max(ks)} of a top-{rerank_k} re-ranking is not defined: give ks <= rerank_k")
    bar = tqdm(total=len(plan) * (1 + len(cells)), desc="robustness sweep") if progress else None
    first_cells: dict[tuple, tuple] = {}  # (data set, corruption, severity) -> first stage's subset similarities
    kw = {"cells": cells, "seed": seed, "ks": ks, "reference_size": reference_size, "occlusion_fill": occlusion_fill,
          "batch_size": batch_size, "cache_dir": cache_dir, "num_workers": num_workers, "rerank_k": rerank_k,
          "first_stage": first_stage, "first_cells": first_cells, "bar": bar, "timings": timings, "hits": hits}
    rows: list[dict] = []
    chains = _chains(plan, models, first_stage)
    if workers == 1 or len(chains) == 1:
        for chain in chains:
            for ev in chain:
                rows += _evaluate(ev, models[ev.model], corruptions, **kw)
    else:
        def run_chain(chain):
            with untimed():  # the waiting thread times the whole pool once, as encoding
                return [r for ev in chain for r in _evaluate(ev, models[ev.model], corruptions, **kw)]

        # the same threads in all, shared among the workers
        with torch_threads(max(1, torch.get_num_threads() // workers)), timed("encoding"), \
                ThreadPoolExecutor(max_workers=workers) as ex:
            for part in [ex.submit(run_chain, c) for c in chains]:
                rows += part.result()
    if bar is not None:
        bar.close()
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return df.sort_values(["model", "dataset", "task", "metric", "corruption", "severity"], kind="stable",
                          ignore_index=True)


def _evaluate(ev: Evaluation, model, corruptions: Sequence[str], cells, seed, ks, reference_size, occlusion_fill,
              batch_size, cache_dir, num_workers, rerank_k, first_stage, first_cells, bar, timings, hits) -> list[dict]:
    """Every cell (clean first) of one :class:`Evaluation`: its rows of the tidy table."""
    mname, task = ev.model, ev.task
    bs = batch_size or auto_batch_size(model)
    masks = ObjectMasks(task.manifest, model.preprocess)
    text = pixels = own = None
    if ev.mode == "dual":
        text = _TextSide(model, task, False, cache_dir, max(bs, 64))
        if ev.own_itm:
            own = (model.cross_encoder(), _CrossPixels(model, task), rerank_k, bs)
    else:
        pixels = _CrossPixels(model, task)
        if ev.mode == "cross":
            text = _TextSide(model, task, True, cache_dir, max(bs, 64))
    rows, clean = [], None
    for c, s in [("clean", 0), *cells]:
        p = None if c == "clean" else corruption(c, s, seed=seed, reference_size=reference_size,
                                                 masks=masks if c == "occlusion_object" else None, fill=occlusion_fill)
        if bar is not None:
            bar.set_postfix_str(f"{mname} / {task.dataset} / {c} {s}")
        t0 = time.perf_counter()
        if ev.mode == "dual":
            cell = _dual_cell(model, task, text, p, ks, bs, cache_dir, num_workers, ev.subset, ev.subset_name, own)
            if mname == first_stage and cell.first_stage is not None:
                first_cells[(task.dataset, c, s)] = cell.first_stage
        elif ev.mode == "cross":
            cell = _cross_cell(model, task, text, pixels, p, ks, bs)
        else:
            cell = _Cell()
            _rerank_rows(cell, ev.subset_name, model, pixels, first_cells[(task.dataset, c, s)], p, rerank_k, "itm",
                         ks, bs, cache_dir)
        if timings is not None:
            timings.append({"model": mname, "dataset": task.dataset, "corruption": c, "severity": s,
                            "seconds": time.perf_counter() - t0})
        if hits is not None:
            hits += _hits_frame(mname, cell, c, s)
        if bar is not None:
            bar.update(1)
        if clean is None:
            clean = cell
            continue
        for (ds, tname, metric), v in cell.values.items():
            base = clean.values[(ds, tname, metric)]
            rows.append({"model": mname, "dataset": ds, "task": tname, "metric": metric, "corruption": c,
                         "severity": s, "value": v, "clean": base, "relative": v / base if base > 0 else float("nan"),
                         "n_images": len(cell.image_ids[ds]), "chance": clean.chance[(ds, tname, metric)]})
    for (ds, tname, metric), v in clean.values.items():  # severity 0 of every corruption = the clean value
        rows += [{"model": mname, "dataset": ds, "task": tname, "metric": metric, "corruption": c, "severity": 0,
                  "value": v, "clean": v, "relative": 1.0 if v > 0 else float("nan"),
                  "n_images": len(clean.image_ids[ds]), "chance": clean.chance[(ds, tname, metric)]}
                 for c in dict.fromkeys(corruptions)]
    if masks.missing:
        warnings.warn(f"{mname} / {task.dataset}: {len(masks.missing)} image(s) have no object mask at the "
                      "model's input; occlusion_object put the patch in their centre")
    return rows


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
    Recall@k (the largest swept K <= ``k``; text->image averages over all captions, the less noisy side), of
    ITC retrieval and of the ITM re-ranking (:data:`RERANK_TASK`) when the sweep has one."""
    pairs = results[["task", "metric"]].drop_duplicates()
    out = [(t, m) for t, m in pairs.itertuples(index=False) if t.startswith("zeroshot:") and m == "top1"]
    for task in ("retrieval", RERANK_TASK):
        ret = sorted({int(m.split("@")[1]) for t, m in pairs.itertuples(index=False) if t == task
                      and m.startswith("t2i_R@")})
        if ret:
            kk = max([x for x in ret if x <= k] or ret[:1])
            out.append((task, f"t2i_R@{kk}"))
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
    """``{model: [EvalTask]}`` from ``cfg.datasets`` and ``cfg.n_images`` (each manifest built once); photo data
    sets prompt zero-shot classes with ``cfg.coco_templates`` (chapter 4's template set), the world with its own."""
    if isinstance(cfg.datasets, Mapping):
        missing = [m for m in model_names if m not in cfg.datasets]
        if missing:
            raise KeyError(f"parameter 'datasets' names no data set for model(s) {missing} "
                           f"(it has {sorted(cfg.datasets)}); give a list to use the same data sets for all")
        per_model = {m: list(cfg.datasets[m]) for m in model_names}
    else:
        per_model = {m: list(cfg.datasets) for m in model_names}
    built: dict[str, EvalTask] = {}
    templates = getattr(cfg, "coco_templates", None)
    for name in dict.fromkeys(d for ds in per_model.values() for d in ds):
        n = cfg.n_images.get(name) if isinstance(cfg.n_images, Mapping) else cfg.n_images
        # photo data sets: chapter 4's template set (coco_templates), so a model scores the same on the same images
        built[name] = make_task(name, _manifest(name, cfg), n, templates=templates)
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
    "HITS_COLUMNS",
    "RERANK_TASK",
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "EvalTask",
    "Evaluation",
    "LabelSet",
    "auto_workers",
    "caption_task",
    "chance_levels",
    "chance_table",
    "chapter_models",
    "chapter_tasks",
    "corruption_errors",
    "degradation_table",
    "fusion_models",
    "headline_metrics",
    "is_monotone",
    "make_task",
    "monotonicity",
    "noise_tolerance",
    "plan_sweep",
    "protocol_table",
    "read_results",
    "resolve_device",  # re-exported from vlnb.device
    "retrieval_hits",
    "run_sweep",
    "summarize",
    "unit_pixels",
    "world_task",
    "zeroshot_hits",
]
