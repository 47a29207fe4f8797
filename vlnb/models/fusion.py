"""Fusion encoders written from scratch, beside the dual encoder of :mod:`vlnb.models.scratch`.

Three architectures of the field, built from the same layers (:class:`~vlnb.models.scratch.Block`,
:class:`~vlnb.models.scratch.Attention`, the ViT of :class:`~vlnb.models.scratch.VisionTransformer`) and the
same word tokenizer, small enough to train on the offline world on a CPU:

- :class:`ScratchViLT` -- **ViLT-like single stream** (Kim et al. 2021): word tokens and image patch tokens,
  each with its own position embedding plus a *modality-type* embedding, go through one transformer; the
  first (``<bos>``) token's output, through a tanh pooler, feeds a 2-way image-text-matching (ITM) head.
  A :class:`~vlnb.models.base.CrossEncoder`: one forward pass per (image, text) pair, no embedding, so
  retrieval re-ranks another model's ITC top-k. Trained with ITM only (:mod:`vlnb.train.itm`), on hard
  negatives mined from a dual encoder's similarities plus random in-batch negatives.
- :class:`ScratchBLIP` -- **BLIP-like (ALBEF-style)**: an ITC dual encoder (ViT + bidirectional text
  transformer, ``<bos>`` pooled) whose text layers also hold a cross-attention sub-layer to the image's patch
  tokens. Unimodal mode skips it (ITC embeddings, as BLIP's text encoder); grounded mode runs it (an
  image-grounded text encoder, a learned ``[ENC]`` embedding added to the first token, as BLIP's ``[ENC]``)
  and the first token feeds the ITM head. Weights of the text layers are shared by both modes. Trained with
  ITC + ITM on hard negatives mined from its own ITC similarities. Retrieval = ITC top-k, then ITM re-rank
  (:meth:`~ScratchBLIP.cross_encoder`, the protocol of :mod:`vlnb.eval.rerank`).
- :class:`ScratchQFormer` -- **BLIP-2-like Q-Former** (Li et al. 2023): ``n_queries`` learned query vectors
  that self-attend and cross-attend to the patch tokens of a *frozen* image tower (here the trained scratch
  ViT of the offline world, copied in and frozen). Text goes through the same self-attention layers
  (no cross-attention). ITC: one normalised embedding per query, similarity = **max over queries**
  (:meth:`~vlnb.models.base.DualEncoder.similarity` with ``(B, Q, D)`` image embeddings); ITM: queries and
  text in one bidirectional pass, the ITM logits averaged over the query outputs (as BLIP-2).

All three save ``model.safetensors`` + ``config.json`` (family ``"fusion"``) + the word vocabulary, and load
strictly (:func:`load_fusion`; :func:`vlnb.models.load_model` recognises the folder). Nothing in a config runs
as code: the architecture name selects one of the three classes above.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..device import resolve_device
from .base import CrossEncoder, DualEncoder, ITMView
from .scratch import (
    Block,
    IndexedContext,
    ScratchConfig,
    VisionTransformer,
    WordTokenizer,
    init_tower,
    text_attention_mask,
)
from .transforms import HALF, ImagePreprocess

FAMILY = "fusion"
SAVE_FORMAT = 1
WEIGHTS_FILE, CONFIG_FILE, WORD_VOCAB_FILE = "model.safetensors", "config.json", "tokenizer.json"
ARCHS = ("vilt", "blip", "qformer")


@dataclass(frozen=True)
class FusionConfig:
    """Architecture of a fusion model (``arch`` picks the class; unused fields are ignored by it)."""

    arch: Literal["vilt", "blip", "qformer"] = "vilt"
    #: input resolution and ViT patch (ViLT, BLIP); the Q-Former takes its frozen tower's
    image_size: int = 32
    patch_size: int = 8
    #: width / depth of the fused stream (ViLT), of the ViT (BLIP) or of the Q-Former
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    #: BLIP's text transformer depth (its width is ``width``)
    text_layers: int = 2
    context_length: int = 32
    #: ITC embedding size (BLIP, Q-Former)
    embed_dim: int = 64
    #: Q-Former: number of learned queries
    n_queries: int = 8
    init_logit_scale: float = math.log(1 / 0.07)
    #: Q-Former: the frozen image tower's architecture (a ScratchConfig as a dict)
    backbone: dict | None = None

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"invalid FusionConfig: {msg}")

        need(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        need(self.image_size % self.patch_size == 0,
             f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        need(self.width % self.heads == 0, f"width {self.width} must be divisible by heads {self.heads}")
        need(min(self.layers, self.text_layers, self.embed_dim, self.n_queries) >= 1,
             "layers, text_layers, embed_dim and n_queries must be >= 1")
        need(self.context_length >= 3, f"context_length must be >= 3, got {self.context_length}")
        need(self.arch != "qformer" or isinstance(self.backbone, dict),
             "a Q-Former needs backbone= the frozen ViT's ScratchConfig (as a dict)")

    @classmethod
    def from_dict(cls, d: dict) -> FusionConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FusionConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def vit_config(self) -> ScratchConfig:
        """The ScratchConfig of this model's own ViT (BLIP) or of its frozen tower (Q-Former)."""
        if self.arch == "qformer":
            return ScratchConfig.from_dict(self.backbone)
        return ScratchConfig(image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                             layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio,
                             embed_dim=self.embed_dim, text_width=self.width, text_heads=self.heads,
                             context_length=self.context_length)


