"""Evaluate any model of :mod:`vlnb.models` on any manifest: retrieval and zero-shot, one tidy table.

The comparison chapter's loop (:func:`vlnb.comparison.run_comparison`) and the later chapters call
:func:`evaluate_retrieval` and :func:`evaluate_zeroshot` per (model, data set) and concatenate the rows. Every row carries its protocol, so numbers measured
under different protocols (ITC only vs ITC→ITM re-ranking, zero-shot vs trained on the data) are never
mistaken for one another.

Retrieval uses *all* captions of every image (image→text is a hit when any of them is in the top-k).
Cross encoders (ViLT, BLIP/BLIP-2 ITM heads) re-rank the top-``k`` of a dual encoder's similarities.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.classnames import CIFAR100_CLASSNAMES
from ..data.hub import CIFAR100_ALIASES, cifar100_fine_names
from ..data.pixels import pixel_loader
from ..data.world import WORLD_SHAPES
from .chance import recall_chance, zeroshot_chance
from .features import image_features, pixels_key, text_features
from .rerank import rerank_similarity, reranked_recall
from .retrieval import recall_at_k, retrieval_ranks, retrieval_table
from .templates import get_templates
from .zeroshot import classification_metrics, multilabel_targets, zeroshot_classifier, zeroshot_scores

#: Prompts for the offline world: its captions' own vocabulary (a word-level tokenizer knows no "photo").
WORLD_TEMPLATES = ("a {}", "a large {}", "a small {}", "one {}", "a {} on a background")

#: LAVIS's re-rank depth ``k_test`` per (model family, data set): lavis/projects/blip/eval/ret_{coco,flickr}_eval
#: (BLIP: 256 on COCO, 128 on Flickr30k) and lavis/projects/blip2/eval/ret_{coco,flickr}_eval (BLIP-2: 128).
LAVIS_RERANK_K: dict[tuple[str, str], int] = {
    ("blip", "coco"): 256, ("blip", "flickr30k"): 128, ("blip2", "coco"): 128, ("blip2", "flickr30k"): 128,
}
#: Depth for every other (model, data set) with ``rerank_k="lavis"`` (e.g. ViLT, which LAVIS does not evaluate).
DEFAULT_RERANK_K = 128


def rerank_depth(rerank_k, family: str | None, dataset: str) -> int:
    """The re-rank depth k of a cross encoder of ``family`` on ``dataset``: ``rerank_k`` itself when it is an
    int, ``{data set: k}`` looked up by data set (else :data:`DEFAULT_RERANK_K`), or ``"lavis"``: LAVIS's
    ``k_test`` (:data:`LAVIS_RERANK_K`)."""
    if isinstance(rerank_k, bool):
        raise TypeError(f"rerank_k must be an int, a {{data set: k}} dict or 'lavis', got {rerank_k!r}")
    if isinstance(rerank_k, (int, np.integer)):
        k = int(rerank_k)
    elif isinstance(rerank_k, dict):
        k = int(rerank_k.get(dataset, DEFAULT_RERANK_K))
    elif rerank_k == "lavis":
        k = LAVIS_RERANK_K.get((str(family), dataset), DEFAULT_RERANK_K)
    else:
        raise ValueError(f"rerank_k must be an int, a {{data set: k}} dict or 'lavis', got {rerank_k!r}")
    if k < 0:
        raise ValueError(f"re-rank depth must be >= 0 (0: no re-ranking), got {k} for {family} on {dataset}")
    return k


@dataclass
class RetrievalRun:
    """What one dual encoder's retrieval evaluation produced (kept for galleries and re-ranking)."""

    model: str
    dataset: str
    similarity: torch.Tensor  #: (n_images, n_texts) ITC similarities
    image_ids: list
    texts: list[str]
    text_to_image: np.ndarray
    results: list[dict] = field(default_factory=list)  #: recall dicts with model/dataset/protocol
    skipped: pd.DataFrame | None = None

    def ranks(self) -> dict[str, np.ndarray]:
        """1-based rank of the first correct item per query (``i2t`` per image, ``t2i`` per text)."""
        return retrieval_ranks(self.similarity, self.text_to_image)

    def top_images(self, text_index: int, k: int = 5) -> list[int]:
        """Row indices (into :attr:`image_ids`) of the ``k`` best images for text ``text_index``."""
        return self.similarity[:, text_index].topk(min(k, len(self.image_ids))).indices.tolist()


