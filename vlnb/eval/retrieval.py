"""Image-text retrieval metrics: Recall@K in both directions, exact and fast.

Protocol (the one CLIP_benchmark and the COCO/Flickr30k Karpathy-split papers use):

- ``similarity`` is an ``(n_images, n_texts)`` score matrix; ``text_to_image[j]`` is the image of text ``j``
  (each image has zero or more captions, typically 5).
- **text -> image**: text ``j`` is a hit at ``k`` when its one image is among the ``k`` best-scoring images.
- **image -> text**: image ``i`` is a hit at ``k`` when *any* of its captions is among the ``k`` best-scoring
  texts. Images with no caption cannot be retrieved-for and are **excluded** from the image -> text average.

Ties never inflate a score. Ranks are *pessimistic* (0-based; hit at ``k`` iff ``rank < k``):

- t2i rank of text ``j`` = number of *other* images whose score is ``>=`` the score of its own image;
- i2t rank of image ``i`` = number of *non-caption* texts whose score is ``>=`` the best score among its own
  captions. (Equivalently: sort the row best-first, put negatives before positives within equal scores, and
  take the position of the first positive. Other captions of the same image never push a caption down.)

So a constant similarity matrix scores at (or below) chance, never 100%. The computation is one chunked
pass of vectorised comparisons against the target scores: O(N*M) work, O(chunk*M) extra memory, no sort
of the matrix (5k x 25k float32: ~0.25 s on 2 CPU threads; see ``benchmarks/retrieval_speed.py``).
Works on numpy arrays and torch tensors (CPU or GPU).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..timing import timer

DIRECTIONS = ("i2t", "t2i")
_KEY = re.compile(r"^(i2t|t2i)_R@(\d+)$")
# elements compared per block: small blocks stay in CPU cache (measured fastest); GPUs prefer big ones
_CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 26}


def as_tensor(x) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))


def check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return tuple(int(k) for k in ks)


def _prepare(similarity, text_to_image) -> tuple[torch.Tensor, torch.Tensor]:
    sim = as_tensor(similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D (n_images, n_texts), got shape {tuple(sim.shape)}")
    if not sim.is_floating_point():
        sim = sim.to(torch.float64)
    n_images, n_texts = sim.shape
    t2i = as_tensor(text_to_image)
    if t2i.ndim != 1 or t2i.is_floating_point() or t2i.dtype == torch.bool:
        raise ValueError(
            f"text_to_image must be a 1-D integer array (one image index per text), got "
            f"shape {tuple(t2i.shape)} dtype {t2i.dtype}"
        )
    if len(t2i) != n_texts:
        raise ValueError(
            f"shape mismatch: similarity has {n_texts} text columns but text_to_image has {len(t2i)} entries "
            "(similarity must be (n_images, n_texts))"
        )
    if n_images == 0 or n_texts == 0:
        raise ValueError(f"similarity is empty (shape {tuple(sim.shape)}): nothing to retrieve")
    t2i = t2i.to(device=sim.device, dtype=torch.long)
    lo, hi = int(t2i.min()), int(t2i.max())
    if lo < 0 or hi >= n_images:
        bad = int(torch.nonzero((t2i < 0) | (t2i >= n_images))[0])
        raise ValueError(
            f"text_to_image out of range: text {bad} points to image {int(t2i[bad])} but there are "
            f"{n_images} images (valid: 0..{n_images - 1})"
        )
    if torch.isnan(sim).any():
        rows, cols = torch.nonzero(torch.isnan(sim), as_tuple=True)
        raise ValueError(
            f"similarity contains {len(rows)} NaN value(s), e.g. at (image {int(rows[0])}, text {int(cols[0])}); "
            "NaN scores cannot be ranked"
        )
    return sim, t2i


@timer("metrics")
def retrieval_ranks(similarity, text_to_image, chunk_size: int | None = None) -> dict[str, np.ndarray]:
    """Pessimistic 0-based ranks of every query (see the module docstring).

    Returns ``{"i2t": ranks of the images that have >=1 caption, "i2t_images": those images' indices,
    "t2i": rank of every text}``. ``chunk_size`` (image rows per block) defaults to ~0.5M elements a block on CPU.
    """
    sim, t2i = _prepare(similarity, text_to_image)
    n_images, n_texts = sim.shape
    cols = torch.arange(n_texts, device=sim.device)
    target = sim[t2i, cols]  # score of each text with its own image
    best = torch.full((n_images,), float("-inf"), dtype=sim.dtype, device=sim.device)
    best = best.scatter_reduce(0, t2i, target, reduce="amax", include_self=True)  # best own-caption score
    n_captions = torch.bincount(t2i, minlength=n_images)
    # own captions reaching the best score are exactly those equal to it; they are not competitors
    n_pos_at_best = torch.zeros(n_images, dtype=torch.long, device=sim.device)
    n_pos_at_best.index_add_(0, t2i, (target >= best[t2i]).long())

    chunk = chunk_size or max(1, _CHUNK_ELEMENTS.get(sim.device.type, 1 << 19) // n_texts)
    t2i_ge = torch.zeros(n_texts, dtype=torch.long, device=sim.device)
    i2t_ge = torch.empty(n_images, dtype=torch.long, device=sim.device)
    for s in range(0, n_images, chunk):
        block = sim[s : s + chunk]
        t2i_ge += (block >= target).sum(0)
        i2t_ge[s : s + chunk] = (block >= best[s : s + chunk, None]).sum(1)
    has_caption = n_captions > 0
    return {
        "i2t": (i2t_ge - n_pos_at_best)[has_caption].cpu().numpy(),
        "i2t_images": torch.nonzero(has_caption).flatten().cpu().numpy(),
        "t2i": (t2i_ge - 1).cpu().numpy(),  # the own image always counts itself once
    }


def recall_from_ranks(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k in percent from 0-based pessimistic ranks: ``100 * mean(rank < k)`` for each ``k``."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks given: recall is undefined for zero queries")
    return {k: float(100.0 * np.mean(ranks < k)) for k in check_ks(ks)}


def mean_rank(ranks) -> float:
    """Mean rank, 1-based (the convention papers report as 'MeanR')."""
    return float(np.mean(np.asarray(ranks)) + 1.0)


def median_rank(ranks) -> float:
    """Median rank, 1-based (the convention papers report as 'MedR')."""
    return float(np.median(np.asarray(ranks)) + 1.0)


@timer("metrics")
def recall_at_k(
    similarity,
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    *,
    return_ranks: bool = False,
    chunk_size: int | None = None,
):
    """Recall@K (percent) for image->text and text->image retrieval.

    ``similarity``: ``(n_images, n_texts)`` numpy array or torch tensor (any device, no NaN);
    ``text_to_image[j]``: index of the image text ``j`` describes (see
    :func:`vlnb.data.manifest.texts_and_targets`).

    Returns ``{"i2t_R@1": ..., "i2t_R@5": ..., "i2t_R@10": ..., "t2i_R@1": ..., ...}`` as floats in
    [0, 100]. Image->text averages over images that have at least one caption (images with none are
    excluded); ranks are pessimistic under ties (module docstring). With ``return_ranks=True`` returns
    ``(metrics, ranks)`` where ``ranks`` is :func:`retrieval_ranks`' dict (0-based per-query ranks, for
    bootstrap confidence intervals via :func:`recall_from_ranks`).
    """
    ks = check_ks(ks)
    ranks = retrieval_ranks(similarity, text_to_image, chunk_size=chunk_size)
    out = {}
    for d in DIRECTIONS:
        for k, v in recall_from_ranks(ranks[d], ks).items():
            out[f"{d}_R@{k}"] = v
    return (out, ranks) if return_ranks else out


def retrieval_table(results: Sequence[Mapping]) -> pd.DataFrame:
    """Long ("tidy") table from a list of result dicts.

    Each dict holds ``model`` and ``dataset`` (required), optionally ``protocol`` and any other metadata,
    plus metric keys ``"{i2t|t2i}_R@{k}"`` (e.g. a :func:`recall_at_k` result merged with metadata).
    Returns columns ``model, dataset, protocol, direction, k, recall`` (+ the extra metadata), one row
    per metric.
    """
    rows = []
    for n, res in enumerate(results):
        missing = [c for c in ("model", "dataset") if c not in res]
        if missing:
            raise KeyError(f"result #{n} lacks {missing} (keys: {sorted(res)})")
        meta = {key: v for key, v in res.items() if not _KEY.match(str(key))}
        meta.setdefault("protocol", "")
        metrics = [(_KEY.match(str(key)), v) for key, v in res.items() if _KEY.match(str(key))]
        if not metrics:
            raise ValueError(f"result #{n} has no '{{i2t|t2i}}_R@k' metric keys (keys: {sorted(res)})")
        rows += [{**meta, "direction": m.group(1), "k": int(m.group(2)), "recall": float(v)} for m, v in metrics]
    front = ["model", "dataset", "protocol", "direction", "k", "recall"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=front)
    return df[front + [c for c in df.columns if c not in front]]