# ---------------------------------------------------------------------------------------------- helpers
def block_forward(blk: Block, x: torch.Tensor, mask=None, context=None, cross_rows: int | None = None):
    """One pre-norm block with its cross-attention applied only when ``context`` is given (to the first
    ``cross_rows`` positions, all when None): BLIP's unimodal / grounded modes share these weights."""
    x = x + blk.attn(blk.ln_1(x), mask=mask)
    if context is not None and blk.cross_attn is not None:
        if cross_rows is None:
            x = x + blk.cross_attn(blk.ln_x(x), context=context)
        else:
            head = x[:, :cross_rows]
            x = torch.cat([head + blk.cross_attn(blk.ln_x(head), context=context), x[:, cross_rows:]], dim=1)
    return x + blk.mlp(blk.ln_2(x))


def _init_blocks(blocks: nn.ModuleList, width: int) -> None:
    holder = nn.Module()
    holder.blocks, holder.proj = blocks, nn.Linear(1, 1)  # init_tower also initialises a proj; a dummy one
    init_tower(holder, width, len(blocks))


def _preprocess(size: int) -> ImagePreprocess:
    return ImagePreprocess(size, crop=size, resample="bicubic", mean=HALF, std=HALF)


def _check_ids(input_ids: torch.Tensor, context_length: int) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] > context_length:
        raise ValueError(f"text of {input_ids.shape[1]} tokens exceeds context_length {context_length} "
                         "(tokenize with truncation)")


