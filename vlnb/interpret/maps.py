"""Map arithmetic: head fusion, rollout, Chefer relevancy, entropy, patch grids, normalisation, upsampling.

Pure tensor functions (no model code), so each rule can be checked by hand. Shapes: an attention layer is
``(B, heads, N, S)`` (rows: queries, columns: keys; rows sum to 1); a relevance/rollout matrix is
``(B, N, N)``; a map on the patch grid is ``(B, gh, gw)``; an image map is ``(B, H, W)``.

- :func:`rollout` -- Abnar & Zuidema (2020): per layer fuse the heads (mean, max or min), add the
  identity for the residual connection and re-normalise the rows (``0.5 A + 0.5 I`` for mean fusion),
  then multiply the layers: ``R = Â_L ... Â_1``.
- :func:`chefer_relevance` -- Chefer, Gur & Wolf (2021), self-attention rule: ``R = I``; per layer
  ``Ā = E_h[(∇A ⊙ A)^+]`` and ``R <- R + Ā R``.
- :func:`chefer_bimodal` -- their bi-modal rules for a query stream that self-attends and cross-attends
  to image tokens (BLIP-2's Q-Former): self ``R^qq += Ā R^qq``, ``R^qi += Ā R^qi``; cross
  ``R^qi += (R̄^qq)^T Ā R̄^ii`` with ``R̄`` the residual-normalised matrix of :func:`handle_residual`.
- :func:`attention_entropy` -- Shannon entropy of attention rows with its maximum ``log(n_keys)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

HEAD_FUSIONS = ("mean", "max", "min")
UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic")


def fuse_heads(attn: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """``(B, heads, N, S) -> (B, N, S)`` by mean, max or min over heads."""
    if attn.ndim != 4:
        raise ValueError(f"attention must be (B, heads, N, S), got {tuple(attn.shape)}")
    if how == "mean":
        return attn.mean(dim=1)
    if how == "max":
        return attn.amax(dim=1)
    if how == "min":
        return attn.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {how!r}")


def _check_layers(attentions: Sequence[torch.Tensor], what: str = "attentions") -> None:
    if len(attentions) == 0:
        raise ValueError(f"{what}: no layers given")
    shape = tuple(attentions[0].shape)
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError(f"{what}: each layer must be square self-attention (B, heads, N, N), got {shape}")
    bad = [i for i, a in enumerate(attentions) if tuple(a.shape) != shape]
    if bad:
        raise ValueError(f"{what}: layers {bad} differ in shape from layer 0 {shape}")


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean", residual: bool = True,
            start_layer: int = 0) -> torch.Tensor:
    """Attention rollout ``(B, N, N)`` of the layers from ``start_layer`` on (Abnar & Zuidema, 2020).

    ``residual=True``: ``Â = (fuse(A) + I) / rowsum`` (exactly ``0.5 A + 0.5 I`` for mean fusion, whose rows
    sum to 1; max/min fusion rows are re-normalised the same way). Row ``i`` of the result is how much of
    token ``i``'s last-layer representation flows from each input token.
    """
    _check_layers(attentions)
    layers = list(attentions)[start_layer:]
    if not layers:
        raise ValueError(f"start_layer {start_layer} leaves no layer of {len(attentions)}")
    a0 = layers[0].float()
    n = a0.shape[-1]
    eye = _eye(n, a0)
    out = eye.expand(a0.shape[0], n, n)
    for a in layers:
        fused = fuse_heads(a.float(), head_fusion)
        if residual:
            fused = fused + eye
            fused = fused / fused.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        out = fused @ out
    return out


def grad_weighted(attn: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """Chefer's head average ``Ā = E_h[(∇A ⊙ A)^+]``: ``(B, heads, N, S) -> (B, N, S)`` (zeros if no gradient)."""
    if grad is None:
        return torch.zeros_like(attn.float().mean(dim=1))
    if grad.shape != attn.shape:
        raise ValueError(f"gradient shape {tuple(grad.shape)} differs from attention {tuple(attn.shape)}")
    return (grad.float() * attn.float()).clamp(min=0).mean(dim=1)


def chefer_relevance(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor | None],
                     start_layer: int = 0) -> torch.Tensor:
    """Chefer et al. (2021) relevancy ``(B, N, N)`` of self-attention layers: ``R = I``, ``R += Ā R``.

    ``gradients[l]`` is the gradient of the explained score with respect to ``attentions[l]``. Layers before
    ``start_layer`` are skipped (their public CLIP demo uses only the last layer, ``start_layer = L - 1``).
    """
    _check_layers(attentions)
    if len(gradients) != len(attentions):
        raise ValueError(f"{len(gradients)} gradients for {len(attentions)} attention layers")
    a0 = attentions[0].float()
    n = a0.shape[-1]
    r = _eye(n, a0).expand(a0.shape[0], n, n).clone()
    for a, g in list(zip(attentions, gradients))[start_layer:]:
        r = r + grad_weighted(a, g) @ r
    return r


def handle_residual(r: torch.Tensor) -> torch.Tensor:
    """Chefer's eq. 8-9: ``R̄ = (R - I) / rowsum(R - I) + I`` (rows whose sum is 0 left at ``I``)."""
    n = r.shape[-1]
    eye = _eye(n, r)
    hat = r - eye
    s = hat.sum(dim=-1, keepdim=True)
    s = torch.where(s == 0, torch.ones_like(s), s)
    return hat / s + eye


