"""Record the attention weights of a model's image tower while the model's *own* encode/score code runs.

:func:`trace_attention` runs ``model.encode_image`` (dual encoders) or ``model.score`` (ViLT) exactly as the
evaluation chapters do, with forward hooks on the attention modules, so every map drawn from the trace
comes from the computation that produced the model's scores. It also states where each patch token sits
(:attr:`AttentionTrace.positions`) and asserts the token count: ``N == special tokens + gh * gw`` with the
grid ``(H / patch, W / patch)`` of the actual input.

Per family:

- ``scratch`` (vlnb's ViT): ``Attention.keep_weights``; CLS (or mean-pooled patch) readout;
- ``clip`` / ``blip``: the vision transformer's ``self_attn`` modules (eager attention required; HF's SDPA
  path returns no weights); CLS readout (CLIP and BLIP ITC project the CLS token);
- ``blip2``: the ViT's ``self_attn`` modules, plus the Q-Former's self- and cross-attention in forward
  order (cross-attention = 32 queries over the image tokens); the ViT CLS readout is kept for rollout, but
  BLIP-2's ITC reads the queries, not the ViT CLS (the Q-Former methods do);
- ``fusion`` (vlnb's from-scratch ViLT-/BLIP-/Q-Former-like models): the image tower's blocks like ``scratch``
  (BLIP-like: its own ViT; Q-Former: its frozen ViT), the ViLT-like single stream like ``vilt`` below;
- ``vilt``: the joint text+image transformer; ViLT *shuffles* the image tokens (HF's ``visual_embed`` draws a
  random permutation even when every patch is kept), so each token's patch comes from the permutation it
  drew (captured per call); readout = the text ``[CLS]`` token (ViLT's pooler, the ITM/rank head's input).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..models.vilt import PatchGridError

ATTENTION_FAMILIES = ("scratch", "clip", "blip", "blip2", "vilt", "fusion")


@dataclass
class AttentionTrace:
    """The image tower's attention for one batch, with the facts needed to read it as a map."""

    family: str
    #: self-attention of the tower whose map is drawn, per layer ``(B, heads, N, N)``, forward order
    attentions: list[torch.Tensor]
    #: ``(gh, gw)`` patch grid of the actual input
    grid: tuple[int, int]
    #: ``(H, W)`` of the model input
    input_size: tuple[int, int]
    #: ``(B, gh * gw)``: sequence index of each grid cell (row-major)
    positions: torch.Tensor
    #: token rows the model's output is read from (``[0]`` = CLS)
    readout: list[int]
    #: tokens before/around the patches (CLS, ViLT's text tokens and image CLS)
    n_special: int
    #: ``(B, N)`` True for real keys (ViLT's text padding is False), or None when all are real
    key_mask: torch.Tensor | None = None
    #: the explained score per pair ``(B,)`` (image-text similarity or ViLT's rank logit), when texts were given
    score: torch.Tensor | None = None
    #: BLIP-2: Q-Former attention events ``(kind, (B, heads, Q, S))`` in forward order, kind self | cross
    qformer: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    #: BLIP-2 with texts: the query with the highest similarity to the text (the one ITC's max picks) ``(B,)``
    best_query: torch.Tensor | None = None
    #: filled by :func:`backprop`: gradients of ``score.sum()`` for ``attentions`` and the Q-Former events
    gradients: list[torch.Tensor | None] | None = None
    qformer_gradients: list[torch.Tensor | None] | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.attentions[0].shape[-1])

    @property
    def n_layers(self) -> int:
        return len(self.attentions)


def _check_grid(n_tokens: int, n_special: int, grid: tuple[int, int], what: str) -> None:
    if n_tokens != n_special + grid[0] * grid[1]:
        raise PatchGridError(f"{what}: the attention has {n_tokens} tokens, but a {grid[0]}x{grid[1]} patch grid "
                             f"plus {n_special} special token(s) is {n_special + grid[0] * grid[1]}")


def _grid_of(pixel_values: torch.Tensor, patch: int, what: str) -> tuple[int, int]:
    h, w = pixel_values.shape[-2:]
    if h % patch or w % patch:
        raise PatchGridError(f"{what}: input {h}x{w} is not a multiple of the {patch}-pixel patches")
    return h // patch, w // patch


def _sequential_positions(b: int, start: int, grid: tuple[int, int], device) -> torch.Tensor:
    return (start + torch.arange(grid[0] * grid[1], device=device)).expand(b, -1).clone()


def _patch(v) -> int:
    return int(v if isinstance(v, int) else v[0])


