"""The model interface shared by the models and the evaluation code.

- :class:`VLModel` -- common base: ``name``, ``family``, ``preprocess``, :meth:`~VLModel.fingerprint`,
  ``device``/``dtype``;
- :class:`DualEncoder` -- ``kind="dual"``: :meth:`tokenize`, :meth:`encode_image`, :meth:`encode_text`
  (L2-normalised; BLIP-2's image side is ``(B, 32, D)``, one normalised vector per query),
  :meth:`similarity` (multi-query: max over queries, as LAVIS), ``logit_scale``, :meth:`encode_texts`;
- :class:`CrossEncoder` -- ``kind="cross"``: :meth:`score` of aligned ``(image_i, text_i)`` pairs.

A model with both an ITC and an ITM head (BLIP, BLIP-2) is a :class:`DualEncoder` whose
:meth:`cross_encoder` returns an :class:`ITMView` sharing its weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn

from ..progress import tqdm
from .transforms import ImagePreprocess

FINGERPRINT_VERSION = 1


def weights_fingerprint(module: nn.Module, extra: dict | None = None, sample: int = 2048) -> str:
    """Stable hex digest of ``extra`` + every parameter and buffer of ``module``.

    Per tensor: name, shape, dtype, the exact bytes of ``sample`` evenly strided values and two float64
    sums (of all values, and of every 7th from the second, so most swaps are seen too). Costs about one
    pass over the weights on their own device (~0.2 s per 30M float32 values on one CPU core; ViT-g on a
    GPU is instant). Any changed weight changes the sums (beyond float64 rounding, ~1e-12 relative), so
    cached features are never reused by mistake. Sums are rounded to 12 digits: a different machine or
    thread count may, rarely, print them differently (a cache miss, never a wrong hit).
    """
    h = hashlib.sha256(json.dumps({"v": FINGERPRINT_VERSION, **(extra or {})}, sort_keys=True, default=str).encode())
    seen: set[int] = set()
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if id(t) in seen:
                continue
            seen.add(id(t))
            h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            flat = t.detach().reshape(-1)
            n = flat.numel()
            if n == 0:
                continue
            idx = torch.linspace(0, n - 1, min(n, sample), dtype=torch.float64, device=flat.device).round().long()
            h.update(flat[idx].to(torch.float64).cpu().numpy().tobytes())
            sums = [flat.sum(dtype=torch.float64), flat[1::7].sum(dtype=torch.float64)]
            h.update(",".join(f"{v.item():.12g}" for v in sums).encode())
    return h.hexdigest()


def encode_texts_batched(encode, texts: Sequence[str], batch_size: int = 256, progress: bool = False,
                         dim: int | None = None) -> torch.Tensor:
    """``encode(batch of texts) -> (B, ...)`` over ``texts`` in batches of ``batch_size``, under
    ``torch.inference_mode``; ``(len(texts), ...)`` float32 CPU rows in the order of ``texts``.

    Each distinct text is encoded once (a world test set repeats a fifth of its captions; a probe repeats the
    originals beside their foils), and the distinct texts go in order of length, so a batch is padded to about
    its own texts' length instead of the longest text in a random batch: on chapter 4's 2,500 world captions,
    MiniLM took 4.6 s instead of 9.8 s on one thread. A row's value does not depend on its batch beyond float
    rounding (about 3e-7 measured: the padding is masked out). ``dim``: the row width of the empty result."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index: dict[str, int] = {}
    ids = [index.setdefault(t, len(index)) for t in texts]  # texts[j] is distinct[ids[j]]
    distinct = list(index)
    order = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))  # stable: ties keep their order
    starts = range(0, len(order), batch_size)
    if progress:
        starts = tqdm(starts, desc="encoding texts", leave=False)
    with torch.inference_mode():
        out = [encode([distinct[i] for i in order[s : s + batch_size]]).float().cpu() for s in starts]
    if not out:
        return torch.empty(0, dim or 0)
    encoded = torch.cat(out)
    rows = torch.empty_like(encoded)
    rows[torch.tensor(order)] = encoded  # row i of `rows` is distinct[i]
    return rows[torch.tensor(ids)]


