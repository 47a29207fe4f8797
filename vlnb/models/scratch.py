"""A CLIP-style dual encoder written from scratch: a ViT image tower and a transformer text tower.

Everything is small, explicit PyTorch (``F.scaled_dot_product_attention`` with boolean masks), so the
book can train it from random weights on CPU (preset ``tiny``: 64x64 images of the offline world) and
state exactly what it is (preset ``vit_b32``: the ViT-B/32 shape of OpenAI's CLIP, for GPUs).

Image tower: non-overlapping ``patch_size`` patches (a strided conv), a learned CLS token and learned
position embeddings, a pre-LayerNorm, pre-norm transformer blocks (GELU MLP), a final LayerNorm, CLS or
mean pooling and a linear projection to the shared space.

Text tower: token + learned position embeddings, pre-norm blocks, final LayerNorm, pooling and a
projection. Attention masks (always combined with the padding mask; every token may attend to itself):

- ``causal=True`` (CLIP): token ``t`` sees tokens ``<= t``; pooled at the last real token (EOT).
- ``causal=False``: bidirectional; pooled by masked mean (or the first token, ``text_pooling="cls"``).
- ``text_attention="local"``: sparse/local attention, token ``t`` sees only tokens within
  ``local_window`` positions (``t - w .. t`` if causal, ``t - w .. t + w`` otherwise).
- ``text_attention="memory"`` (called ``"cross"`` before; a saved config with that name still loads):
  every text block adds a cross-attention sub-layer whose keys/values are ``n_memory`` *learned* memory
  slots (Perceiver-style latents shared by all texts). This is not cross-*modal* attention: the text
  embedding never sees the image, so the model stays a true dual encoder (retrieval = one matrix product).
  Cross-attending to the *image's* patch tokens makes every (image, text) pair need its own text forward
  pass -- O(N x M) passes for retrieval -- which is what fusion encoders do: that text encoder is
  :class:`vlnb.models.fusion.ScratchBLIP` (BLIP's image-grounded text encoder with an ITM head).

Tokenizers: ``tokenizer="clip"`` is the real CLIP BPE (49,408 tokens, from the shared
``clip-vit-base-patch32`` files); ``"word"`` is :class:`WordTokenizer`, a small word-level vocabulary fit
to the training captions (right for the procedural world's few hundred words). Both right-pad and mark
real tokens in ``attention_mask``. :meth:`ScratchDualEncoder.save` writes safetensors weights, the JSON
config and the tokenizer; :meth:`ScratchDualEncoder.load` reads them back.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..device import resolve_device
from ..errors import ArtifactError, load_safetensors_artifact, read_json_artifact
from ..paths import atomic_write, atomic_write_text, shared_data_dir
from .base import DualEncoder
from .transforms import HALF, ImagePreprocess

SAVE_FORMAT = 1
WEIGHTS_FILE, CONFIG_FILE, WORD_VOCAB_FILE, BPE_DIR = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer",
)


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ScratchConfig:
    """Architecture of :class:`ScratchDualEncoder` (``PRESETS`` holds named ones)."""

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    #: image pooling: the CLS token's output or the mean of the patch tokens
    pooling: Literal["cls", "mean"] = "cls"
    embed_dim: int = 128
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    #: maximum text length in tokens, BOS/EOS included (longer texts are truncated)
    context_length: int = 32
    causal: bool = True
    #: "auto" = "eot" (last real token) when causal, "mean" when bidirectional
    text_pooling: Literal["auto", "eot", "mean", "cls"] = "auto"
    text_attention: Literal["self", "memory", "local"] = "self"
    #: half-width of the local attention window (text_attention="local")
    local_window: int = 4
    #: learned memory slots the text cross-attends to (text_attention="memory")
    n_memory: int = 8
    tokenizer: Literal["word", "clip"] = "word"
    #: initial log logit scale: log(1 / 0.07) as in CLIP
    init_logit_scale: float = math.log(1 / 0.07)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"invalid ScratchConfig: {msg}")

        need(
            self.image_size % self.patch_size == 0,
            f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}",
        )
        need(self.width % self.heads == 0, f"width {self.width} must be divisible by heads {self.heads}")
        need(
            self.text_width % self.text_heads == 0,
            f"text_width {self.text_width} must be divisible by text_heads {self.text_heads}",
        )
        need(self.pooling in ("cls", "mean"), f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        need(
            self.text_pooling in ("auto", "eot", "mean", "cls"), f"unknown text_pooling {self.text_pooling!r}"
        )
        need(
            self.text_attention != "cross",
            "text_attention 'cross' (learned memory slots) is now called 'memory'; a text encoder that "
            "cross-attends to the image's patches is vlnb.models.fusion.ScratchBLIP",
        )
        need(
            self.text_attention in ("self", "memory", "local"),
            f"unknown text_attention {self.text_attention!r}",
        )
        need(
            self.tokenizer in ("word", "clip"), f"tokenizer must be 'word' or 'clip', got {self.tokenizer!r}"
        )
        need(
            self.context_length >= 3,
            f"context_length must be >= 3 (BOS, a token, EOS), got {self.context_length}",
        )
        need(self.local_window >= 1 and self.n_memory >= 1, "local_window and n_memory must be >= 1")
        need(
            min(self.layers, self.text_layers, self.embed_dim) >= 1,
            "layers, text_layers and embed_dim must be >= 1",
        )

    @property
    def resolved_text_pooling(self) -> str:
        return ("eot" if self.causal else "mean") if self.text_pooling == "auto" else self.text_pooling

    @classmethod
    def preset(cls, name: str, **overrides) -> ScratchConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown ScratchConfig preset {name!r}; known: {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, d: dict) -> ScratchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ScratchConfig field(s) {unknown}; known: {sorted(known)}")
        if d.get("text_attention") == "cross":  # saved before the memory-slot variant was renamed
            d = {**d, "text_attention": "memory"}
        return cls(**d)


PRESETS = {
    # CPU-sized: 64x64 offline-world images, 8x8 patches (64 tokens), word tokenizer
    "tiny": ScratchConfig(),
    # the ViT-B/32 CLIP shape (OpenAI): 224px, 32px patches, 768x12 image / 512x12 text, 512-d space
    "vit_b32": ScratchConfig(
        image_size=224,
        patch_size=32,
        width=768,
        layers=12,
        heads=12,
        embed_dim=512,
        text_width=512,
        text_layers=12,
        text_heads=8,
        context_length=77,
        tokenizer="clip",
    ),
}


# ---------------------------------------------------------------------------------------------- tokenizers
class WordTokenizer:
    """Word-level tokenizer fit to a caption corpus: lower-cased words and punctuation marks.

    Ids: 0 ``<pad>``, 1 ``<unk>``, 2 ``<bos>``, 3 ``<eos>``, then the vocabulary by decreasing frequency
    (ties alphabetical, so fitting is deterministic). Encodes ``<bos> w1 ... wn <eos>``, truncated to
    ``max_length`` with ``<eos>`` kept, right-padded with ``<pad>``. Called like a HF tokenizer.
    """

    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
    PAD, UNK, BOS, EOS = range(4)
    _SPLIT = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[:4]) != self.SPECIALS or len(set(vocab)) != len(vocab):
            raise ValueError(f"vocab must start with {self.SPECIALS} and have no duplicates")
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls._SPLIT.findall(text.lower())

    @classmethod
    def fit(cls, captions: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> WordTokenizer:
        """Vocabulary of the words occurring at least ``min_freq`` times (at most ``max_size`` words)."""
        counts = Counter(w for c in captions for w in cls.split(c))
        if not counts:
            raise ValueError("cannot fit a WordTokenizer on no words (empty caption list?)")
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls(list(cls.SPECIALS) + words[:max_size])

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.index)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return dict(zip(("pad_token", "unk_token", "bos_token", "eos_token"), self.SPECIALS, strict=True))

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        ids = [self.index.get(w, self.UNK) for w in self.split(text)]
        if max_length is not None:
            ids = ids[: max(0, max_length - 2)]
        return [self.BOS, *ids, self.EOS]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i > self.EOS)

    def __call__(
        self, texts, padding=True, truncation=True, max_length: int | None = None, return_tensors="pt"
    ):
        """``{"input_ids", "attention_mask"}`` long tensors ``(B, L)``, L = longest (``padding=True``/
        ``"longest"``) or ``max_length`` (``padding="max_length"``)."""
        if return_tensors != "pt":
            raise ValueError("WordTokenizer only returns torch tensors (return_tensors='pt')")
        texts = [texts] if isinstance(texts, str) else list(texts)
        seqs = [self.encode(t, max_length if truncation else None) for t in texts]
        length = max_length if padding == "max_length" and max_length else max(map(len, seqs), default=2)
        # one tensor from padded lists: a copy per row cost a fifth of re-ranking's time
        rows = [s[:length] + [self.PAD] * (length - len(s[:length])) for s in seqs]
        ids = torch.tensor(rows, dtype=torch.long).reshape(len(seqs), length)
        return {"input_ids": ids, "attention_mask": (ids != self.PAD).long()}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"type": "vlnb-word", "vocab": self.vocab}))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        d = read_json_artifact(path, "tokenizer file")
        if not isinstance(d, dict) or d.get("type") != "vlnb-word" or not isinstance(d.get("vocab"), list):
            raise ArtifactError(f"{path}: not a vlnb WordTokenizer file (damaged or of another kind)")
        return cls(d["vocab"])


def clip_tokenizer(path: str | Path | None = None):
    """The real CLIP BPE tokenizer (``CLIPTokenizerFast``) from a local folder or a hub id such as
    ``openai/clip-vit-base-patch32`` (the full profile's source); default: the shared offline
    ``clip-vit-base-patch32`` files."""
    # lazy: transformers is slow to import; only loading a checkpoint needs it
    from transformers import CLIPTokenizerFast

    if path is None:
        path = shared_data_dir(required=True) / "clip-vit-base-patch32"
    p = Path(path)
    if not p.is_dir() and (p.is_absolute() or str(path).startswith(".") or p.exists() or str(path).count("/") != 1):
        raise FileNotFoundError(f"no CLIP tokenizer folder at {path} (give a folder or a hub id like "
                                "'openai/clip-vit-base-patch32')")
    return CLIPTokenizerFast.from_pretrained(str(path), trust_remote_code=False)


# ---------------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class IndexedContext:
    """Cross-attention keys/values shared between rows of a batch: row ``i`` attends to ``tokens[index[i]]``.

    Re-ranking scores many (image, text) pairs per image; with the image's tokens given once and an index per
    pair, :class:`Attention` projects each image's keys and values once instead of once per pair (a row's
    projection does not depend on the other rows, so the scores are the same to the bit:
    ``tests/test_fusion.py``)."""

    tokens: torch.Tensor  # (n distinct, S, width)
    index: torch.Tensor  # (B,) row of `tokens` for each row of the batch

    def __len__(self) -> int:
        return len(self.index)


class Attention(nn.Module):
    """Multi-head attention; ``context`` gives keys/values (cross-attention), ``mask`` is boolean
    ``(B or 1, 1, L, S)`` with True where a query may attend.

    ``keep_weights = True`` (off by default; :mod:`vlnb.interpret` sets it) computes the same attention
    explicitly (softmax of the scaled scores, masked keys at -inf) and keeps the ``(B, heads, L, S)``
    weights, still in the autograd graph, in ``weights`` for attention maps and gradient-based relevancy."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x, context=None, mask=None):
        b, n, w = x.shape
        if isinstance(context, IndexedContext):  # each distinct context projected once, then one per row
            kv = self.kv(context.tokens)[context.index.to(x.device)]
        else:
            kv = self.kv(x if context is None else context)
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = kv.view(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.keep_weights:
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            self.weights = scores.softmax(dim=-1)
            o = self.weights @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, cross: bool = False):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln_x, self.cross_attn = (nn.LayerNorm(width), Attention(width, heads)) if cross else (None, None)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x, mask=None, memory=None):
        x = x + self.attn(self.ln_1(x), mask=mask)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_x(x), context=memory)
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    def __init__(self, c: ScratchConfig):
        super().__init__()
        self.image_size, self.pooling = c.image_size, c.pooling
        n = (c.image_size // c.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.randn(c.width) * c.width**-0.5)
        self.pos_emb = nn.Parameter(torch.randn(n + 1, c.width) * 0.01)
        self.ln_pre = nn.LayerNorm(c.width)
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.ln_post = nn.LayerNorm(c.width)
        self.proj = nn.Linear(c.width, c.embed_dim, bias=False)

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """All output tokens ``(B, 1 + n_patches, width)`` (CLS first) after ``ln_post``, before pooling and the
        projection (what the fusion models read)."""
        s = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(f"expected pixel_values of shape (B, 3, {s}, {s}), got {tuple(pixels.shape)}")
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), 1, -1).to(x.dtype), x], dim=1) + self.pos_emb.to(x.dtype)
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_post(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.forward_tokens(pixels)
        return self.proj(x[:, 0] if self.pooling == "cls" else x[:, 1:].mean(dim=1))


def text_attention_mask(
    attention_mask: torch.Tensor, causal: bool, window: int | None = None
) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)`` mask (True = may attend): structure (causal and/or local window) AND the key
    is a real token, OR the key is the query itself (so padding rows never attend to nothing)."""
    n = attention_mask.shape[1]
    i = torch.arange(n, device=attention_mask.device)
    d = i[:, None] - i[None, :]  # query - key
    allowed = torch.ones(n, n, dtype=torch.bool, device=i.device)
    if causal:
        allowed &= d >= 0
    if window is not None:
        allowed &= d.abs() <= window
    allowed = allowed[None] & attention_mask.bool()[:, None, :]
    return (allowed | torch.eye(n, dtype=torch.bool, device=i.device)).unsqueeze(1)


class TextTransformer(nn.Module):
    def __init__(self, c: ScratchConfig, vocab_size: int):
        super().__init__()
        self.c = c
        cross = c.text_attention == "memory"
        self.token_embedding = nn.Embedding(vocab_size, c.text_width)
        self.pos_emb = nn.Parameter(torch.randn(c.context_length, c.text_width) * 0.01)
        self.memory = nn.Parameter(torch.randn(c.n_memory, c.text_width) * 0.02) if cross else None
        self.blocks = nn.ModuleList(
            Block(c.text_width, c.text_heads, c.mlp_ratio, cross) for _ in range(c.text_layers)
        )
        self.ln_final = nn.LayerNorm(c.text_width)
        self.proj = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token outputs ``(B, L, text_width)`` after the final LayerNorm (before pooling)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
        b, n = input_ids.shape
        if n > self.c.context_length:
            raise ValueError(
                f"text of {n} tokens exceeds context_length {self.c.context_length} "
                "(tokenize with truncation)"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        window = self.c.local_window if self.c.text_attention == "local" else None
        mask = text_attention_mask(attention_mask, self.c.causal, window)
        x = self.token_embedding(input_ids) + self.pos_emb[:n]
        memory = self.memory.expand(b, -1, -1) if self.memory is not None else None
        for blk in self.blocks:
            x = blk(x, mask=mask, memory=memory)
        return self.ln_final(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.forward_tokens(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        b, pooling, m = len(x), self.c.resolved_text_pooling, attention_mask.to(x.dtype)
        if pooling == "eot":  # last real token (right padding)
            pooled = x[torch.arange(b, device=x.device), attention_mask.long().sum(1).clamp(min=1) - 1]
        elif pooling == "mean":
            pooled = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        else:
            pooled = x[:, 0]
        return self.proj(pooled)


def init_tower(tower: nn.Module, width: int, layers: int) -> None:
    """CLIP's initialisation (OpenAI ``model.py``): stds that scale with the width and depth, so that
    even a narrow tower starts with input-dependent outputs (a fixed 0.02 would leave a 32-wide ViT's
    CLS output nearly constant and stall the first hundred steps)."""
    attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
    for blk in tower.blocks:
        for attn in filter(None, (blk.attn, blk.cross_attn)):
            for lin, std in ((attn.q, attn_std), (attn.kv, attn_std), (attn.out, proj_std)):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
        nn.init.normal_(blk.mlp[0].weight, std=fc_std)
        nn.init.normal_(blk.mlp[2].weight, std=proj_std)
        nn.init.zeros_(blk.mlp[0].bias)
        nn.init.zeros_(blk.mlp[2].bias)
    nn.init.normal_(tower.proj.weight, std=width**-0.5)


# ---------------------------------------------------------------------------------------------- model
class ScratchDualEncoder(DualEncoder):
    """A from-scratch CLIP (see module docstring). Build with :meth:`create`, reload with :meth:`load`.

    ``preprocess``: shortest edge to ``image_size`` (bicubic), center crop, ``[0, 1]``, then
    ``(x - 0.5) / 0.5``. ``log_logit_scale`` is the learnable log temperature (init ``log(1/0.07)``);
    the :attr:`logit_scale` property is its exp (the contract's value).
    """

    family = "scratch"

    def __init__(self, config: ScratchConfig, tokenizer, name: str = "scratch"):
        s = config.image_size
        super().__init__(name, ImagePreprocess(s, crop=s, resample="bicubic", mean=HALF, std=HALF))
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = config.context_length
        self.embed_dim = config.embed_dim
        self.visual = VisionTransformer(config)
        self.text = TextTransformer(config, vocab_size=len(tokenizer))
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        init_tower(self.visual, config.width, config.layers)
        init_tower(self.text, config.text_width, config.text_layers)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @classmethod
    def create(
        cls,
        config: ScratchConfig | str = "tiny",
        captions: Iterable[str] | None = None,
        tokenizer=None,
        seed: int | None = None,
        name: str = "scratch",
        **overrides,
    ) -> ScratchDualEncoder:
        """A randomly initialised model. ``config``: a :class:`ScratchConfig` or preset name (``overrides``
        replace fields). The tokenizer: ``tokenizer`` if given, else the CLIP BPE (``config.tokenizer ==
        "clip"``) or a :class:`WordTokenizer` fit to ``captions``. ``seed`` makes the initialisation
        reproducible (without touching the global RNG)."""
        cfg = (
            ScratchConfig.preset(config, **overrides)
            if isinstance(config, str)
            else replace(config, **overrides)
        )
        if tokenizer is None:
            if cfg.tokenizer == "clip":
                tokenizer = clip_tokenizer()
            elif captions is None:
                raise ValueError(
                    "a word-level tokenizer needs the training captions: pass captions=... "
                    "(or tokenizer=..., or config tokenizer='clip')"
                )
            else:
                tokenizer = WordTokenizer.fit(captions)
        if seed is None:
            return cls(cfg, tokenizer, name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg, tokenizer, name)

    def adapter_config(self) -> dict:
        return asdict(self.config)

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)`` L2-normalised image embeddings of preprocessed pixels."""
        return F.normalize(self.visual(pixel_values.to(self.device)), dim=-1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, embed_dim)`` L2-normalised text embeddings of :meth:`tokenize` output."""
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        return F.normalize(self.text(input_ids.to(self.device), attention_mask), dim=-1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None):
        """``(image_emb, text_emb)`` for aligned batches."""
        return self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask)

    # ------------------------------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` and the tokenizer into ``directory`` (each file atomically)."""


        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": str(SAVE_FORMAT)}))
        if isinstance(self.tokenizer, WordTokenizer):
            self.tokenizer.save(d / WORD_VOCAB_FILE)
            tok = "word"
        else:
            self.tokenizer.save_pretrained(str(d / BPE_DIR))
            tok = "hf"
        meta = {
            "format": SAVE_FORMAT,
            "family": self.family,
            "name": self.name,
            "tokenizer_files": tok,
            "config": asdict(self.config),
        }
        atomic_write_text(d / CONFIG_FILE, json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path, device="auto") -> ScratchDualEncoder:
        """Rebuild a model written by :meth:`save` (strict: every weight must be present and match).

        A damaged file (garbage or truncated JSON, tokenizer or safetensors) raises
        :class:`vlnb.errors.ArtifactError` naming it."""

        d = Path(directory)
        if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"{d} does not hold a saved ScratchDualEncoder ({CONFIG_FILE} + {WEIGHTS_FILE})"
            )
        meta = read_json_artifact(d / CONFIG_FILE, "model config")
        if not isinstance(meta, dict) or meta.get("family") != cls.family or meta.get("format") != SAVE_FORMAT:
            raise ArtifactError(f"{d / CONFIG_FILE} is not a vlnb scratch model (format {SAVE_FORMAT})")
        if meta.get("tokenizer_files") == "word":
            tokenizer = WordTokenizer.load(d / WORD_VOCAB_FILE)
        else:
            # lazy: transformers is slow to import; only loading a checkpoint needs it
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(d / BPE_DIR), trust_remote_code=False)
            except Exception as e:  # noqa: BLE001 -- tokenizers/JSON errors name no file
                raise ArtifactError(f"{d / BPE_DIR}: damaged tokenizer files ({type(e).__name__}: {e})") from None
        state = load_safetensors_artifact(d / WEIGHTS_FILE)
        try:
            model = cls(ScratchConfig.from_dict(meta["config"]), tokenizer, meta.get("name", str(d)))
            model.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{d}: {WEIGHTS_FILE} does not match {CONFIG_FILE} ({type(e).__name__}: "
                                f"{str(e)[:300]})") from None

        return model.to(resolve_device(device)).eval()