def captions_table(manifest: pd.DataFrame, image_ids: Sequence) -> tuple[list[str], np.ndarray]:
    """All captions of the images in ``image_ids`` (in that order) and each caption's image row."""
    caps = dict(zip(manifest["image_id"], manifest["captions"]))
    texts, owner = [], []
    for row, iid in enumerate(image_ids):
        for c in caps[iid]:
            texts.append(str(c))
            owner.append(row)
    return texts, np.asarray(owner, dtype=np.int64)


def evaluate_retrieval(
    model,
    manifest: pd.DataFrame,
    dataset: str,
    model_name: str | None = None,
    protocol: str = "ITC",
    cross_encoder=None,
    rerank_k: int = 128,
    rerank_protocol: str | None = None,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    cache_dir=None,
    progress: bool = True,
) -> RetrievalRun:
    """Recall@K both ways of dual encoder ``model`` on ``manifest`` (+ a re-ranked row with ``cross_encoder``).

    Images that cannot be decoded are skipped (reported in ``.skipped``) together with their captions.
    With ``cross_encoder`` the top-``rerank_k`` candidates of each query are re-scored by it (score =
    ITM logit + ITC similarity, as LAVIS does) and a second result row is added whose protocol says so
    and which records the number of pairs scored.
    """
    name = model_name or getattr(model, "name", type(model).__name__)
    feats = image_features(model, manifest, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    if len(feats.image_ids) == 0:
        raise ValueError(f"{dataset}: no image of the manifest could be decoded ({len(feats.skipped)} skipped)")
    texts, owner = captions_table(manifest, feats.image_ids)
    if not texts:
        raise ValueError(f"{dataset}: the images have no captions, retrieval needs them")
    txt = text_features(model, texts, cache_dir=cache_dir, progress=progress)
    with torch.inference_mode():
        sim = model.similarity(feats.embeddings, txt).float().cpu()
    meta = {"model": name, "dataset": dataset, "n_images": len(feats.image_ids), "n_texts": len(texts)}
    run = RetrievalRun(name, dataset, sim, list(feats.image_ids), texts, owner, skipped=feats.skipped)
    run.results.append({**meta, "protocol": protocol, "stage": "itc", "hub_id": _checkpoint(model),
                        **recall_at_k(sim, owner, ks)})
    if cross_encoder is not None:
        proto = rerank_protocol or rerank_label(protocol, rerank_k, getattr(cross_encoder, "name", "ITM"), "itm+itc")
        add_rerank(run, cross_encoder, manifest, name, proto, rerank_k, ks, progress, cache_dir=cache_dir)
    return run


def rerank_label(first_stage: str, k: int, scorer: str, combine: str) -> str:
    """The protocol of a re-ranked row: what ranked first, how deep, who re-scored, and how the score is made
    (``"itm"``: the ITM score alone; ``"itm+itc"``: ITM + ITC, LAVIS's BLIP / BLIP-2 protocol)."""
    score = {"itm": "ITM score alone", "itm+itc": "ITM + ITC"}[combine]
    return f"{first_stage} top-{k} → {scorer} rerank ({score})"


def _checkpoint(model) -> str | None:
    """The hub id / folder a model was loaded from (what published numbers are joined on)."""
    name = getattr(model, "name", None)
    return str(name) if name is not None else None


def add_rerank(run: RetrievalRun, cross_encoder, manifest: pd.DataFrame, model_name: str, protocol: str,
               k: int = 128, ks: Sequence[int] = (1, 5, 10), progress: bool = True, combine: str = "itm+itc",
               cache_dir=None) -> dict:
    """Re-rank the top-``k`` of ``run``'s ITC similarities with ``cross_encoder`` and append the result row
    (``model_name``, ``protocol``, the pair count, ``combine``) to ``run.results``; returns that row.

    ``combine``: ``"itm+itc"`` (ITM logit + ITC similarity: LAVIS's BLIP / BLIP-2 protocol, for a model
    re-ranking its *own* ITC top-k) or ``"itm"`` (the cross encoder's score alone: a pure cross encoder such
    as ViLT, whose scores must not be mixed with another model's cosine). The pair scores are cached in
    ``cache_dir`` (default: vlnb's feature cache): pairs chapter 2 already scored are read back.
    """
    pixels = pixel_loader(cross_encoder.preprocess, manifest, run.image_ids)
    reranked, n_pairs = rerank_similarity(run.similarity, cross_encoder, pixels, run.texts, k=k, combine=combine,
                                          progress=progress, cache_dir=cache_dir,
                                          images_key=pixels_key(cross_encoder.preprocess, manifest, run.image_ids))
    row = {"model": model_name, "dataset": run.dataset, "n_images": len(run.image_ids), "n_texts": len(run.texts),
           "protocol": protocol, "stage": "itm", "hub_id": _checkpoint(cross_encoder), "rerank_k": int(k),
           "combine": combine, "n_pairs": n_pairs, **reranked_recall(reranked, run.text_to_image, ks)}
    run.results.append(row)
    return row


# ---------------------------------------------------------------------------------------------- zero-shot
@dataclass
class ZeroShotTask:
    """Class names, prompt templates and targets of one data set's zero-shot classification."""

    dataset: str
    class_names: list[str]
    templates: tuple[str, ...]
    targets: dict[str, object]  #: variant name -> targets accepted by classification_metrics


def zeroshot_task(dataset: str, manifest: pd.DataFrame, coco_templates: str | Sequence[str] = "openai_imagenet") -> ZeroShotTask:
    """The zero-shot task of a manifest, chosen by its provenance (world / coco / cifar100).

    world: classify the shapes (``any object`` = any shape in the scene counts; ``primary`` = the
    largest object's shape). coco: the 80 categories (``any label`` = any of the image's categories
    counts, as several are present; ``primary`` = largest-area category). cifar100: the 100 classes.
    """
    kind = str(manifest.attrs.get("vlnb", {}).get("source", dataset)).lower()
    if "world" in kind or "primary_shape" in manifest.columns:
        names = list(WORLD_SHAPES)
        return ZeroShotTask(dataset, names, WORLD_TEMPLATES, {
            "any object": multilabel_targets(manifest["shapes"], names),
            "primary": class_indices(manifest["primary_shape"], names),
        })
    if "primary_category" in manifest.columns:
        names = coco_category_names(manifest)
        tpl = get_templates(coco_templates) if isinstance(coco_templates, str) else tuple(coco_templates)
        return ZeroShotTask(dataset, names, tpl, {
            "any label": multilabel_targets(manifest["labels"], names),
            "primary": class_indices(manifest["primary_category"], names),
        })
    if "cifar" in kind or dataset.startswith("cifar"):
        names = list(CIFAR100_CLASSNAMES)  # OpenAI's prompt names ("aquarium fish" for the label "aquarium_fish")
        return ZeroShotTask(dataset, names, get_templates("cifar"), {"label": cifar100_targets(manifest, dataset)})
    raise ValueError(f"no zero-shot task is defined for data set {dataset!r} (source {kind!r})")


def cifar100_targets(manifest: pd.DataFrame, dataset: str = "cifar100") -> np.ndarray:
    """Class index (0..99, the official CIFAR-100 order) of every image: the loader's ``fine_label_id`` when it
    is there (labels by index, so a copy's misspelt names cannot drop images), else the label name mapped to
    the official names. An image whose label matches no class is a ValueError naming it, never a target -1
    that silently leaves the accuracy's denominator."""

    if "fine_label_id" in manifest.columns:
        t = pd.to_numeric(manifest["fine_label_id"], errors="coerce").to_numpy(dtype=float)
    else:
        pos = {n: i for i, n in enumerate(cifar100_fine_names())}
        t = np.asarray([pos.get(CIFAR100_ALIASES.get(str(labs[0]), str(labs[0])).replace(" ", "_"), np.nan)
                        if len(labs) else np.nan for labs in manifest["labels"]], dtype=float)
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0) | (t >= len(CIFAR100_CLASSNAMES)))
    if len(bad):
        r = int(bad[0])
        raise ValueError(f"{dataset}: {len(bad)} image(s) have a label that is no CIFAR-100 class, e.g. image "
                         f"{manifest['image_id'].iloc[r]!r} with labels {list(manifest['labels'].iloc[r])}")
    return t.astype(np.int64)