class _FusionBase:
    """Save/load, tokenizer and fingerprint plumbing shared by the three fusion models."""

    family = FAMILY
    config: FusionConfig

    def adapter_config(self) -> dict:
        return asdict(self.config)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` and the word vocabulary into ``directory``."""

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE), metadata={"format": str(SAVE_FORMAT)})
        self.tokenizer.save(d / WORD_VOCAB_FILE)
        meta = {"format": SAVE_FORMAT, "family": FAMILY, "arch": self.config.arch, "name": self.name,
                "config": asdict(self.config)}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return d

    def _texts_to_tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}


def _itm_output(logits: torch.Tensor, output: str) -> torch.Tensor:
    if output == "logit":
        return logits[:, 1]
    if output == "prob":
        return logits.softmax(dim=-1)[:, 1]
    raise ValueError(f"output must be 'logit' or 'prob', got {output!r}")


# ---------------------------------------------------------------------------------------------- ViLT
class ScratchViLT(_FusionBase, CrossEncoder):
    """ViLT-like single-stream cross encoder (see the module docstring)."""

    def __init__(self, config: FusionConfig, tokenizer: WordTokenizer, name: str = "vilt-world"):
        if config.arch != "vilt":
            raise ValueError(f"ScratchViLT needs arch='vilt', got {config.arch!r}")
        super().__init__(name, _preprocess(config.image_size))
        c, w = config, config.width
        self.config, self.tokenizer, self.max_length = config, tokenizer, config.context_length
        n = (c.image_size // c.patch_size) ** 2
        self.token_embedding = nn.Embedding(len(tokenizer), w)
        self.text_pos = nn.Parameter(torch.randn(c.context_length, w) * 0.01)
        self.patch_embed = nn.Conv2d(3, w, c.patch_size, stride=c.patch_size, bias=False)
        self.image_pos = nn.Parameter(torch.randn(n, w) * 0.01)
        self.type_embedding = nn.Embedding(2, w)  # 0 = text, 1 = image (ViLT's modality-type embedding)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(w)
        self.pooler = nn.Linear(w, w)
        self.itm_head = nn.Linear(w, 2)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.type_embedding.weight, std=0.02)
        _init_blocks(self.blocks, w)

    def itm_logits(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 2)`` ITM logits (no-match, match) of aligned pairs."""
        c = self.config
        _check_ids(input_ids, c.context_length)
        s = c.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(f"expected pixel_values of shape (B, 3, {s}, {s}), got {tuple(pixel_values.shape)}")
        dev = self.device
        input_ids = input_ids.to(dev)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(dev)
        b, n_txt = input_ids.shape
        txt = self.token_embedding(input_ids) + self.text_pos[:n_txt] + self.type_embedding.weight[0]
        img = self.patch_embed(pixel_values.to(dev, self.dtype)).flatten(2).transpose(1, 2)
        img = img + self.image_pos + self.type_embedding.weight[1]
        x = self.ln_pre(torch.cat([txt, img], dim=1))
        keys = torch.cat([attention_mask.bool(), torch.ones(b, img.shape[1], dtype=torch.bool, device=dev)], 1)
        n = x.shape[1]
        mask = (keys[:, None, :] | torch.eye(n, dtype=torch.bool, device=dev)[None]).unsqueeze(1)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        pooled = torch.tanh(self.pooler(self.ln_final(x)[:, 0]))
        return self.itm_head(pooled)

    def score(self, pixel_values: torch.Tensor, texts: Sequence[str], output: str = "logit") -> torch.Tensor:
        """ITM "match" logit (or probability) of each aligned ``(pixel_values[i], texts[i])`` pair."""
        self._check_pairs(pixel_values, texts)
        return _itm_output(self.itm_logits(pixel_values, **self._texts_to_tokens(texts)), output)


# ---------------------------------------------------------------------------------------------- BLIP
class GroundedTextEncoder(nn.Module):
    """Bidirectional text transformer whose blocks carry a cross-attention sub-layer, used only when image
    tokens are given (BLIP's text encoder: unimodal for ITC, image-grounded for ITM)."""

    def __init__(self, c: FusionConfig, vocab_size: int, width: int, layers: int):
        super().__init__()
        self.context_length = c.context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Parameter(torch.randn(c.context_length, width) * 0.01)
        self.enc_token = nn.Parameter(torch.zeros(width))  # BLIP's [ENC]: marks the grounded mode
        self.blocks = nn.ModuleList(Block(width, c.heads, c.mlp_ratio, cross=True) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        _init_blocks(self.blocks, width)

    def forward(self, input_ids, attention_mask=None, image_tokens=None) -> torch.Tensor:
        """Per-token outputs ``(B, L, width)``; grounded in ``image_tokens`` ``(B, N, width)`` when given."""
        _check_ids(input_ids, self.context_length)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = text_attention_mask(attention_mask, causal=False)
        x = self.token_embedding(input_ids) + self.pos_emb[: input_ids.shape[1]]
        if image_tokens is not None:
            x = torch.cat([x[:, :1] + self.enc_token, x[:, 1:]], dim=1)
        for blk in self.blocks:
            x = block_forward(blk, x, mask=mask, context=image_tokens)
        return self.ln_final(x)


class ScratchBLIP(_FusionBase, DualEncoder):
    """BLIP-like model: ITC dual encoder + image-grounded text encoder with an ITM head."""

    def __init__(self, config: FusionConfig, tokenizer: WordTokenizer, name: str = "blip-world"):
        if config.arch != "blip":
            raise ValueError(f"ScratchBLIP needs arch='blip', got {config.arch!r}")
        super().__init__(name, _preprocess(config.image_size))
        c, w = config, config.width
        self.config, self.tokenizer, self.max_length, self.embed_dim = config, tokenizer, c.context_length, c.embed_dim
        self.visual = VisionTransformer(c.vit_config())
        init_tower(self.visual, w, c.layers)
        self.text = GroundedTextEncoder(c, len(tokenizer), w, c.text_layers)
        self.text_proj = nn.Linear(w, c.embed_dim, bias=False)
        nn.init.normal_(self.text_proj.weight, std=w**-0.5)
        self.itm_head = nn.Linear(w, 2)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(c.init_logit_scale)))

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual.forward_tokens(pixel_values.to(self.device, self.dtype))

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual.proj(tokens[:, 0]), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)`` L2-normalised ITC image embeddings (the ViT's CLS, projected)."""
        return self.embed_image_tokens(self.image_tokens(pixel_values))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, embed_dim)`` L2-normalised ITC text embeddings (unimodal mode, first token, projected)."""
        am = None if attention_mask is None else attention_mask.to(self.device)
        return F.normalize(self.text_proj(self.text(input_ids.to(self.device), am)[:, 0]), dim=-1)

    def itm_logits_from_tokens(self, image_tokens: torch.Tensor | IndexedContext, input_ids,
                               attention_mask=None) -> torch.Tensor:
        """``(B, 2)`` ITM logits of aligned pairs from precomputed image tokens (``(B, N, width)``, or an
        :class:`IndexedContext` of each distinct image's tokens and an image row per pair)."""
        am = None if attention_mask is None else attention_mask.to(self.device)
        h = self.text(input_ids.to(self.device), am, image_tokens=image_tokens)
        return self.itm_head(h[:, 0])

    def itm_score(self, pixel_values: torch.Tensor, texts: list[str], output: str = "logit",
                  pair_index: torch.Tensor | None = None) -> torch.Tensor:
        """ITM scores ``(B,)`` of aligned pairs; with ``pair_index`` each distinct image is encoded, and its
        cross-attention keys and values projected, once."""
        img = self.image_tokens(pixel_values)
        if pair_index is not None:
            img = IndexedContext(img, pair_index)  # Attention moves the index to the batch's device
        return _itm_output(self.itm_logits_from_tokens(img, **self._texts_to_tokens(texts)), output)

    def cross_encoder(self, output: str = "logit") -> ITMView:
        return ITMView(self, output)


# ---------------------------------------------------------------------------------------------- Q-Former
class ScratchQFormer(_FusionBase, DualEncoder):
    """BLIP-2-like Q-Former over a frozen scratch ViT (see the module docstring).

    ``encode_image`` returns ``(B, n_queries, embed_dim)`` normalised query embeddings; the inherited
    :meth:`similarity` takes the max over queries. The frozen tower (``self.backbone``) never trains
    (``requires_grad=False``, kept in eval mode) and is saved with the model, so a reload is self-contained.
    """

    def __init__(self, config: FusionConfig, tokenizer: WordTokenizer, name: str = "qformer-world"):
        if config.arch != "qformer":
            raise ValueError(f"ScratchQFormer needs arch='qformer', got {config.arch!r}")
        vc = config.vit_config()
        super().__init__(name, _preprocess(vc.image_size))
        c, w = config, config.width
        self.config, self.tokenizer, self.max_length, self.embed_dim = config, tokenizer, c.context_length, c.embed_dim
        self.backbone = VisionTransformer(vc)
        self.backbone.requires_grad_(False)
        self.image_in = nn.Sequential(nn.LayerNorm(vc.width), nn.Linear(vc.width, w))
        self.query_tokens = nn.Parameter(torch.randn(c.n_queries, w) * 0.02)
        self.token_embedding = nn.Embedding(len(tokenizer), w)
        self.pos_emb = nn.Parameter(torch.randn(c.context_length, w) * 0.01)
        self.blocks = nn.ModuleList(Block(w, c.heads, c.mlp_ratio, cross=True) for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(w)
        self.vision_proj = nn.Linear(w, c.embed_dim, bias=False)
        self.text_proj = nn.Linear(w, c.embed_dim, bias=False)
        self.itm_head = nn.Linear(w, 2)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        _init_blocks(self.blocks, w)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(c.init_logit_scale)))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / statistics updates, ever
        return self

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def load_backbone(self, vit: VisionTransformer) -> ScratchQFormer:
        """Copy the weights of a trained scratch ViT into the frozen tower (strict)."""
        self.backbone.load_state_dict(vit.state_dict())
        self.backbone.requires_grad_(False)
        return self

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + n_patches, backbone width)`` patch tokens of the frozen tower (cacheable: they never change;
        its weights take no gradient, the input still may, for gradient-based saliency)."""
        return self.backbone.eval().forward_tokens(pixel_values.to(self.device, self.dtype))

    def query_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, Q, width)`` query outputs over frozen ``features`` (queries self- and cross-attend)."""
        ctx = self.image_in(features.to(self.device, self.dtype))
        x = self.query_tokens.expand(len(ctx), -1, -1)
        for blk in self.blocks:
            x = block_forward(blk, x, context=ctx)
        return self.ln_final(x)

    def _embed_text(self, input_ids):
        _check_ids(input_ids, self.config.context_length)
        return self.token_embedding(input_ids) + self.pos_emb[: input_ids.shape[1]]

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(self.query_outputs(features)), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, n_queries, embed_dim)`` L2-normalised query embeddings."""
        return self.embed_features(self.frozen_features(pixel_values))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, embed_dim)``: the text-only pass (self-attention, no queries, no image), first token."""
        input_ids = input_ids.to(self.device)
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        x = self._embed_text(input_ids)
        mask = text_attention_mask(am, causal=False)
        for blk in self.blocks:
            x = block_forward(blk, x, mask=mask)
        return F.normalize(self.text_proj(self.ln_final(x)[:, 0]), dim=-1)

    def itm_logits_from_features(self, features: torch.Tensor, input_ids, attention_mask=None,
                                 pair_index: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 2)`` ITM logits: queries + text in one bidirectional pass, queries cross-attend to the
        frozen features, the head's logits averaged over the query outputs (BLIP-2). With ``pair_index``,
        ``features`` holds each distinct image once and pair ``i`` reads row ``pair_index[i]``."""
        input_ids = input_ids.to(self.device)
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        ctx = self.image_in(features.to(self.device, self.dtype))
        if pair_index is not None:
            ctx = IndexedContext(ctx, pair_index)
        b, q = len(ctx), self.config.n_queries
        x = torch.cat([self.query_tokens.expand(b, -1, -1), self._embed_text(input_ids)], dim=1)
        keys = torch.cat([torch.ones(b, q, dtype=torch.bool, device=x.device), am.bool()], dim=1)
        n = x.shape[1]
        mask = (keys[:, None, :] | torch.eye(n, dtype=torch.bool, device=x.device)[None]).unsqueeze(1)
        for blk in self.blocks:
            x = block_forward(blk, x, mask=mask, context=ctx, cross_rows=q)
        return self.itm_head(self.ln_final(x)[:, :q]).mean(dim=1)

    def itm_score(self, pixel_values: torch.Tensor, texts: list[str], output: str = "logit",
                  pair_index: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.frozen_features(pixel_values)
        logits = self.itm_logits_from_features(feats, **self._texts_to_tokens(texts), pair_index=pair_index)
        return _itm_output(logits, output)

    def cross_encoder(self, output: str = "logit") -> ITMView:
        return ITMView(self, output)


# ---------------------------------------------------------------------------------------------- build / load
CLASSES = {"vilt": ScratchViLT, "blip": ScratchBLIP, "qformer": ScratchQFormer}


def create_fusion(config: FusionConfig | dict, captions: Iterable[str] | None = None,
                  tokenizer: WordTokenizer | None = None, seed: int | None = None, name: str | None = None,
                  backbone: VisionTransformer | None = None):
    """A randomly initialised fusion model (``config.arch`` picks the class). The word tokenizer is
    ``tokenizer`` or one fit to ``captions``; ``seed`` makes the initialisation reproducible without touching
    the global RNG; a Q-Former copies ``backbone`` (a trained scratch ViT, required) into its frozen tower."""
    cfg = config if isinstance(config, FusionConfig) else FusionConfig.from_dict(dict(config))
    if tokenizer is None:
        if captions is None:
            raise ValueError("a fusion model needs its word tokenizer: pass captions=... or tokenizer=...")
        tokenizer = WordTokenizer.fit(captions)
    cls = CLASSES[cfg.arch]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(cfg, tokenizer, name or f"{cfg.arch}-world")
    if cfg.arch == "qformer":
        if backbone is None:
            raise ValueError("a Q-Former needs backbone= the trained (frozen) scratch ViT")
        model.load_backbone(backbone)
    return model


def qformer_config(vit_config: ScratchConfig, **fields_) -> FusionConfig:
    """A Q-Former config over a scratch ViT of architecture ``vit_config`` (its image size, text length)."""
    base = {"arch": "qformer", "image_size": vit_config.image_size, "patch_size": vit_config.patch_size,
            "context_length": vit_config.context_length, "backbone": asdict(vit_config)}
    return FusionConfig(**{**base, **fields_})


def is_fusion_dir(path) -> bool:
    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("family") == FAMILY
    except (ValueError, AttributeError, OSError):
        return False


def load_fusion(directory: str | Path, device="auto"):
    """Rebuild a fusion model written by ``save`` (strict: every weight must be present and match)."""

    d = Path(directory)
    if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{d} does not hold a saved fusion model ({CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        meta = json.loads((d / CONFIG_FILE).read_text())
    except ValueError as e:
        raise ValueError(f"{d / CONFIG_FILE}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("family") != FAMILY or meta.get("format") != SAVE_FORMAT:
        raise ValueError(f"{d / CONFIG_FILE} is not a vlnb fusion model (family {FAMILY!r}, format {SAVE_FORMAT})")
    cfg = FusionConfig.from_dict(meta.get("config") or {})
    if meta.get("arch") != cfg.arch:
        raise ValueError(f"{d / CONFIG_FILE}: field 'arch' {meta.get('arch')!r} disagrees with config.arch {cfg.arch!r}")
    tokenizer = WordTokenizer.load(d / WORD_VOCAB_FILE)
    model = CLASSES[cfg.arch](cfg, tokenizer, str(meta.get("name", d.name)))
    model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    if cfg.arch == "qformer":
        model.backbone.requires_grad_(False)

    return model.to(resolve_device(device)).eval()


__all__ = [
    "ARCHS", "FAMILY", "FusionConfig", "GroundedTextEncoder", "ScratchBLIP", "ScratchQFormer", "ScratchViLT",
    "block_forward", "create_fusion", "is_fusion_dir", "load_fusion", "qformer_config",
]
