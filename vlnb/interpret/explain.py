"""Saliency maps of every vlnb model family, on the model's true patch grid, upsampled to its input.

Methods (:data:`METHODS`):

- ``cls_attention`` -- last layer, mean over heads, the readout token's row (CLS; ViLT's text ``[CLS]``);
- ``rollout_mean`` / ``rollout_max`` -- attention rollout with residual, heads fused by mean / max
  (:func:`~vlnb.interpret.maps.rollout`);
- ``chefer`` -- gradient-weighted relevancy of Chefer et al. (2021) for the image-text score: the ITC
  similarity of a dual encoder with the given text, ViLT's rank logit; BLIP-2 by the bi-modal rules through
  the Q-Former (read at the query that ITC's max picks);
- ``qformer_attention`` -- BLIP-2: Q-Former cross-attention over the image tokens, mean over layers and heads,
  at the text's best query (or the mean over queries without a text);
- ``gradcam`` -- CNN towers (EfficientNet-Lite0): Grad-CAM on the last conv stage for the ITC similarity.

Every map is checked against the grid (:mod:`vlnb.interpret.trace`), clamped at 0, divided by its max
(:func:`~vlnb.interpret.maps.normalise_maps`) and upsampled to the model input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..models.vilt import PatchGridError
from .maps import (
    attention_entropy,
    chefer_bimodal,
    chefer_relevance,
    fuse_heads,
    normalise_maps,
    rollout,
    tokens_to_grid,
    upsample_maps,
)
from .trace import ATTENTION_FAMILIES, AttentionTrace, backprop, trace_attention

METHODS: dict[str, str] = {
    "cls_attention": "last-layer attention of the readout token, mean over heads",
    "rollout_mean": "attention rollout (residual-aware), heads fused by mean",
    "rollout_max": "attention rollout (residual-aware), heads fused by max",
    "chefer": "Chefer et al. 2021 gradient-weighted relevancy of the image-text score",
    "qformer_attention": "BLIP-2 Q-Former cross-attention over image patches",
    "gradcam": "Grad-CAM of the image-text score on the last conv stage",
}
GRAD_METHODS = ("chefer", "gradcam")
TEXT_METHODS = ("chefer", "gradcam")  # maps that depend on the text


@dataclass
class Saliency:
    """One method's maps for a batch: ``grid (B, gh, gw)`` and ``pixels (B, H, W)``, both in ``[0, 1]``."""

    method: str
    grid: torch.Tensor
    pixels: torch.Tensor


def supported_methods(model) -> list[str]:
    """The methods that apply to ``model``'s family."""
    family = getattr(model, "family", None)
    if family == "towers":
        return ["gradcam"]
    if family in ATTENTION_FAMILIES:
        base = ["cls_attention", "rollout_mean", "rollout_max", "chefer"]
        return base + ["qformer_attention"] if family == "blip2" else base
    raise ValueError(f"no saliency method for {getattr(model, 'name', model)!r} of family {family!r}")


def _readout(r: torch.Tensor, trace: AttentionTrace) -> torch.Tensor:
    """``(B, N, N) -> (B, N)``: the mean of the readout rows."""
    return r[:, trace.readout].mean(dim=1)


def _best_or_mean(m: torch.Tensor, best: torch.Tensor | None) -> torch.Tensor:
    """``(B, Q, S) -> (B, S)``: the row of each sample's best query, or the mean over queries."""
    if best is None:
        return m.mean(dim=1)
    return m[torch.arange(m.shape[0], device=m.device), best.to(m.device)]


def attention_grid_maps(trace: AttentionTrace, method: str, start_layer: int = 0) -> torch.Tensor:
    """The ``(B, gh, gw)`` normalised map of ``method`` from a trace (gradient methods need :func:`backprop`)."""
    if method == "cls_attention":
        row = _readout(fuse_heads(trace.attentions[-1].detach().float(), "mean"), trace)
    elif method in ("rollout_mean", "rollout_max"):
        r = rollout([a.detach() for a in trace.attentions], head_fusion=method.split("_")[1], residual=True)
        row = _readout(r, trace)
    elif method == "chefer":
        if trace.gradients is None:
            raise ValueError("chefer needs gradients: trace with texts and with_grad=True, then backprop()")
        r = chefer_relevance([a.detach() for a in trace.attentions], trace.gradients, start_layer=start_layer)
        if trace.family == "blip2":
            events = [(k, w.detach(), g) for (k, w), g in zip(trace.qformer, trace.qformer_gradients)]
            row = _best_or_mean(chefer_bimodal(events, r), trace.best_query)
        else:
            row = _readout(r, trace)
    elif method == "qformer_attention":
        cross = [w.detach().float() for k, w in trace.qformer if k == "cross"]
        if not cross:
            raise ValueError(f"qformer_attention is for BLIP-2 (a Q-Former trace); this is a {trace.family} trace")
        m = torch.stack(cross).mean(dim=(0, 2))  # (B, Q, S): mean over cross layers and heads
        row = _best_or_mean(m, trace.best_query)
    else:
        raise ValueError(f"unknown attention method {method!r}; known: {sorted(METHODS)}")
    return normalise_maps(tokens_to_grid(row.float(), trace.positions, trace.grid))


