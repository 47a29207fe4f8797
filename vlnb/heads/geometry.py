"""Geometry of an embedding space: alignment and uniformity (Wang & Isola 2020), the modality gap."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment ``E ||x_i - y_i||^alpha`` over matched rows of normalised ``x``, ``y`` (lower
    is better aligned; 0 when every pair coincides, 4 for antipodal pairs at ``alpha = 2``)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"alignment needs two (n, d) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    return float((x.float() - y.float()).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, max_points: int | None = 2000, seed: int = 0) -> float:
    """Wang & Isola's uniformity ``log E exp(-t ||x_i - x_j||^2)`` over distinct pairs of normalised rows
    (lower is more uniform; 0 when all points coincide). More than ``max_points`` rows: a seeded subsample."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"uniformity needs an (n >= 2, d) tensor, got {tuple(x.shape)}")
    if max_points is not None and len(x) > max_points:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=g)[:max_points]]
    d2 = torch.pdist(x.double(), p=2).pow(2)
    return float(torch.logsumexp(-t * d2, dim=0) - math.log(len(d2)))


def paired_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-text image embedding (M, D), per-image embedding (N, D))`` for geometry and PCA.

    2-D image embeddings are used as they are. Multi-query ``(N, Q, D)`` ones (BLIP-2's ITC) are reduced the
    way ITC scores them: for text ``j`` the query of its image that matches it best; for image ``i`` the query
    chosen by its first caption (the mean of the queries for images without a caption).
    """
    t2i = torch.as_tensor(np.asarray(text_to_image), dtype=torch.long)
    if image_emb.ndim == 2:
        return image_emb[t2i], image_emb
    q = torch.einsum("mqd,md->mq", image_emb[t2i], text_emb).argmax(dim=1)
    per_text = image_emb[t2i, q]
    per_image = F.normalize(image_emb.mean(dim=1), dim=-1)
    first = {}
    for j, i in enumerate(t2i.tolist()):
        first.setdefault(i, j)
    for i, j in first.items():
        per_image[i] = per_text[j]
    return per_text, per_image


def geometry(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image, seed: int = 0) -> dict[str, float]:
    """Alignment of matched pairs, uniformity of images and of texts, and the modality gap (distance between
    the image and text centroids, Liang et al. 2022) of normalised embeddings."""
    per_text, per_image = paired_embeddings(image_emb, text_emb, text_to_image)
    return {
        "alignment": alignment(per_text, text_emb),
        "uniformity_image": uniformity(per_image, seed=seed),
        "uniformity_text": uniformity(text_emb, seed=seed),
        "modality_gap": float((per_image.mean(0) - text_emb.mean(0)).norm()),
    }