@contextmanager
def _hooks(modules: Sequence[tuple[str, torch.nn.Module]], force_output_attentions: bool = False):
    """Collect ``(tag, weights)`` from each module's output ``[1]``, in forward order."""
    store: list[tuple[str, torch.Tensor | None]] = []
    handles = []

    def post(tag):
        def hook(_m, _args, out):
            w = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
            store.append((tag, w))
        return hook

    def pre(_m, args, kwargs):
        if len(args) >= 3:  # ViltSelfAttention(hidden_states, attention_mask, output_attentions)
            args = (*args[:2], True, *args[3:])
        else:
            kwargs = {**kwargs, "output_attentions": True}
        return args, kwargs

    try:
        for tag, m in modules:
            if force_output_attentions and "output_attentions" in inspect.signature(m.forward).parameters:
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post(tag)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _weights(store, tag_filter=None, what="") -> list[torch.Tensor]:
    out = [w for tag, w in store if tag_filter is None or tag == tag_filter]
    if not out or any(w is None for w in out):
        raise RuntimeError(f"{what}: the attention modules returned no weights; attention maps need eager attention: "
                           "load the model with vlnb.models.load_model(..., attn_implementation='eager')")
    return out


def _require_eager(model, *configs) -> None:
    for c in configs:
        impl = getattr(c, "_attn_implementation", None)
        if impl not in (None, "eager"):
            raise ValueError(f"{model.name}: attention maps need eager attention, but this model uses {impl!r}; "
                             "load it with vlnb.models.load_model(..., attn_implementation='eager')")


def _dual_score(model, image_emb: torch.Tensor, texts: Sequence[str] | None):
    """Aligned image-text similarity (the ITC score) ``(B,)``; for BLIP-2's ``(B, Q, D)`` the max over
    queries (and which query) as :meth:`DualEncoder.similarity`."""
    if texts is None:
        return None, None
    if len(texts) != len(image_emb):
        raise ValueError(f"{len(image_emb)} images but {len(texts)} texts (pairs must be aligned)")
    with torch.no_grad():
        t = model.encode_text(**model.tokenize(list(texts))).to(image_emb.dtype)
    if image_emb.ndim == 3:
        sims = torch.einsum("bqd,bd->bq", image_emb, t)
        best = sims.detach().argmax(dim=1)
        return sims.gather(1, best[:, None])[:, 0], best
    return (image_emb * t).sum(dim=-1), None


# ---------------------------------------------------------------------------------------------- per family
def _kept_weights(attn_modules, run, name: str):
    """``(run(), weights)``: ``run()`` with vlnb's own :class:`~vlnb.models.scratch.Attention` modules keeping
    their softmax weights (the scratch ViT, the fusion models), switched off again whatever happens."""
    for a in attn_modules:
        a.keep_weights, a.weights = True, None
    try:
        out = run()
        weights = [a.weights for a in attn_modules]
    finally:
        for a in attn_modules:
            a.keep_weights, a.weights = False, None
    if any(w is None for w in weights):
        raise RuntimeError(f"{name}: an attention block kept no weights")
    return out, weights


def _trace_scratch(model, pixels, texts):
    emb, weights = _kept_weights([blk.attn for blk in model.visual.blocks], lambda: model.encode_image(pixels),
                                 model.name)
    grid = _grid_of(pixels, model.config.patch_size, model.name)
    _check_grid(weights[0].shape[-1], 1, grid, model.name)
    positions = _sequential_positions(len(pixels), 1, grid, pixels.device)
    readout = [0] if model.config.pooling == "cls" else positions[0].tolist()
    score, _ = _dual_score(model, emb, texts)
    return AttentionTrace("scratch", weights, grid, tuple(pixels.shape[-2:]), positions, readout, 1, score=score)


def _trace_hf_vit(model, pixels, texts):
    net = model.model
    _require_eager(model, net.config.vision_config)
    layers = net.vision_model.encoder.layers
    with _hooks([("vit", layer.self_attn) for layer in layers]) as store:
        emb = model.encode_image(pixels)
    weights = _weights(store, "vit", model.name)
    if len(weights) != len(layers):
        raise RuntimeError(f"{model.name}: recorded {len(weights)} attention layers, the ViT has {len(layers)}")
    grid = _grid_of(pixels, _patch(net.config.vision_config.patch_size), model.name)
    _check_grid(weights[0].shape[-1], 1, grid, model.name)
    positions = _sequential_positions(len(pixels), 1, grid, pixels.device)
    score, best = _dual_score(model, emb, texts)
    return AttentionTrace(model.family, weights, grid, tuple(pixels.shape[-2:]), positions, [0], 1, score=score,
                          best_query=best)


