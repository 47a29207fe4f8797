"""Image-text matching (ITM) with hard negatives, and the training loop of the fusion models.

ITM is a binary classification of (image, text) pairs: match or not. Random pairs are too easy to teach
anything (a caption about a star next to an image of circles), so ALBEF/BLIP mine **hard negatives** from a
contrastive (ITC) model's in-batch similarities: for every image of a batch one text is drawn with
probability proportional to ``softmax(scale * sim(image, text))`` over the batch's texts, and for every text
one image likewise. A negative must really be one: the positive is never drawn, nor any text that is one of
the image's own captions (with several captions per image, as the world and COCO have 5, a batch can hold
another caption of the same image, or an identical caption of another image) -- :func:`negatives_mask` is
``True`` exactly where ``text j`` is *not* a caption of ``image i``, and sampling only ever picks there.
:func:`itm_pairs` adds one uniformly drawn in-batch negative per image ("random negatives"), so the head also
sees easy pairs; :func:`itm_loss` is the cross-entropy over the positives and all negatives.

:func:`train_fusion` trains the three models of :mod:`vlnb.models.fusion`:

- ViLT-like (:class:`~vlnb.models.fusion.ScratchViLT`): ITM only; its hard negatives come from a *given* dual
  encoder's similarities (``miner``, e.g. the trained scratch CLIP of chapter 2; its embeddings of every
  training image and caption are computed once);
- BLIP-like (:class:`~vlnb.models.fusion.ScratchBLIP`): ITC (the CLIP loss) + ITM, negatives mined from its
  own, current ITC similarities (detached), as ALBEF;
- Q-Former (:class:`~vlnb.models.fusion.ScratchQFormer`): ITC with the max over queries + ITM; the frozen
  tower's patch tokens are computed once for the whole training set.

Same optimiser recipe as :func:`vlnb.train.train_contrastive` (:func:`~vlnb.train.trainer.adamw`, warmup +
cosine, clipping, the temperature clamped) and the same reproducible data order and caption choice per
``(seed, epoch)``. :func:`evaluate_fusion` measures retrieval: the ITC ranking (own, or the miner's for ViLT)
and its top-``k`` re-ranked by the ITM head (:mod:`vlnb.eval.rerank`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data.manifest import subset, texts_and_targets
from ..eval.chance import manifest_recall_chance
from ..eval.features import pixels_key
from ..eval.rerank import rerank_similarity, reranked_recall
from ..eval.retrieval import recall_at_k
from ..models.base import CrossEncoder
from ..models.fusion import ScratchBLIP, ScratchQFormer, ScratchViLT
from ..progress import tqdm
from .checkpoint import seed_everything
from .loss import MAX_LOGIT_SCALE, clip_loss
from .schedule import warmup_cosine_scheduler
from .trainer import History, ImageDataset, TrainConfig, adamw, caption_choice, epoch_batches


# ---------------------------------------------------------------------------------------------- negatives
def _norm_caption(c: str) -> str:
    return " ".join(str(c).lower().split())


def negatives_mask(captions: Sequence[str], caption_sets: Sequence[Sequence[str]]) -> torch.Tensor:
    """``(B, B)`` bool: ``[i, j]`` True when batch text ``captions[j]`` is *not* one of image ``i``'s captions
    (``caption_sets[i]``, compared case- and whitespace-insensitively). The diagonal (the positives) is False."""
    if len(captions) != len(caption_sets):
        raise ValueError(f"{len(captions)} captions but {len(caption_sets)} caption sets")
    sets = [{_norm_caption(c) for c in s} for s in caption_sets]
    caps = [_norm_caption(c) for c in captions]
    valid = torch.tensor([[c not in s for c in caps] for s in sets], dtype=torch.bool)
    if len(caps) and valid.diagonal().any():
        bad = int(valid.diagonal().nonzero()[0])
        raise ValueError(f"batch row {bad}: its caption {captions[bad]!r} is not among its image's captions")
    return valid


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of non-negative ``weights`` (-1 for an all-zero row)."""
    ok = weights.sum(dim=1) > 0
    out = torch.full((len(weights),), -1, dtype=torch.long)
    if ok.any():
        out[ok] = torch.multinomial(weights[ok].double().cpu(), 1, generator=generator).squeeze(1)
    return out


