"""Zero-shot classification: prompt-ensemble classifiers, scores and pessimistic top-k metrics.

:func:`zeroshot_classifier` builds one text embedding per class as open_clip / OpenAI CLIP do: encode every
``template.format(class_name)``, L2-normalise each prompt embedding, average over templates, L2-normalise
again. :func:`zeroshot_scores` compares image embeddings with it through ``model.similarity`` (so
multi-query image embeddings such as BLIP-2's ``(N, 32, D)`` are max-pooled over queries, as LAVIS does).
:func:`classification_metrics` turns scores into top-k accuracy and mean per-class recall, with ties
ranked pessimistically (a tie between the true class and another counts against the true class).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..timing import timer
from .features import autocast_for
from .retrieval import check_ks

Template = str | Callable[[str], str]


def fill_template(template: Template, name: str) -> str:
    if callable(template):
        return template(name)
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return template.format(name)


@timer("encoding")
def zeroshot_classifier(
    model, class_names: Sequence[str], templates: Sequence[Template], batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """``(C, D)`` float32 class embeddings: per-prompt normalise, average over templates, renormalise.

    ``templates`` are ``"...{}..."`` strings (see :mod:`vlnb.eval.templates`) or callables ``name -> prompt``.
    """
    class_names, templates = list(class_names), list(templates)
    if not class_names or not templates:
        raise ValueError(f"need at least one class name and one template (got {len(class_names)} and {len(templates)})")
    prompts = [fill_template(t, c) for c in class_names for t in templates]
    with torch.inference_mode(), autocast_for(model):
        emb = model.encode_texts(prompts, batch_size=batch_size, progress=progress)
    emb = F.normalize(emb.float().cpu(), dim=-1).reshape(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def zeroshot_scores(model, image_emb, classifier: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``(N, C)`` float32 cosine scores of images vs class embeddings, via ``model.similarity``.

    ``image_emb`` may be ``(N, D)`` or multi-query ``(N, Q, D)`` (a :class:`FeatureSet` is accepted too);
    computed in blocks of ``batch_size`` images to bound memory for multi-query models.
    """
    image_emb = getattr(image_emb, "embeddings", image_emb)
    if image_emb.shape[-1] != classifier.shape[-1]:
        raise ValueError(
            f"embedding size mismatch: images have D={image_emb.shape[-1]}, classifier has D={classifier.shape[-1]}"
        )
    sim = getattr(model, "similarity", None) or (lambda a, b: a @ b.T)
    with torch.inference_mode():
        out = [sim(image_emb[s : s + batch_size], classifier).float().cpu() for s in range(0, len(image_emb), batch_size)]
    return torch.cat(out) if out else torch.empty((0, classifier.shape[0]))


# ---------------------------------------------------------------------------------------------- targets


def multilabel_targets(labels: Sequence[Sequence[str]], class_names: Sequence[str]) -> np.ndarray:
    """Boolean ``(N, C)`` matrix from per-image label names (e.g. a manifest's ``labels`` column)."""
    index = {c: k for k, c in enumerate(class_names)}
    out = np.zeros((len(labels), len(index)), dtype=bool)
    for n, labs in enumerate(labels):
        unknown = [lab for lab in labs if lab not in index]
        if unknown:
            raise KeyError(f"row {n}: label(s) {unknown} are not among the {len(index)} class names")
        out[n, [index[lab] for lab in labs]] = True
    return out