def _trace_blip2(model, pixels, texts):
    net = model.model
    _require_eager(model, net.config.vision_config, net.config.qformer_config)
    vit_layers = net.vision_model.encoder.layers
    modules = [("vit", layer.self_attn) for layer in vit_layers]
    for layer in net.qformer.encoder.layer:
        modules.append(("self", layer.attention.attention))
        if getattr(layer, "has_cross_attention", hasattr(layer, "crossattention")):
            modules.append(("cross", layer.crossattention.attention))
    with _hooks(modules) as store:
        emb = model.encode_image(pixels)
    vit = _weights(store, "vit", model.name)
    if len(vit) != len(vit_layers):
        raise RuntimeError(f"{model.name}: recorded {len(vit)} ViT attention layers, the ViT has {len(vit_layers)}")
    events = [(tag, w) for tag, w in store if tag != "vit"]
    _weights(events, None, model.name)
    if not any(tag == "cross" for tag, _ in events):
        raise RuntimeError(f"{model.name}: the Q-Former never cross-attended to the image")
    grid = _grid_of(pixels, _patch(net.config.vision_config.patch_size), model.name)
    _check_grid(vit[0].shape[-1], 1, grid, model.name)
    for tag, w in events:
        if tag == "cross":
            _check_grid(w.shape[-1], 1, grid, f"{model.name} Q-Former cross-attention")
    positions = _sequential_positions(len(pixels), 1, grid, pixels.device)
    score, best = _dual_score(model, emb, texts)
    return AttentionTrace("blip2", vit, grid, tuple(pixels.shape[-2:]), positions, [0], 1, score=score,
                          qformer=events, best_query=best)


def _trace_vilt(model, pixels, texts):
    if texts is None:
        raise ValueError(f"{model.name}: ViLT is a cross encoder, its attention depends on the text; pass texts")
    if bool(torch.isnan(pixels).any()):  # ViltPreprocess pads a batch of different sizes with NaN
        raise PatchGridError(f"{model.name}: the batch mixes input sizes (NaN padding): a map needs one patch grid, "
                             "and HF's ViLT fills padded images with padding patches; trace images of one size "
                             "together (vlnb.interpret.pointing.size_batches)")
    net = model.model
    emb_module = net.vilt.embeddings
    layers = net.vilt.encoder.layer
    captured = {}
    original = emb_module.visual_embed

    def visual_embed(*args, **kwargs):  # keep the patch permutation ViLT draws on every call
        out = original(*args, **kwargs)
        captured["patch_index"] = out[2][0]
        captured["patch_grid"] = tuple(int(v) for v in out[2][1])
        return out

    def emb_hook(_m, _i, out):
        captured["mask"] = out[1]

    emb_module.visual_embed = visual_embed
    handle = emb_module.register_forward_hook(emb_hook)
    try:
        with _hooks([("joint", layer.attention.attention) for layer in layers], force_output_attentions=True) as store:
            score = model.score(pixels, list(texts))
    finally:
        handle.remove()
        del emb_module.visual_embed  # back to the class method
    weights = _weights(store, "joint", model.name)
    if len(weights) != len(layers):
        raise RuntimeError(f"{model.name}: recorded {len(weights)} attention layers, ViLT has {len(layers)}")
    patch_index = captured["patch_index"]  # (B, n_img, 2): (row, col) of each image token after the image CLS
    grid = _grid_of(pixels, model.patch_size, model.name)
    if captured["patch_grid"] != grid:
        raise PatchGridError(f"{model.name}: ViLT's patch embedding made a {captured['patch_grid']} grid, "
                             f"the {tuple(pixels.shape[-2:])} input implies {grid}")
    b, n_img = patch_index.shape[:2]
    if n_img != grid[0] * grid[1]:
        raise PatchGridError(f"{model.name}: ViLT kept {n_img} image tokens for a {grid[0]}x{grid[1]} grid")
    n = weights[0].shape[-1]
    n_text = n - 1 - n_img
    _check_grid(n, n_text + 1, grid, model.name)
    cell = (patch_index[..., 0] * grid[1] + patch_index[..., 1]).long()  # grid cell of token k
    if not bool((cell.sort(dim=1).values == torch.arange(n_img, device=cell.device)).all()):
        raise PatchGridError(f"{model.name}: ViLT's image tokens are not a permutation of the {grid} grid cells")
    positions = torch.empty_like(cell)
    positions.scatter_(1, cell, (n_text + 1 + torch.arange(n_img, device=cell.device)).expand(b, -1).contiguous())
    key_mask = captured["mask"].bool() if "mask" in captured else None
    return AttentionTrace("vilt", weights, grid, tuple(pixels.shape[-2:]), positions, [0], n_text + 1,
                          key_mask=key_mask, score=score)