def coco_category_names(manifest: pd.DataFrame) -> list[str]:
    """The 80 COCO category names when the instances file is reachable, else those present in ``labels``."""
    spec = manifest.attrs.get("vlnb", {}).get("annotations") or {}
    files = spec.get("instances") or []
    files = [files] if isinstance(files, str) else files
    names: set[str] = set()

    for f in files:
        try:
            names |= {c["name"] for c in json.loads(Path(f).read_text()).get("categories", [])}
        except OSError:
            pass
    if not names:
        names = {lab for labs in manifest["labels"] for lab in labs}
    return sorted(names)


def class_indices(values, names: list[str]) -> np.ndarray:
    pos = {n: i for i, n in enumerate(names)}
    return np.asarray([pos.get(v, -1) for v in values], dtype=np.int64)


def evaluate_zeroshot(
    model,
    manifest: pd.DataFrame,
    dataset: str,
    model_name: str | None = None,
    task: ZeroShotTask | None = None,
    batch_size: int = 64,
    cache_dir=None,
    progress: bool = True,
) -> list[dict]:
    """Zero-shot top-1/top-5 accuracy and mean per-class recall (proportions) for every target variant."""
    name = model_name or getattr(model, "name", type(model).__name__)
    task = task or zeroshot_task(dataset, manifest)
    feats = image_features(model, manifest, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    keep = manifest_rows(manifest, feats.image_ids)
    clf = zeroshot_classifier(model, task.class_names, task.templates, progress=progress)
    scores = zeroshot_scores(model, feats.embeddings, clf)
    rows = []
    for variant, targets in task.targets.items():
        t = targets[keep]
        ks = tuple(k for k in (1, 5) if k <= len(task.class_names))
        m = classification_metrics(scores, t, ks=ks)
        rows.append({"model": name, "dataset": dataset, "protocol": "zero-shot", "variant": variant,
                     "n_classes": len(task.class_names), "n_templates": len(task.templates),
                     "chance_top1": zeroshot_chance(t, len(task.class_names))["top1"], **m})
    return rows


def manifest_rows(manifest: pd.DataFrame, image_ids: Sequence) -> np.ndarray:
    pos = {iid: i for i, iid in enumerate(manifest["image_id"])}
    return np.asarray([pos[i] for i in image_ids], dtype=np.int64)


def tidy_retrieval(runs: Sequence[RetrievalRun]) -> pd.DataFrame:
    """One row per (model, dataset, protocol, direction, k) with the chance level beside the recall (exact,
    :func:`vlnb.eval.chance.recall_chance` of each run's own images and captions)."""
    parts = []
    for run in runs:
        df = retrieval_table(run.results)
        if len(df):
            ch = recall_chance(run.text_to_image, len(run.image_ids), sorted(set(df["k"])))
            df["chance"] = [ch[f"{d}_R@{k}"] for d, k in zip(df["direction"], df["k"])]
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else retrieval_table([])


def unknown_word_rate(model, texts: Sequence[str]) -> float:
    """Share of words a word-level tokenizer maps to ``<unk>`` (0 for subword tokenizers, which read anything)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not hasattr(tok, "split") or not hasattr(tok, "get_vocab"):
        return 0.0
    vocab = tok.get_vocab()
    words = [w for t in texts for w in tok.split(t)]
    return float(np.mean([w not in vocab for w in words])) if words else 0.0