def primary_targets(objects: Sequence, class_names: Sequence[str]) -> np.ndarray:
    """Single-label targets: per image, the class with the largest total object area (-1 when none).

    Each element of ``objects`` is either a mapping ``category -> area`` or a sequence of objects with
    ``.category`` and ``.area`` (e.g. :class:`vlnb.data.ObjectAnnotation`); areas of one category are summed.
    Equal areas go to the class listed first in ``class_names``.
    """
    index = {c: k for k, c in enumerate(class_names)}
    out = np.full(len(objects), -1, dtype=np.int64)
    for n, objs in enumerate(objects):
        pairs = objs.items() if isinstance(objs, Mapping) else [(o.category, o.area) for o in objs]
        area = np.zeros(len(index))
        for cat, a in pairs:
            if cat not in index:
                raise KeyError(f"image {n}: category {cat!r} is not among the {len(index)} class names")
            if a is None:
                raise ValueError(f"image {n}: object of category {cat!r} has no area")
            area[index[cat]] += float(a)
        if pairs and len(area):
            out[n] = int(np.argmax(area))
    return out


def target_matrix(targets, n: int, c: int) -> np.ndarray:
    """Targets (int labels with -1 = none, a bool (N, C) matrix, or label-index sets) -> bool (N, C)."""
    if isinstance(targets, torch.Tensor):
        targets = targets.cpu().numpy()
    if isinstance(targets, np.ndarray) and targets.dtype == bool:
        if targets.shape != (n, c):
            raise ValueError(f"boolean targets must have shape (N, C) = {(n, c)}, got {targets.shape}")
        return targets
    if isinstance(targets, np.ndarray) and targets.ndim == 2:
        raise ValueError(f"a 2-D target matrix must be boolean (N, C), got dtype {targets.dtype}; use .astype(bool)")
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} rows of scores")
    out = np.zeros((n, c), dtype=bool)
    if n and isinstance(targets[0], (set, frozenset, list, tuple, np.ndarray)) and not np.isscalar(targets[0]):
        for i, t in enumerate(targets):
            idx = np.asarray(sorted(t) if isinstance(t, (set, frozenset)) else list(t), dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= c):
                raise ValueError(f"row {i}: label index out of range 0..{c - 1}: {sorted(set(idx.tolist()))}")
            out[i, idx] = True
        return out
    t = np.asarray(targets)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"single-label targets must be a 1-D integer array, got dtype {t.dtype} shape {t.shape}")
    if (t >= c).any() or (t < -1).any():
        raise ValueError(f"target label out of range (valid: 0..{c - 1}, or -1 for 'no label'): {t[(t >= c) | (t < -1)][:5]}")
    rows = np.nonzero(t >= 0)[0]
    out[rows, t[rows]] = True
    return out


@timer("metrics")
def classification_metrics(scores, targets, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy and mean per-class recall, as **proportions in [0, 1]**.

    ``scores``: ``(N, C)``. ``targets``: int labels ``(N,)`` (``-1`` = no label), a boolean ``(N, C)``
    matrix, or per-row collections of label indices (multi-label). A row is a hit at ``k`` when one of
    its labels ranks within the top ``k``; the rank of a row is the number of non-label classes scoring
    ``>=`` its best label (pessimistic under ties). Rows without any label are excluded; ``n`` counts the
    rows evaluated.

    Keys: ``top{k}`` for each ``k``, ``mean_per_class_recall`` (average over classes present in the
    targets of the top-1 hit rate among the rows carrying that class; for single-label targets this is
    the usual balanced accuracy), ``n``.
    """
    s = scores.detach().float().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s)")
    ks = check_ks(ks)
    y = target_matrix(targets, *s.shape)
    keep = y.any(axis=1)
    if not keep.any():
        raise ValueError("no row has a label: nothing to evaluate")
    s, y = s[keep], y[keep]
    best = np.where(y, s, -np.inf).max(axis=1, keepdims=True)
    rank = ((s >= best) & ~y).sum(axis=1)
    out = {f"top{k}": float(np.mean(rank < k)) for k in ks}
    hit1 = (rank == 0).astype(np.float64)
    per_class = (y.T.astype(np.float64) @ hit1)[y.any(axis=0)] / y.sum(axis=0)[y.any(axis=0)]
    out["mean_per_class_recall"] = float(per_class.mean())
    out["n"] = int(keep.sum())
    return out