class VLModel(nn.Module):
    """Common base of every vlnb model adapter (an ``nn.Module`` holding the real network)."""

    family: str = ""
    kind: str = ""

    def __init__(self, name: str, preprocess: ImagePreprocess):
        super().__init__()
        self.name = str(name)
        self.preprocess = preprocess

    def adapter_config(self) -> dict:
        """Adapter settings that change outputs (max text length, ITM token...): part of the fingerprint."""
        return {}

    def hf_config(self) -> dict:
        """The wrapped network's config (HF ``config.to_dict()`` minus paths/versions), for the fingerprint."""
        cfg = getattr(getattr(self, "model", None), "config", None)
        if cfg is None:
            return {}
        d = cfg.to_dict()
        for k in ("_name_or_path", "transformers_version", "_attn_implementation_autoset", "_attn_implementation",
                  "_commit_hash", "torch_dtype", "dtype"):
            d.pop(k, None)
        return d

    def fingerprint(self) -> str:
        """Hex hash of family/kind, config, adapter settings, tokenizer and every weight (see
        :func:`weights_fingerprint`). The name/path is left out, so a moved checkpoint keeps its caches."""
        extra = {"family": self.family, "kind": self.kind, "config": self.hf_config(),
                 "adapter": self.adapter_config(), "tokenizer": tokenizer_id(getattr(self, "tokenizer", None))}
        return weights_fingerprint(self, extra)

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def __repr__(self) -> str:  # the wrapped network's repr is thousands of lines
        return f"{type(self).__name__}(name={self.name!r}, family={self.family!r}, kind={self.kind!r})"


class TextMixin:
    """Tokenisation with the model's own tokenizer, truncated to its max length."""

    tokenizer = None
    max_length: int = 0
    text_input_names: tuple[str, ...] = ("input_ids", "attention_mask")

    def prepare_texts(self, texts: Sequence[str]) -> list[str]:
        """Model-specific caption cleaning before tokenisation (identity unless overridden)."""
        return list(texts)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of str")
        enc = self.tokenizer(self.prepare_texts(texts), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: enc[k] for k in self.text_input_names if k in enc}


