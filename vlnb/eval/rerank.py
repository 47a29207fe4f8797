"""Cross-encoder retrieval by re-ranking a dual encoder's top-k (the BLIP / BLIP-2 / LAVIS protocol).

A cross encoder (ITM head, ViLT) scores one (image, text) pair per forward pass, so scoring all N*M
pairs is out of reach. As in LAVIS' ``compute_sim_matrix``:

- image -> text: for every image, its ``k`` best texts under the dual (ITC) similarity are re-scored;
- text -> image: for every text, its ``k`` best images are re-scored;
- the new score is the ITM score plus the ITC similarity (``combine="itm+itc"``, LAVIS' choice) or the ITM
  score alone (``combine="itm"``); every other entry is ``-inf`` (LAVIS uses -100), i.e. below all
  re-ranked candidates.

The two directions get separate matrices, each usable with :func:`vlnb.eval.recall_at_k` unchanged
(:func:`reranked_recall` takes the right half of each). A pair that is a candidate in both directions is
scored once, and so is an image with a text that occurs twice (the world's test set writes a fifth of its
captions more than once: the same pair, the same score); the returned count of distinct pairs scored (at most
``(N + M) * k``) is the cost. Recall@K is meaningful for
``K <= k`` only. Ties in the dual similarity at the k-th place are cut by ``torch.topk``'s order.

With ``images_key`` (:func:`vlnb.eval.features.pixels_key`: which images, preprocessed how, perturbed how) the
ITM scores of the pairs are cached like features (kind ``"itm_pairs"``, keyed by the cross encoder's weight
fingerprint, the images, the texts and the exact pair set): a later re-rank of the same pairs -- chapter 4
re-ranking a model that chapter 2 already evaluated on the same test set, a sweep's second run -- reads them
back. A different top-k (another first stage, another ``k``, other images) is another pair set and is scored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

from ..progress import tqdm
from ..timing import timer
from .features import autocast_for, cached_tensor, compute_precision, model_device, texts_digest
from .retrieval import DIRECTIONS, as_tensor, recall_at_k

COMBINE = ("itm+itc", "itm")


def _pixel_loader(images, n_images: int) -> Callable[[list[int]], torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if len(images) != n_images:
            raise ValueError(f"images has {len(images)} rows but the similarity matrix has {n_images} images")
        return lambda idx: images[idx]
    if callable(images):
        return images
    raise TypeError(
        "images must be a preprocessed pixel tensor (N, 3, H, W) or a callable "
        "list[image index] -> (B, 3, H, W) pixel tensor"
    )


@timer("encoding")
def score_pixel_text_pairs(cross_encoder, load, texts, img_idx, txt_idx, batch_size, progress) -> torch.Tensor:
    device, out = model_device(cross_encoder), []
    starts = range(0, len(img_idx), batch_size)
    if progress:

        starts = tqdm(starts, desc="re-ranking pairs", leave=False)
    with torch.inference_mode(), autocast_for(cross_encoder):
        for s in starts:
            ii, tt = img_idx[s : s + batch_size], txt_idx[s : s + batch_size]
            uniq, inv = torch.unique(ii, return_inverse=True)  # load each image once per batch
            pixels = load(uniq.tolist())
            if len(pixels) != len(uniq):
                raise ValueError(f"the image loader returned {len(pixels)} images for {len(uniq)} indices")
            batch_texts = [texts[j] for j in tt.tolist()]
            if hasattr(cross_encoder, "score_indexed"):  # encodes each distinct image once (BLIP/BLIP-2 ITM)
                scores = cross_encoder.score_indexed(pixels.to(device), inv.to(device), batch_texts)
            else:
                scores = cross_encoder.score(pixels.to(device)[inv.to(device)], batch_texts)
            if scores.shape != (len(ii),):
                raise ValueError(
                    f"{type(cross_encoder).__name__}.score must return one score per pair, shape ({len(ii)},); "
                    f"got {tuple(scores.shape)}"
                )
            out.append(scores.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def rerank_similarity(
    dual_similarity,
    cross_encoder,
    images,
    texts: Sequence[str],
    k: int = 128,
    batch_size: int = 64,
    combine: str = "itm+itc",
    progress: bool = True,
    images_key: str | None = None,
    cache_dir=None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Re-rank the dual encoder's top-``k`` candidates with ``cross_encoder.score``.

    ``dual_similarity``: ``(N images, M texts)`` ITC similarities; ``images``: the preprocessed pixels of
    the N images as a tensor ``(N, 3, H, W)``, or a callable taking a list of image indices and returning
    their ``(B, 3, H, W)`` pixels (for data sets too big to hold in memory); ``texts``: the M texts.

    Returns ``({"i2t": (N, M), "t2i": (N, M)}, n_pairs)``: float32 CPU matrices (re-ranked scores where
    scored, ``-inf`` elsewhere) and the number of distinct (image, text) pairs scored.

    ``images_key``: what ``images`` are (:func:`vlnb.eval.features.pixels_key`); with it, and a cross encoder that
    has a ``fingerprint()``, the pair scores are cached in ``cache_dir`` (default: vlnb's feature cache) and read
    back by a later call that scores the same pairs (see the module docstring). The caller vouches for the key:
    pixels that are not what it names would read back another set's scores.
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sim = as_tensor(dual_similarity).float().cpu()
    if sim.ndim != 2:
        raise ValueError(f"dual_similarity must be (n_images, n_texts), got shape {tuple(sim.shape)}")
    n, m = sim.shape
    if len(texts) != m:
        raise ValueError(f"{len(texts)} texts but dual_similarity has {m} text columns")
    if torch.isnan(sim).any():
        raise ValueError("dual_similarity contains NaN")
    load = _pixel_loader(images, n)

    top_texts = sim.topk(min(k, m), dim=1).indices  # (N, k): candidates of each image
    top_images = sim.topk(min(k, n), dim=0).indices  # (k, M): candidates of each text
    flat = {
        "i2t": (torch.arange(n)[:, None] * m + top_texts).flatten(),
        "t2i": (top_images * m + torch.arange(m)[None, :]).flatten(),
    }
    candidates = torch.cat([flat["i2t"], flat["t2i"]])
    first: dict[str, int] = {}
    same_text = torch.tensor([first.setdefault(t, j) for j, t in enumerate(texts)], dtype=torch.long)
    # one pair per (image, distinct text): a caption written twice for an image's neighbours is scored once
    pairs, inverse = torch.unique(candidates // m * m + same_text[candidates % m], return_inverse=True)
    def score() -> torch.Tensor:
        return score_pixel_text_pairs(cross_encoder, load, list(texts), pairs // m, pairs % m, batch_size, progress)

    if images_key is not None and callable(getattr(cross_encoder, "fingerprint", None)):
        payload = {"model": cross_encoder.fingerprint(), "images": images_key, "n_images": n,
                   "texts": texts_digest(list(texts)), "n_texts": m, "n_pairs": len(pairs),
                   "pairs": hashlib.sha256(pairs.numpy().tobytes()).hexdigest(), "precision": compute_precision(cross_encoder)}
        scores = cached_tensor("itm_pairs", payload, cache_dir, lambda: (score(), {}))[0]
    else:
        scores = score()
    scores = scores[inverse]  # one per candidate, in the order of `candidates`
    if combine == "itm+itc":
        scores = scores + sim.flatten()[candidates]
    out, offset = {}, 0
    for d in DIRECTIONS:
        mat = torch.full((n, m), float("-inf"))
        mat.view(-1)[flat[d]] = scores[offset : offset + len(flat[d])]
        offset += len(flat[d])
        out[d] = mat
    return out, len(pairs)


def reranked_recall(reranked: dict[str, torch.Tensor], text_to_image, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K (percent) of a :func:`rerank_similarity` result: i2t from its i2t matrix, t2i from its t2i one."""
    out = {}
    for d in DIRECTIONS:
        res = recall_at_k(reranked[d], text_to_image, ks)
        out.update({key: v for key, v in res.items() if key.startswith(d)})
    return out
