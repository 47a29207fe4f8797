"""The CLIP contrastive loss: symmetric InfoNCE over a batch of matched (image, text) pairs.

For ``N`` pairs with L2-normalised embeddings ``u_i`` (images) and ``v_j`` (texts) and temperature
``tau``, the logits are ``s * u_i . v_j`` with ``s = exp(logit_scale) = 1 / tau`` (clamped at 100 as
in CLIP), and the loss is the mean of two cross-entropies: each image must pick its own text among
the ``N`` texts (rows) and each text its own image among the ``N`` images (columns). Every other
sample in the batch is a negative, so the batch size *is* the number of negatives: with a batch of
2 each sample has a single negative and the task is nearly trivial (see :mod:`vlnb.train.trainer`).

Across processes (:func:`contrastive_loss`) the embeddings of all ranks are gathered *with*
gradient, so every rank computes the loss over the global batch and the averaged gradients equal the
single-process gradients of that global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, world_size

#: CLIP clamps the learned temperature so that the logit scale never exceeds 100 (tau >= 0.01).
MAX_LOGIT_SCALE = 100.0


def _as_log_scale(logit_scale, like: torch.Tensor) -> torch.Tensor:
    if isinstance(logit_scale, torch.Tensor):
        return logit_scale.to(like.device, torch.float32)
    return torch.tensor(float(logit_scale), device=like.device, dtype=torch.float32)


def clip_logits(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale, max_scale: float = MAX_LOGIT_SCALE
) -> torch.Tensor:
    """``(N, M)`` logits ``min(exp(logit_scale), max_scale) * image_emb @ text_emb.T`` in float32.

    ``logit_scale`` is the *log* of the scale (CLIP's parameter, initialised at ``log(1/0.07)``).
    Multi-query image embeddings ``(N, Q, D)`` (a Q-Former's, BLIP-2's ITC) score each pair by the **max over
    the Q queries** of ``query . text``, differentiably (the gradient flows to the query that wins).
    """
    if image_emb.ndim not in (2, 3) or text_emb.ndim != 2:
        raise ValueError(
            f"clip loss expects 2-D embeddings (batch, dim), or (batch, queries, dim) images, got image "
            f"{tuple(image_emb.shape)} and text {tuple(text_emb.shape)}"
        )
    if image_emb.shape[-1] != text_emb.shape[1]:
        raise ValueError(
            f"image and text embeddings must share the embedding dim, got {image_emb.shape[-1]} "
            f"and {text_emb.shape[1]}"
        )
    scale = _as_log_scale(logit_scale, image_emb).exp().clamp(max=max_scale)
    if image_emb.ndim == 3:
        return scale * torch.einsum("nqd,md->nqm", image_emb.float(), text_emb.float()).amax(dim=1)
    return scale * (image_emb.float() @ text_emb.float().T)


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale,
    max_scale: float = MAX_LOGIT_SCALE,
    neg_text_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of ``N`` matched pairs (row ``i`` of both inputs is pair ``i``).

    ``(CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2`` with :func:`clip_logits`; the embeddings
    are used as given (the models return them L2-normalised).

    ``neg_text_emb`` (``(M, D)``, NegCLIP, Yuksekgonul et al. 2023): extra *text* negatives -- e.g. each
    caption with two attributes swapped -- appended to the texts every image chooses among, so the
    image->text cross-entropy runs over ``N + M`` texts; the text->image direction is unchanged (a foil has
    no image of its own).
    """
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(
            f"clip loss needs as many texts as images (matched pairs), got {image_emb.shape[0]} "
            f"images and {text_emb.shape[0]} texts"
        )
    if image_emb.shape[0] < 2:
        raise ValueError(f"clip loss needs at least 2 pairs (one negative each), got {image_emb.shape[0]}")
    logits = clip_logits(image_emb, text_emb, logit_scale, max_scale)
    labels = torch.arange(logits.shape[0], device=logits.device)
    if neg_text_emb is None or len(neg_text_emb) == 0:
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    i2t = torch.cat([logits, clip_logits(image_emb, neg_text_emb, logit_scale, max_scale)], dim=1)
    return (F.cross_entropy(i2t, labels) + F.cross_entropy(logits.T, labels)) / 2


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale,
    max_scale: float = MAX_LOGIT_SCALE,
    group=None,
    neg_text_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`clip_loss` over the *global* batch: in a process group the local embeddings of every
    rank are all-gathered with gradient first (rank order), otherwise it is plain :func:`clip_loss`.

    Every rank then holds the same loss value; the gather's backward sums the gradient that all ranks
    send to a rank's own embeddings (``world_size`` identical copies), and averaging the parameter
    gradients over ranks (:func:`vlnb.train.distributed.average_gradients`) turns that back into
    exactly the single-process gradient of the global batch.

    ``neg_text_emb``: NegCLIP's extra text negatives (see :func:`clip_loss`); one process only, since ranks
    may hold different numbers of them.
    """
    if world_size(group) > 1:
        if neg_text_emb is not None:
            raise NotImplementedError("extra text negatives (NegCLIP) are supported in one process only, not "
                                      "across a process group")
        image_emb, text_emb = gather_with_grad(image_emb, group), gather_with_grad(text_emb, group)
    return clip_loss(image_emb, text_emb, logit_scale, max_scale, neg_text_emb=neg_text_emb)


def chance_loss(n: int) -> float:
    """The loss of an untrained model that scores all pairs alike: ``log(n)`` for a batch of ``n``."""
    return math.log(n)