class DualEncoder(TextMixin, VLModel):
    """Images and texts embedded separately; similarity is a dot product of normalised embeddings."""

    kind = "dual"
    embed_dim: int = 0

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, **tokens) -> torch.Tensor:
        raise NotImplementedError

    @property
    def logit_scale(self) -> float | None:
        """The learned softmax temperature (exp'd), or None when the checkpoint has none."""
        return None

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor, chunk_elems: int = 2**26) -> torch.Tensor:
        """``(N, M)`` cosine similarities; for ``(N, Q, D)`` multi-query image embeddings the max over
        queries (LAVIS' BLIP-2 ITC), computed in image chunks to bound memory."""
        if text_emb.ndim != 2:
            raise ValueError(f"text_emb must be (M, D), got {tuple(text_emb.shape)}")
        text_emb = text_emb.to(image_emb.dtype)
        if image_emb.ndim == 2:
            return image_emb @ text_emb.T
        if image_emb.ndim != 3:
            raise ValueError(f"image_emb must be (N, D) or (N, Q, D), got {tuple(image_emb.shape)}")
        if len(image_emb) == 0:
            return image_emb.new_zeros(0, len(text_emb))
        step = max(1, chunk_elems // max(1, image_emb.shape[1] * text_emb.shape[0]))
        return torch.cat([torch.einsum("nqd,md->nqm", image_emb[i : i + step], text_emb).amax(dim=1)
                          for i in range(0, len(image_emb), step)])

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """``(len(texts), D)`` float32 CPU embeddings, batched under ``torch.inference_mode``
        (:func:`encode_texts_batched`: each distinct text once, batches of similar lengths)."""
        return encode_texts_batched(lambda batch: self.encode_text(**self.tokenize(batch)), texts, batch_size,
                                    progress, self.embed_dim)

    def tokens_on_device(self, tokens: dict) -> dict:
        return {k: v.to(self.device) for k, v in tokens.items() if k in self.text_input_names}


class CrossEncoder(TextMixin, VLModel):
    """One score per aligned (image, text) pair, from a joint forward pass."""

    kind = "cross"

    def score(self, pixel_values: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _check_pairs(pixel_values: torch.Tensor, texts: Sequence[str]) -> None:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        if len(pixel_values) != len(texts):
            raise ValueError(f"score() takes aligned pairs: {len(pixel_values)} images but {len(texts)} texts")


class ITMView(CrossEncoder):
    """The image-text-matching head of a BLIP/BLIP-2 adapter as a :class:`CrossEncoder` (shared weights).

    ``output="logit"``: the "match" logit (LAVIS adds it to the ITC similarity when re-ranking);
    ``"prob"``: softmax probability of "match".
    """

    def __init__(self, dual: DualEncoder, output: str = "logit"):
        if output not in ("logit", "prob"):
            raise ValueError(f"output must be 'logit' or 'prob', got {output!r}")
        super().__init__(dual.name, dual.preprocess)
        self.dual = dual
        self.output = output
        self.family = dual.family

    @property
    def tokenizer(self):
        return self.dual.tokenizer

    @property
    def max_length(self) -> int:
        return self.dual.max_length

    def prepare_texts(self, texts):
        return self.dual.prepare_texts(texts)

    def adapter_config(self) -> dict:
        return {**self.dual.adapter_config(), "head": "itm", "output": self.output}

    def hf_config(self) -> dict:
        return self.dual.hf_config()

    def score(self, pixel_values: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        self._check_pairs(pixel_values, texts)
        return self.dual.itm_score(pixel_values, list(texts), output=self.output)

    def score_indexed(self, pixel_values: torch.Tensor, pair_index: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Scores of pairs ``(pixel_values[pair_index[i]], texts[i])``, each distinct image encoded once."""
        if len(pair_index) != len(texts):
            raise ValueError(f"{len(pair_index)} pair indices but {len(texts)} texts")
        return self.dual.itm_score(pixel_values, list(texts), output=self.output, pair_index=pair_index)


def tokenizer_id(tok) -> dict | None:
    """A cheap identity of a tokenizer (class, size, specials, hash of its serialised vocabulary)."""
    if tok is None:
        return None
    cached = getattr(tok, "_vlnb_id", None)  # memoised per vocabulary size (serialising CLIP's takes ~0.3 s)
    if cached is not None and cached[0] == len(tok):
        return cached[1]
    try:  # the serialised pipeline minus the truncation/padding state that each call sets
        backend = json.loads(tok.backend_tokenizer.to_str())
        backend.pop("truncation", None)
        backend.pop("padding", None)
    except (AttributeError, ValueError):  # a slow (pure-Python) tokenizer
        backend = tok.get_vocab()
    backend = json.dumps(backend, sort_keys=True)
    ident = {"class": type(tok).__name__, "len": len(tok),
             "special": {k: str(v) for k, v in tok.special_tokens_map.items()},
             "vocab": hashlib.sha256(backend.encode()).hexdigest()[:16]}
    try:
        tok._vlnb_id = (len(tok), ident)
    except AttributeError:
        pass
    return ident


def hf_load_kwargs(attn_implementation: str | None = None, dtype=None) -> dict:
    """``from_pretrained`` kwargs: ``attn_implementation`` only when asked (HF picks sdpa where supported)."""
    kw = {}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    if dtype is not None:
        kw["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return kw


def load_hf_strict(model_cls, name: str, allow_missing: bool = False, **kw):
    """``model_cls.from_pretrained(name)`` that refuses checkpoints missing weights the model needs.

    A checkpoint of another head type (e.g. a BLIP captioner loaded as a retrieval model) would otherwise
    come with freshly initialised projection/ITM heads and silently produce meaningless scores.
    """
    model, info = model_cls.from_pretrained(name, output_loading_info=True, trust_remote_code=False, **kw)
    missing = list(info.get("missing_keys", []))
    if missing and not allow_missing:
        raise ValueError(
            f"{name} is missing {len(missing)} weight(s) that {model_cls.__name__} needs, e.g. {missing[:8]}: "
            "it is probably a checkpoint of another model/head type (pass allow_missing=True to load anyway)"
        )
    return model.eval()