def chefer_bimodal(events: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]], r_image: torch.Tensor) -> torch.Tensor:
    """Relevance ``R^qi (B, Q, N_img)`` of image tokens for each query of a query stream (BLIP-2's Q-Former).

    ``events``: ``("self", A, ∇A)`` (queries attend to queries, ``(B, h, Q, Q)``) and ``("cross", A, ∇A)``
    (queries attend to image tokens, ``(B, h, Q, N_img)``) in forward order. ``r_image``: the image tower's
    own relevance ``R^ii (B, N_img, N_img)`` (:func:`chefer_relevance`). The image tokens never attend to
    the queries, so ``R^iq = 0`` and the cross rule adds nothing to ``R^qq``.
    """
    if not events:
        raise ValueError("chefer_bimodal: no attention events")
    cross = [a for kind, a, _ in events if kind == "cross"]
    if not cross:
        raise ValueError("chefer_bimodal: the query stream never cross-attends to the image")
    b, _, q, n_img = cross[0].shape
    if tuple(r_image.shape) != (b, n_img, n_img):
        raise ValueError(f"r_image must be (B, {n_img}, {n_img}), got {tuple(r_image.shape)}")
    r_qq = _eye(q, r_image).expand(b, q, q).clone()
    r_qi = torch.zeros(b, q, n_img, dtype=r_image.dtype, device=r_image.device)
    r_ii_bar = handle_residual(r_image)
    for kind, a, g in events:
        cam = grad_weighted(a, g).to(r_image.dtype)
        if kind == "self":
            r_qi = r_qi + cam @ r_qi
            r_qq = r_qq + cam @ r_qq
        elif kind == "cross":
            r_qi = r_qi + handle_residual(r_qq).transpose(-1, -2) @ cam @ r_ii_bar
        else:
            raise ValueError(f"unknown attention event {kind!r} (self | cross)")
    return r_qi


def attention_entropy(attn: torch.Tensor, key_mask: torch.Tensor | None = None,
                      query_rows: Sequence[int] | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-head entropy of attention rows (natural log), averaged over the batch and the chosen query rows.

    Returns ``{"entropy", "max_entropy", "normalised"}``, each ``(heads,)``: the mean row entropy
    ``H = -Σ_j a_j log a_j``, the mean of its maximum ``log(n_keys)`` (``n_keys`` = the row's valid keys,
    from ``key_mask (B, S)`` when given) and the mean of ``H / log(n_keys)`` (0 = one key, 1 = uniform).
    """
    if attn.ndim != 4:
        raise ValueError(f"attention must be (B, heads, N, S), got {tuple(attn.shape)}")
    a = attn.detach().float()
    if query_rows is not None:
        a = a[:, :, torch.as_tensor(query_rows, dtype=torch.long, device=a.device)]
    h = -(a * torch.log(a.clamp_min(1e-30))).sum(dim=-1)  # (B, heads, rows)
    if key_mask is not None:
        if tuple(key_mask.shape) != (a.shape[0], a.shape[-1]):
            raise ValueError(f"key_mask must be (B, {a.shape[-1]}), got {tuple(key_mask.shape)}")
        n_keys = key_mask.to(a.device).float().sum(dim=-1)  # (B,)
    else:
        n_keys = torch.full((a.shape[0],), float(a.shape[-1]), device=a.device)
    hmax = torch.log(n_keys.clamp_min(1.0))[:, None, None].expand_as(h)
    norm = torch.where(hmax > 0, h / hmax.clamp_min(1e-12), torch.zeros_like(h))
    return {"entropy": h.mean(dim=(0, 2)), "max_entropy": hmax.mean(dim=(0, 2)), "normalised": norm.mean(dim=(0, 2))}


def tokens_to_grid(values: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pick the patch tokens of ``values (B, N)`` at ``positions (B, gh*gw)`` (sequence index of each grid
    cell, row-major) and reshape to ``(B, gh, gw)``."""
    gh, gw = grid
    if values.ndim != 2:
        raise ValueError(f"values must be (B, N), got {tuple(values.shape)}")
    if tuple(positions.shape) != (values.shape[0], gh * gw):
        raise ValueError(f"positions must be (B, {gh * gw}) for a {gh}x{gw} grid, got {tuple(positions.shape)}")
    return values.gather(1, positions.to(values.device)).reshape(values.shape[0], gh, gw)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map (over its last two axes) clamped at 0 and divided by its maximum, so it lies in ``[0, 1]``
    with max 1 and zero stays zero (shares of map energy are unchanged). An all-zero map stays zero."""
    m = maps.float().clamp(min=0)
    peak = m.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, m / peak.clamp_min(1e-30), torch.zeros_like(m))


def upsample_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(B, gh, gw) -> (B, H, W)`` (``align_corners=False``: each grid cell is centred on its patch), then
    re-normalised with :func:`normalise_maps`."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, gh, gw), got {tuple(maps.shape)}")
    kw = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(maps.float()[:, None], size=tuple(int(s) for s in size), mode=mode, **kw)[:, 0]
    return normalise_maps(up)


__all__ = [
    "HEAD_FUSIONS", "UPSAMPLE_MODES", "attention_entropy", "chefer_bimodal", "chefer_relevance", "fuse_heads",
    "grad_weighted", "handle_residual", "normalise_maps", "rollout", "tokens_to_grid", "upsample_maps",
]