def sample_hard_negatives(sim: torch.Tensor, valid: torch.Tensor, scale: float = 1.0,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's hard-negative sampling from ``(B, B)`` image-text similarities.

    Returns ``(text_for_image, image_for_text)``: for image ``i`` a text ``j`` drawn with probability
    ``softmax(scale * sim[i])`` restricted to ``valid[i]``; for text ``j`` an image drawn from
    ``softmax(scale * sim[:, j])`` restricted to ``valid[:, j]``. -1 where a row has no valid negative.
    """
    if sim.shape != valid.shape or sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim {tuple(sim.shape)} and valid {tuple(valid.shape)} must be the same (B, B)")
    logits = float(scale) * sim.detach().double().cpu()
    valid = valid.cpu().bool()
    return _draw(_masked_softmax(logits, valid), generator), _draw(_masked_softmax(logits.T, valid.T), generator)


def _masked_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax over the valid entries only (the max is taken over them, so a much larger invalid
    entry -- the positive -- cannot underflow the valid ones to zero); all-zero rows where none is valid."""
    masked = logits.masked_fill(~valid, float("-inf"))
    top = masked.max(dim=1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return torch.where(valid, (masked - top).exp(), torch.zeros_like(logits))


def sample_random_negatives(valid: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For every image a text drawn uniformly among its valid in-batch negatives (-1 when none)."""
    return _draw(valid.cpu().double(), generator)


def itm_pairs(sim: torch.Tensor, valid: torch.Tensor, scale: float = 1.0, random_negatives: bool = True,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ITM batch: ``(image index, text index, label)`` of the ``B`` positives (label 1), one hard text per
    image, one hard image per text and (``random_negatives``) one uniform text per image (label 0)."""
    b = len(sim)
    ar = torch.arange(b)
    t_for_i, i_for_t = sample_hard_negatives(sim, valid, scale, generator)
    img, txt = [ar], [ar]
    ok = t_for_i >= 0
    img.append(ar[ok]), txt.append(t_for_i[ok])
    ok = i_for_t >= 0
    img.append(i_for_t[ok]), txt.append(ar[ok])
    if random_negatives:
        r = sample_random_negatives(valid, generator)
        ok = r >= 0
        img.append(ar[ok]), txt.append(r[ok])
    img, txt = torch.cat(img), torch.cat(txt)
    labels = torch.zeros(len(img), dtype=torch.long)
    labels[:b] = 1
    return img, txt, labels


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean 2-way cross-entropy of ``(n, 2)`` ITM logits (column 1 = match) against 0/1 ``labels``."""
    if logits.ndim != 2 or logits.shape[1] != 2 or len(logits) != len(labels):
        raise ValueError(f"itm logits must be (n, 2) with n labels, got {tuple(logits.shape)} and {len(labels)}")
    return F.cross_entropy(logits.float(), labels.to(logits.device))


def hard_negative_itm_loss(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sim: torch.Tensor,
                           valid: torch.Tensor, scale: float = 1.0, random_negatives: bool = True,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """ITM loss of a batch with mined negatives: ``score_fn(image_idx, text_idx) -> (n, 2)`` logits."""
    img, txt, labels = itm_pairs(sim, valid, scale, random_negatives, generator)
    return itm_loss(score_fn(img, txt), labels)


def itc_loss_from_similarity(sim: torch.Tensor, log_scale: torch.Tensor, max_scale: float = MAX_LOGIT_SCALE):
    """Symmetric InfoNCE of a ``(B, B)`` similarity matrix (e.g. the Q-Former's max over queries)."""
    logits = log_scale.exp().clamp(max=max_scale) * sim.float()
    labels = torch.arange(len(sim), device=sim.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def query_max_similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` max over queries of ``(N, Q, D)`` x ``(M, D)`` (differentiable; BLIP-2's ITC)."""
    return torch.einsum("nqd,md->nqm", image_emb, text_emb).amax(dim=1)


# ---------------------------------------------------------------------------------------------- training
def _encode_all(loader_model, manifest: pd.DataFrame, fn, batch_size: int = 256) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(ImageDataset(manifest, loader_model.preprocess), batch_size=batch_size)
    with torch.no_grad():
        return torch.cat([fn(x).float() for x in loader])


def _pixels_all(preprocess, manifest: pd.DataFrame, batch_size: int = 256) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(ImageDataset(manifest, preprocess), batch_size=batch_size)
    return torch.cat(list(loader))


def train_fusion(model, train: pd.DataFrame, config: TrainConfig | dict | None = None, miner=None,
                 val_data: pd.DataFrame | None = None, rerank_k: int = 16, random_negatives: bool = True,
                 progress: bool = True, on_epoch_end: Callable[[History], object] | None = None) -> History:
    """Train a fusion model (:mod:`vlnb.models.fusion`) on a manifest; returns the :class:`History`.

    ``miner``: the dual encoder whose similarities give a ViLT-like model its hard negatives (required for
    it, unused by the others). ``val_data``: evaluated once after the last epoch with :func:`evaluate_fusion`
    (first-stage ITC and ITM-re-ranked Recall@K, ``rerank_k`` candidates per query). Training runs on the
    config's device (default CPU here: these models are CPU-sized); checkpoints are not written (a run takes
    seconds to a minute).
    """

    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**(config or {}))
    if not isinstance(model, (ScratchViLT, ScratchBLIP, ScratchQFormer)):
        raise TypeError(f"train_fusion trains the models of vlnb.models.fusion, got {type(model).__name__}")
    if isinstance(model, ScratchViLT) and miner is None:
        raise ValueError("a ViLT-like model mines its hard negatives from a dual encoder: pass miner=...")
    device = torch.device(cfg.device or "cpu")
    model.to(device)
    keep = [i for i, c in enumerate(train["captions"]) if len(c) > 0]
    train = subset(train, keep)
    n = len(train)
    if n // cfg.batch_size == 0:
        raise ValueError(f"{n} training images cannot fill one batch of {cfg.batch_size}")
    captions = [list(map(str, c)) for c in train["captions"]]
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(int(cfg.seed))

    # inputs computed once: pixels (ViLT, BLIP) or the frozen tower's tokens (Q-Former); the miner's embeddings
    if isinstance(model, ScratchQFormer):
        inputs = _encode_all(model, train, model.frozen_features)
    else:
        inputs = _pixels_all(model.preprocess, train)
    if isinstance(model, ScratchViLT):
        miner.eval()
        m_img = _encode_all(miner, train, lambda x: miner.encode_image(x.to(miner.device))).cpu()
        flat = sorted({c for caps in captions for c in caps})
        m_txt = miner.encode_texts(flat).cpu()
        m_row = {c: i for i, c in enumerate(flat)}
        m_scale = float(miner.logit_scale or 1 / 0.07)

    steps_per_epoch = n // cfg.batch_size
    opt = adamw(model, cfg)
    sched = warmup_cosine_scheduler(opt, cfg.warmup_steps, steps_per_epoch * cfg.epochs, cfg.min_lr_ratio)
    scale_param = getattr(model, "log_logit_scale", None)
    params = [p for p in model.parameters() if p.requires_grad]
    history, step = History(), 0
    epochs = range(cfg.epochs)
    if progress:
        epochs = tqdm(epochs, desc=f"{model.name}: epochs")
    model.train()
    for epoch in epochs:
        choice = caption_choice([len(c) for c in captions], cfg.caption_sampling, cfg.seed, epoch)
        t0, rows = time.perf_counter(), []
        for idx in epoch_batches(n, cfg.batch_size, cfg.seed, epoch):
            caps = [captions[i][choice[i]] for i in idx]
            valid = negatives_mask(caps, [captions[i] for i in idx])
            tok = {k: v.to(device) for k, v in model.tokenize(caps).items()}
            x = inputs[idx].to(device)
            parts = {}
            if isinstance(model, ScratchViLT):
                sim = m_img[idx] @ m_txt[[m_row[c] for c in caps]].T

                def score(ii, tt, x=x, tok=tok):
                    return model.itm_logits(x[ii], tok["input_ids"][tt], tok["attention_mask"][tt])

                parts["itm"] = hard_negative_itm_loss(score, sim, valid, m_scale, random_negatives, gen)
            else:
                if isinstance(model, ScratchBLIP):
                    img_tokens = model.image_tokens(x)
                    img_emb, txt_emb = model.embed_image_tokens(img_tokens), model.encode_text(**tok)
                    parts["itc"] = clip_loss(img_emb, txt_emb, model.log_logit_scale, cfg.max_logit_scale)
                    sim = img_emb @ txt_emb.T

                    def score(ii, tt, img_tokens=img_tokens, tok=tok):
                        return model.itm_logits_from_tokens(img_tokens[ii], tok["input_ids"][tt],
                                                            tok["attention_mask"][tt])
                else:
                    q_emb, txt_emb = model.embed_features(x), model.encode_text(**tok)
                    sim = query_max_similarity(q_emb, txt_emb)
                    parts["itc"] = itc_loss_from_similarity(sim, model.log_logit_scale, cfg.max_logit_scale)

                    def score(ii, tt, x=x, tok=tok):
                        return model.itm_logits_from_features(x[ii], tok["input_ids"][tt], tok["attention_mask"][tt])

                scale = min(math.exp(float(model.log_logit_scale.detach())), cfg.max_logit_scale)
                parts["itm"] = hard_negative_itm_loss(score, sim.detach(), valid, scale, random_negatives, gen)
            loss = sum(parts.values())
            lr = opt.param_groups[0]["lr"]
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if scale_param is not None:
                with torch.no_grad():
                    scale_param.clamp_(0.0, math.log(cfg.max_logit_scale))
            step += 1
            row = {"step": step, "epoch": epoch + 1, "loss": loss.item(), "lr": lr, "grad_norm": float(norm),
                   **{f"{k}_loss": v.item() for k, v in parts.items()}}
            if scale_param is not None:
                row["logit_scale"] = math.exp(float(scale_param.detach()))
            history.steps.append(row)
            rows.append(row)
        elapsed = time.perf_counter() - t0
        ep = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean([r["loss"] for r in rows])),
              **{f"train_{k}_loss": float(np.mean([r[f"{k}_loss"] for r in rows])) for k in parts},
              "lr": opt.param_groups[0]["lr"], "epoch_time_s": elapsed,
              "samples_per_s": len(rows) * cfg.batch_size / max(elapsed, 1e-9)}
        if scale_param is not None:
            ep["logit_scale"] = math.exp(float(scale_param.detach()))
        if val_data is not None and epoch + 1 == cfg.epochs:
            ep.update(evaluate_fusion(model, val_data, first_stage=miner, k=rerank_k, batch_size=cfg.eval_batch_size))
        history.epochs.append(ep)
        if progress:
            epochs.set_postfix(loss=f"{ep['train_loss']:.3f}")
        if on_epoch_end is not None and on_epoch_end(history) is False:
            break
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_fusion(model, manifest: pd.DataFrame, first_stage=None, k: int = 16, ks: Sequence[int] = (1, 5, 10),
                    batch_size: int = 256, progress: bool = False, cache_dir=None) -> dict[str, float]:
    """Retrieval (percent) of a fusion model on all images and captions of ``manifest``.

    ``itc_{d}_R@K``: the first-stage ITC ranking (the model's own; for a cross encoder, ``first_stage``'s);
    ``{d}_R@K``: its top-``k`` re-ranked by ITM logit + ITC similarity (LAVIS); ``itm_{d}_R@K``: re-ranked by
    the ITM logit alone (what the fusion head knows by itself); ``n_pairs``: pairs the ITM head scored.
    Recall@K for ``K > k`` is not reported (the re-ranked list is only ``k`` deep). The ITM scores of the pairs
    are cached in ``cache_dir`` (default: vlnb's feature cache; see :func:`vlnb.eval.rerank.rerank_similarity`).
    """

    dual = first_stage if isinstance(model, CrossEncoder) else model
    if dual is None:
        raise ValueError(f"{type(model).__name__} is a cross encoder: pass first_stage= a dual encoder")
    cross = model if isinstance(model, CrossEncoder) else model.cross_encoder()
    texts, t2i = texts_and_targets(manifest)
    was = model.training
    model.eval()
    try:
        img = _encode_all(dual, manifest, lambda x: dual.encode_image(x.to(dual.device)), batch_size)
        txt = dual.encode_texts(texts, batch_size)
        sim = dual.similarity(img, txt).float().cpu()
        out = {f"itc_{key}": v for key, v in recall_at_k(sim, t2i, ks).items()}
        pixels = _pixels_all(cross.preprocess, manifest, batch_size)
        # the pair scores are cached (keyed by the pixels, texts and pairs): chapter 4 re-ranks the same top-k
        itm, n_pairs = rerank_similarity(sim, cross, pixels, texts, k=k, batch_size=batch_size, combine="itm",
                                         progress=progress, images_key=pixels_key(cross.preprocess, manifest),
                                         cache_dir=cache_dir)
        both = {d: m + sim for d, m in itm.items()}  # -inf stays -inf: LAVIS' ITM logit + ITC similarity
        deep = [x for x in ks if x <= k]
        out.update(reranked_recall(both, t2i, deep))
        out.update({f"itm_{key}": v for key, v in reranked_recall(itm, t2i, deep).items()})
        out["n_pairs"] = n_pairs
        out["rerank_k"] = k
    finally:
        model.train(was)
    return out


# ---------------------------------------------------------------------------------------------- report
FUSION_PROTOCOLS = (("itc_", "ITC (first stage)"), ("", "ITC top-k → ITM re-rank (ITM + ITC)"),
                    ("itm_", "ITC top-k → ITM only"))


def fusion_results(histories, tests, first_stage=None, ks: Sequence[int] = (1, 5, 10)) -> pd.DataFrame:
    """One row per (model, protocol, direction, k) of the last evaluation of each :func:`train_fusion` run:
    recall beside the exact chance level on that model's test manifest (``tests[name]``), the ITM pair count
    and the training time (sum of the epochs' times; the one-off pre-computations are not in it).
    ``first_stage[name]``: the model whose ITC ranking is re-ranked (a ViLT-like model has none of its own)."""

    rows = []
    for name, h in histories.items():
        evaluated = [e for e in h.epochs if "n_pairs" in e]
        if not evaluated:
            raise ValueError(f"{name}: the training history has no evaluation on held-out data")
        last, test = evaluated[-1], tests[name]
        chance = manifest_recall_chance(test, ks)
        stage = (first_stage or {}).get(name) or "own"
        for prefix, protocol in FUSION_PROTOCOLS:
            for d in ("i2t", "t2i"):
                for k in ks:
                    key = f"{prefix}{d}_R@{k}"
                    if key not in last:
                        continue
                    rows.append({"model": name, "first stage": stage, "protocol": protocol, "direction": d, "k": k,
                                 "recall": last[key], "chance": chance[f"{d}_R@{k}"],
                                 "rerank_k": last["rerank_k"], "ITM pairs": 0 if prefix == "itc_" else last["n_pairs"],
                                 "epochs": int(last["epoch"]),
                                 "train time (s)": float(sum(e["epoch_time_s"] for e in h.epochs))})
    out = pd.DataFrame(rows)
    if len(out):
        out["× chance"] = out["recall"] / out["chance"]
    return out


def fusion_glue(results: pd.DataFrame) -> dict[str, str]:
    """Glue-ready numbers of :func:`fusion_results`: per model ``<model>_{itc,rerank,itm}_{t2i,i2t}_r1``, the
    R@1 chance ``<model>_{t2i,i2t}_r1_chance``, the train time ``<model>_train_s`` and the total ``fusion_train_s``."""
    out = {}
    tags = {p: t for (_, p), t in zip(FUSION_PROTOCOLS, ("itc", "rerank", "itm"), strict=True)}
    r1 = results[results["k"] == 1]
    for _, r in r1.iterrows():
        tag = r["model"].replace("-", "_")
        out[f"{tag}_{tags[r['protocol']]}_{r['direction']}_r1"] = f"{r['recall']:.1f}"
        out[f"{tag}_{r['direction']}_r1_chance"] = f"{r['chance']:.1f}"
        out[f"{tag}_train_s"] = f"{r['train time (s)']:.0f}"
    if len(results):
        out["fusion_train_s"] = f"{results.groupby('model')['train time (s)'].first().sum():.0f}"
        out["fusion_rerank_verdict"] = rerank_verdict(results)
    return out


def rerank_verdict(results: pd.DataFrame, direction: str = "t2i") -> str:
    """A sentence per model, computed from :func:`fusion_results`: did ITM re-ranking raise or lower R@1 over
    the ITC ranking it re-scores (and by how much)?"""
    r1 = results[(results["k"] == 1) & (results["direction"] == direction)]
    parts = []
    for name, g in r1.groupby("model", sort=False):
        by = dict(zip(g["protocol"], g["recall"], strict=True))
        itc, rr = by.get(FUSION_PROTOCOLS[0][1]), by.get(FUSION_PROTOCOLS[1][1])
        if itc is None or rr is None:
            continue
        verb = "raised" if rr > itc else "lowered" if rr < itc else "left"
        parts.append(f"{name}: {verb} {itc:.1f} → {rr:.1f}")
    return "; ".join(parts)