def _trace_fusion(model, pixels, texts):
    """vlnb's fusion models (:mod:`vlnb.models.fusion`): the BLIP-like ITC image tower (its own ViT) and the
    Q-Former's frozen ViT are read like ``scratch`` (CLS readout, ITC score; the Q-Former's is the max over
    queries); the ViLT-like single stream like ``vilt`` (text tokens first, then the patches in grid order,
    readout = the first text token, the ITM pooler's input, score = the ITM "match" logit)."""
    arch = model.config.arch
    if arch != "vilt":
        tower = model.visual if arch == "blip" else model.backbone
        mods = [blk.attn for blk in tower.blocks]
        run = lambda: model.encode_image(pixels)
    else:
        if texts is None:
            raise ValueError(f"{model.name}: a single-stream model's attention depends on the text: pass texts=...")
        mods = [blk.attn for blk in model.blocks]
        tokens = model.tokenize(list(texts))
        run = lambda: model.itm_logits(pixels, **tokens)[:, 1]
    out, weights = _kept_weights(mods, run, model.name)
    grid = _grid_of(pixels, model.config.vit_config().patch_size, model.name)
    if arch != "vilt":
        _check_grid(weights[0].shape[-1], 1, grid, model.name)
        positions = _sequential_positions(len(pixels), 1, grid, pixels.device)
        score, best = _dual_score(model, out, texts)
        return AttentionTrace("scratch", weights, grid, tuple(pixels.shape[-2:]), positions, [0], 1, score=score,
                              best_query=best)
    n_text = tokens["input_ids"].shape[1]
    _check_grid(weights[0].shape[-1], n_text, grid, model.name)
    positions = _sequential_positions(len(pixels), n_text, grid, pixels.device)
    key_mask = torch.cat([tokens["attention_mask"].bool(),
                          torch.ones(len(pixels), grid[0] * grid[1], dtype=torch.bool)], dim=1).to(pixels.device)
    return AttentionTrace("vilt", weights, grid, tuple(pixels.shape[-2:]), positions, [0], n_text,
                          key_mask=key_mask, score=out)


_TRACERS = {"scratch": _trace_scratch, "clip": _trace_hf_vit, "blip": _trace_hf_vit, "blip2": _trace_blip2,
            "vilt": _trace_vilt, "fusion": _trace_fusion}


def trace_attention(model, pixel_values: torch.Tensor, texts: Sequence[str] | None = None,
                    with_grad: bool = False) -> AttentionTrace:
    """Run the model's own image encoding (or ViLT's scoring) on ``pixel_values`` and record its attention.

    ``texts`` (aligned with the images) give the explained score (needed for gradient methods and by ViLT);
    ``with_grad=True`` keeps the autograd graph so :func:`backprop` can take gradients of that score.
    """
    family = getattr(model, "family", None)
    if family not in _TRACERS:
        raise ValueError(f"attention maps are for ViT-based models {ATTENTION_FAMILIES}; "
                         f"{getattr(model, 'name', model)!r} is {family!r} (use gradcam for CNN towers)")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values must be a (B, 3, H, W) tensor, got {getattr(pixel_values, 'shape', pixel_values)}")
    if texts is not None:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(texts) != len(pixel_values):
            raise ValueError(f"{len(pixel_values)} images but {len(texts)} texts (pairs must be aligned)")
    pixels = pixel_values.detach().to(model.device)
    if with_grad:
        pixels = pixels.clone().requires_grad_(True)  # a graph even when every weight is frozen
        with torch.enable_grad():
            return _TRACERS[family](model, pixels, texts)
    with torch.no_grad():
        return _TRACERS[family](model, pixels, texts)


def backprop(trace: AttentionTrace) -> AttentionTrace:
    """Fill ``trace.gradients`` (and ``qformer_gradients``) with d(sum of scores)/d(attention weights)."""
    if trace.score is None:
        raise ValueError("this trace has no score to explain: trace with texts=...")
    if not trace.score.requires_grad:
        raise ValueError("this trace holds no autograd graph: trace with with_grad=True")
    inputs = list(trace.attentions) + [w for _, w in trace.qformer]
    grads = torch.autograd.grad(trace.score.sum(), inputs, allow_unused=True)
    trace.gradients = [g.detach() if g is not None else None for g in grads[: len(trace.attentions)]]
    trace.qformer_gradients = [g.detach() if g is not None else None for g in grads[len(trace.attentions):]]
    return trace


__all__ = ["ATTENTION_FAMILIES", "AttentionTrace", "backprop", "trace_attention"]
