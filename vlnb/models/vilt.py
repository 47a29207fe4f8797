"""ViLT (``ViltForImageAndTextRetrieval``, e.g. ``dandelin/vilt-b32-finetuned-coco``) as a cross encoder.

ViLT embeds 32x32 pixel patches directly, so its score depends on exactly which patches it sees. Two
things can silently go wrong and are guarded here:

- the patch grid must follow the input size: an ``H x W`` input gives ``(H/32) x (W/32)`` patches plus one
  image CLS token. Inputs that are not multiples of the patch size are refused, and a forward hook on the
  embedding layer checks that the number of image tokens the transformer receives equals that grid
  (:class:`PatchGridError` otherwise);
- ``config.max_image_length`` >= 0 makes HF *randomly sample* that many patches (ViLT's pre-training
  trick). Retrieval fine-tuning/evaluation uses all patches (``max_image_len=-1`` in ViLT's configs), so it
  is set to -1 on load.

Preprocessing: ViLT's processor resizes the shorter side to 384 (longer side <= 640, multiples of 32) and
pads batches with a ``pixel_mask``. The shared pixel contract here is one ``(B, 3, H, W)`` tensor, so this
adapter resizes to a fixed **square** of the processor's shortest edge (384x384 -> 12x12 = 144 patches,
exactly the grid of ViLT's position embeddings), bicubic, normalised with the processor's mean/std (0.5);
``pixel_mask`` is all ones and built internally, so ``preprocess`` returns a plain tensor. Scores are the
``rank_output`` logits. Texts: BERT tokenizer, truncated to ``max_position_embeddings`` (40).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import CrossEncoder, hf_load_kwargs, load_hf_strict
from .transforms import PIL_RESAMPLE_CODES, ImagePreprocess, read_preprocessor_config


class PatchGridError(RuntimeError):
    """ViLT saw a different number of image tokens than its input size implies."""


def vilt_preprocess(source, patch_size: int) -> ImagePreprocess:
    """Square resize to the ViLT processor's ``shortest_edge`` (see the module docstring)."""
    cfg = source if isinstance(source, dict) else read_preprocessor_config(source)
    size = cfg.get("size", 384)
    side = int(size["shortest_edge"] if isinstance(size, dict) else size)
    divisor = int(cfg.get("size_divisor", patch_size))
    if side % patch_size or side % divisor:
        raise ValueError(f"ViLT input side {side} is not a multiple of patch size {patch_size} / size_divisor {divisor}")
    return ImagePreprocess((side, side), None, PIL_RESAMPLE_CODES[int(cfg.get("resample", 3))],
                           cfg.get("image_mean", (0.5, 0.5, 0.5)), cfg.get("image_std", (0.5, 0.5, 0.5)))


class ViLTAdapter(CrossEncoder):
    family = "vilt"
    text_input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model, tokenizer, preprocess: ImagePreprocess, name: str):
        super().__init__(name, preprocess)
        model.config.max_image_length = -1  # use every patch (see the module docstring)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(min(tokenizer.model_max_length, model.config.max_position_embeddings))
        self.last_image_tokens: int | None = None

    @classmethod
    def from_pretrained(cls, name: str, device="cpu", attn_implementation=None, dtype=None, allow_missing=False):
        from transformers import AutoTokenizer, ViltForImageAndTextRetrieval

        kwargs = hf_load_kwargs(attn_implementation, dtype)
        model = load_hf_strict(ViltForImageAndTextRetrieval, name, allow_missing, **kwargs)
        pre = vilt_preprocess(name, _patch(model.config))
        return cls(model, AutoTokenizer.from_pretrained(name), pre, name).to(device)

    def adapter_config(self) -> dict:
        return {"max_length": self.max_length, "pixel_mask": "all-ones"}

    @property
    def patch_size(self) -> int:
        return _patch(self.model.config)

    def expected_image_tokens(self, height: int, width: int) -> int:
        """Image CLS + one token per patch of an ``height x width`` input."""
        p = self.patch_size
        if height % p or width % p:
            raise PatchGridError(f"input {height}x{width} is not a multiple of ViLT's {p}-pixel patches; "
                                 f"patches would be dropped at the border")
        return 1 + (height // p) * (width // p)

    def score(self, pixel_values: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """``rank_output`` logits ``(B,)`` of aligned pairs; asserts the patch grid (module docstring)."""
        self._check_pairs(pixel_values, texts)
        expected = self.expected_image_tokens(*pixel_values.shape[-2:])
        t = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        pixels = pixel_values.to(self.device, self.dtype)
        seen = {}

        def hook(_module, _inputs, output):
            embeddings, masks = output[0], output[1]
            seen["image_tokens"] = embeddings.shape[1] - t["input_ids"].shape[1]
            seen["valid"] = masks[:, t["input_ids"].shape[1]:].bool().all().item()

        handle = self.model.vilt.embeddings.register_forward_hook(hook)
        try:
            logits = self.model(**t, pixel_values=pixels,
                                pixel_mask=torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long,
                                                      device=self.device)).logits
        finally:
            handle.remove()
        self.last_image_tokens = seen.get("image_tokens")
        if seen.get("image_tokens") != expected or not seen.get("valid", False):
            raise PatchGridError(
                f"ViLT received {seen.get('image_tokens')} image tokens (all valid: {seen.get('valid')}) for a "
                f"{pixels.shape[-2]}x{pixels.shape[-1]} input, expected {expected} (1 CLS + {expected - 1} patches); "
                f"max_image_length={self.model.config.max_image_length}"
            )
        return logits[:, 0]


def _patch(config) -> int:
    p = config.patch_size
    return int(p if isinstance(p, int) else p[0])
