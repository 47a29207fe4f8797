"""CLIP (any ``CLIPModel`` checkpoint) as a :class:`~vlnb.models.base.DualEncoder`.

Protocol (OpenAI ``clip``): image -> ``get_image_features`` (pooled CLS -> visual projection), text ->
``get_text_features`` (EOS token -> text projection), both L2-normalised; texts truncated to 77 tokens with
EOS kept last; images resized (shortest edge 224, bicubic), center-cropped 224, normalised with CLIP's
mean/std (read from the checkpoint's ``preprocessor_config.json``). ``logit_scale`` is the checkpoint's
learned temperature, exp'd (100 for the OpenAI models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..device import resolve_device
from .base import DualEncoder, hf_load_kwargs, load_hf_strict
from .transforms import ImagePreprocess


def pooled(out, expected_dim: int, what: str) -> torch.Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4.x) or an output object
    whose ``pooler_output`` holds the projection (transformers 5.x)."""
    emb = out if isinstance(out, torch.Tensor) else getattr(out, "pooler_output", None)
    if emb is None or emb.ndim != 2 or emb.shape[-1] != expected_dim:
        got = None if emb is None else tuple(emb.shape)
        raise RuntimeError(f"{what} did not return projected (B, {expected_dim}) embeddings (got {got}); "
                           "this transformers version changed get_*_features")
    return emb


class CLIPAdapter(DualEncoder):
    family = "clip"

    def __init__(self, model, tokenizer, preprocess: ImagePreprocess, name: str):
        super().__init__(name, preprocess)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.embed_dim = int(model.config.projection_dim)
        self.max_length = int(min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings))

    @classmethod
    def from_pretrained(cls, name: str, device="auto", attn_implementation=None, dtype=None, allow_missing=False):
        # lazy: transformers is slow to import; only loading a checkpoint needs it
        from transformers import AutoTokenizer, CLIPModel

        model = load_hf_strict(CLIPModel, name, allow_missing, **hf_load_kwargs(attn_implementation, dtype))
        return cls(model, AutoTokenizer.from_pretrained(name, trust_remote_code=False), ImagePreprocess.from_hf(name), name).to(resolve_device(device))

    def adapter_config(self) -> dict:
        return {"max_length": self.max_length}

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))
        return F.normalize(pooled(out, self.embed_dim, "get_image_features"), dim=-1)

    def encode_text(self, **tokens) -> torch.Tensor:
        out = self.model.get_text_features(**self.tokens_on_device(tokens))
        return F.normalize(pooled(out, self.embed_dim, "get_text_features"), dim=-1)