# ------------------------------------------------------------------------------------------------ Grad-CAM
def _towers_features(model, pixels: torch.Tensor, texts: Sequence[str]):
    """Run the towers' own ``encode_image`` recording the last conv stage (EfficientNet's head activation)."""
    net = model.image_tower
    seen: list[torch.Tensor] = []
    handle = net._swish.register_forward_hook(lambda _m, _i, out: seen.append(out))  # stem, then head: keep last
    try:
        emb = model.encode_image(pixels)
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{model.name}: the EfficientNet head activation was not seen")
    feats = seen[-1]
    with torch.no_grad():
        t = model.encode_text(**model.tokenize(list(texts))).to(emb.dtype)
    return feats, (emb * t).sum(dim=-1)


def cnn_grid(input_size: tuple[int, int], stride: int = 32) -> tuple[int, int]:
    """The feature grid of a stride-``stride`` CNN with 'same' padding: ``ceil(H / s) x ceil(W / s)``."""
    return math.ceil(input_size[0] / stride), math.ceil(input_size[1] / stride)


def gradcam(model, pixel_values: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """Grad-CAM ``(B, gh, gw)`` (normalised) of the image-text similarity on the towers' last conv stage.

    ``α_c = mean_xy ∂s/∂A_c``, ``map = ReLU(Σ_c α_c A_c)`` (Selvaraju et al., 2017) with ``s`` the cosine
    similarity of the image embedding with the text's; the grid is the feature map's (7x7 at 224 px).
    """
    if getattr(model, "family", None) != "towers":
        raise ValueError(f"gradcam is implemented for the CNN towers; {getattr(model, 'name', model)!r} is "
                         f"{getattr(model, 'family', None)!r}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) != len(pixel_values):
        raise ValueError(f"{len(pixel_values)} images but {len(texts)} texts (pairs must be aligned)")
    pixels = pixel_values.detach().to(model.device).clone().requires_grad_(True)
    with torch.enable_grad():
        feats, score = _towers_features(model, pixels, texts)
        (grad,) = torch.autograd.grad(score.sum(), feats)
    expected = cnn_grid(tuple(pixels.shape[-2:]))
    if feats.ndim != 4 or tuple(feats.shape[-2:]) != expected:
        raise PatchGridError(f"{model.name}: feature map {tuple(feats.shape)} does not have the stride-32 grid "
                             f"{expected} of a {tuple(pixels.shape[-2:])} input")
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats.detach()).sum(dim=1))
    return normalise_maps(cam.float())


# ------------------------------------------------------------------------------------------------ explain
def explain(model, pixel_values: torch.Tensor, texts: Sequence[str] | None = None,
            methods: Sequence[str] | None = None, upsample: str = "bilinear", start_layer: int = 0,
            return_trace: bool = False):
    """``{method: Saliency}`` for a batch of preprocessed images (and aligned texts).

    One forward pass (with a graph when a gradient method is asked for) serves every attention method.
    ``methods=None``: every method of :func:`supported_methods`. With ``return_trace=True`` also returns
    the :class:`~vlnb.interpret.trace.AttentionTrace` (None for the towers).
    """
    known = supported_methods(model)
    methods = list(methods) if methods is not None else known
    bad = [m for m in methods if m not in known]
    if bad:
        raise ValueError(f"{model.name} ({model.family}) supports {known}; not {bad}")
    if texts is not None:
        texts = [texts] if isinstance(texts, str) else list(texts)
    if texts is None and (any(m in TEXT_METHODS for m in methods) or model.family == "vilt"):
        raise ValueError(f"{methods} on {model.name} explain an image-text score: pass texts")
    size = tuple(pixel_values.shape[-2:])
    out, trace = {}, None
    if model.family == "towers":
        grid = gradcam(model, pixel_values, texts)
        out["gradcam"] = Saliency("gradcam", grid.cpu(), upsample_maps(grid, size, upsample).cpu())
    else:
        with_grad = any(m in GRAD_METHODS for m in methods)
        trace = trace_attention(model, pixel_values, texts, with_grad=with_grad)
        if with_grad:
            backprop(trace)
        for m in methods:
            grid = attention_grid_maps(trace, m, start_layer=start_layer)
            out[m] = Saliency(m, grid.cpu(), upsample_maps(grid, size, upsample).cpu())
        if not return_trace:  # drop the graph now
            trace = None
    return (out, trace) if return_trace else out


def entropy_table(trace: AttentionTrace) -> pd.DataFrame:
    """Attention entropy per layer and head with its maximum ``log(n_keys)`` and the normalised value.

    Rows: the image tower's self-attention (``block="vision"``; ViLT: ``"joint"``) over all query rows and
    over the readout row, and BLIP-2's Q-Former cross-attention (``"qformer-cross"``, all queries).
    """
    block = "joint" if trace.family == "vilt" else "vision"
    parts = []
    for layer, a in enumerate(trace.attentions):
        for rows, q in (("all", None), ("readout", trace.readout)):
            parts.append((block, layer, rows, attention_entropy(a, trace.key_mask, q), a.shape[-1]))
    cross = [w for k, w in trace.qformer if k == "cross"]
    for layer, a in enumerate(cross):
        parts.append(("qformer-cross", layer, "all", attention_entropy(a), a.shape[-1]))
    recs = []
    for blk, layer, rows, e, n in parts:
        for h in range(len(e["entropy"])):
            recs.append({"block": blk, "layer": layer, "head": h, "rows": rows, "n_tokens": int(n),
                         "entropy": float(e["entropy"][h]), "max_entropy": float(e["max_entropy"][h]),
                         "normalised": float(e["normalised"][h])})
    return pd.DataFrame(recs)


__all__ = ["GRAD_METHODS", "METHODS", "Saliency", "attention_grid_maps", "cnn_grid", "entropy_table", "explain",
           "gradcam", "supported_methods"]
