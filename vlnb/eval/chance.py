"""Chance levels: the expected score of a uniformly random ranking, exact, for every metric the book reports.

One definition, used by every chapter, so the same test set always prints the same chance level.

- **Retrieval Recall@K** (percent; the protocol of :mod:`vlnb.eval.retrieval`). A random ranking is a
  uniformly random permutation of the gallery for every query.

  - text -> image: each text has exactly one image among the ``N`` images, so its chance is
    ``min(K, N) / N``.
  - image -> text: an image with ``c`` of the ``M`` captions is a hit when *any* of them lands in the top
    ``K``: ``1 - C(M - c, K) / C(M, K)`` (hypergeometric), averaged over the images that have a caption
    (images without one are excluded from image -> text, as in the metric). With uneven caption counts this
    is *not* the value at the mean count (the function is concave in ``c``).

- **Zero-shot top-k accuracy** (a proportion, like :func:`vlnb.eval.classification_metrics`). A random
  classifier ranks the ``C`` classes uniformly at random: a row with ``L`` labels is a hit at ``k`` with
  probability ``1 - C(C - L, k) / C(C, k)`` -- ``k / C`` for single-label targets, and for multi-label
  targets ("any label counts") ``L / C`` at top-1 -- averaged over the rows that carry a label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from .retrieval import check_ks
from .zeroshot import target_matrix


def _hit_probability(m: int, c: np.ndarray, k: int) -> np.ndarray:
    """``1 - C(m - c, k) / C(m, k)``: at least one success among ``k`` draws without replacement from ``m``
    items with ``c`` successes, element-wise over ``c``; computed in exact integer arithmetic (one value per
    distinct ``c``) and rounded once, so ``k / m`` for ``c = 1`` is the float nearest to the true fraction."""
    k = min(k, m)
    total = math.comb(m, k)
    hit = {int(v): float(Fraction(total - math.comb(m - int(v), k), total)) for v in np.unique(c)}
    return np.asarray([hit[int(v)] for v in c], dtype=np.float64)


def recall_chance_from_counts(caption_counts, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Exact Recall@K (percent) of a random ranking from the number of captions of each gallery image
    (zeros allowed: such an image is still a text -> image candidate). Keys ``i2t_R@k`` and ``t2i_R@k``."""
    caps = np.asarray(caption_counts, dtype=np.int64)
    if caps.ndim != 1 or caps.size == 0 or (caps < 0).any():
        raise ValueError(f"caption_counts must be a non-empty 1-D array of counts >= 0, got {caps!r}")
    n_images, n_texts = len(caps), int(caps.sum())
    if n_texts == 0:
        raise ValueError("no image has a caption: retrieval chance is undefined")
    ks = check_ks(ks)
    has = caps[caps > 0]
    out = {f"i2t_R@{k}": float(100.0 * np.mean(_hit_probability(n_texts, has, k))) for k in ks}
    out.update({f"t2i_R@{k}": float(100.0 * min(k, n_images) / n_images) for k in ks})
    return out


def recall_chance(text_to_image, n_images: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Exact Recall@K (percent) of a random ranking for a retrieval problem given as :func:`vlnb.eval.recall_at_k`
    takes it: ``text_to_image[j]`` is the image (0..``n_images - 1``) of text ``j``."""
    t2i = np.asarray(text_to_image)
    if t2i.ndim != 1 or not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(f"text_to_image must be a 1-D integer array, got dtype {t2i.dtype} shape {t2i.shape}")
    if t2i.size and (t2i.min() < 0 or t2i.max() >= n_images):
        raise ValueError(f"text_to_image points outside 0..{n_images - 1}")
    return recall_chance_from_counts(np.bincount(t2i, minlength=n_images), ks)


def manifest_recall_chance(manifest, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """:func:`recall_chance_from_counts` of a manifest evaluated whole: one gallery image per row, all of its
    ``captions`` as queries."""
    return recall_chance_from_counts(manifest["captions"].map(len).to_numpy(), ks)


def zeroshot_chance(targets, n_classes: int, ks: Sequence[int] = (1,)) -> dict[str, float]:
    """Exact top-k accuracy (proportion in [0, 1]) of a uniformly random ranking of ``n_classes`` classes,
    for ``targets`` in any form :func:`vlnb.eval.classification_metrics` accepts (int labels with -1 = none,
    a boolean ``(N, C)`` matrix, label-index sets). Rows without a label are excluded (NaN when none has
    one). Keys ``top{k}``."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    ks = check_ks(ks)
    n = targets.shape[0] if hasattr(targets, "shape") else len(targets)
    labels = target_matrix(targets, n, n_classes).sum(axis=1)
    labels = labels[labels > 0]
    if labels.size == 0:
        return {f"top{k}": float("nan") for k in ks}
    return {f"top{k}": float(np.mean(_hit_probability(n_classes, labels, k))) for k in ks}


__all__ = ["manifest_recall_chance", "recall_chance", "recall_chance_from_counts", "zeroshot_chance"]
