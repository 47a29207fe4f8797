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

Preprocessing is ``ViltImageProcessor``'s, with the settings of the checkpoint's own processor config
(:class:`ViltPreprocess`): the aspect ratio is kept, the shorter side resized to ``size`` (384), the longer one
capped at ``int(1333 / 800 * size)`` (639), both rounded down to multiples of ``size_divisor`` (32): a
640x426 COCO photo becomes 384x576, 12x18 = 216 patches (ViLT interpolates its 12x12 position embeddings
to every grid, as in its training and evaluation). A batch of different sizes is padded at the bottom/right
to the largest and the padding marked in a ``pixel_mask``. The shared pixel contract of vlnb is one
``(B, 3, H, W)`` tensor, so the padding travels *in* it, as NaN: :meth:`ViLTAdapter.score` turns it into
HF's ``pixel_mask`` (and zeros, HF's padding value), checking that each image's valid region is one top-left
rectangle of whole patches. Scores are the ``rank_output`` logits. Texts: BERT tokenizer, truncated to
``max_position_embeddings`` (40).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..device import resolve_device
from .base import CrossEncoder, hf_load_kwargs, load_hf_strict
from .transforms import PIL_RESAMPLE_CODES, ImagePreprocess, read_preprocessor_config


class PatchGridError(RuntimeError):
    """ViLT saw a different number of image tokens than its input size implies."""


#: ``ViltImageProcessor``'s cap on the longer side: ``int(MAX_LONGER_EDGE / MAX_SHORTER_EDGE * shortest_edge)``.
MAX_LONGER_EDGE, MAX_SHORTER_EDGE = 1333, 800


class ViltPreprocess(ImagePreprocess):
    """``ViltImageProcessor`` without torchvision: aspect-kept resize (shorter side ``shortest_edge``, longer
    <= ``int(1333/800 * shortest_edge)``, both floored to multiples of ``size_divisor``), PIL resampling,
    ``[0, 1]``, per-channel normalisation; a batch of different sizes is padded bottom/right to the largest with
    NaN (the pixel mask, see the module docstring). A single image is never padded."""

    def __init__(self, shortest_edge: int = 384, size_divisor: int = 32, resample: str = "bicubic",
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), longest_edge: int | None = None):
        super().__init__(int(shortest_edge), None, resample, mean, std)
        self.size_divisor = int(size_divisor)
        self.longest_edge = int(longest_edge if longest_edge is not None
                                else MAX_LONGER_EDGE / MAX_SHORTER_EDGE * int(shortest_edge))
        if self.size_divisor < 1 or self.resize < self.size_divisor:
            raise ValueError(f"ViLT preprocessing: shortest_edge {self.resize} / size_divisor {self.size_divisor}")

    @property
    def config(self) -> dict:
        return {**super().config, "impl": "vlnb-vilt-1", "longest_edge": self.longest_edge,
                "size_divisor": self.size_divisor, "pad": "nan-bottom-right"}

    @property
    def output_size(self):
        return None  # depends on each image's aspect ratio

    def _resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """``(H, W)`` an ``height x width`` image is resized to (``get_resize_output_image_size`` of HF's ViLT); no
        crop follows, so this is also :meth:`output_hw`, and the base class's resize and mask resize use it."""
        short, cap = self.resize, self.longest_edge
        scale = short / min(height, width)
        h, w = (short, scale * width) if height < width else (scale * height, short)
        if max(h, w) > cap:
            scale = cap / max(h, w)
            h, w = scale * h, scale * w
        h, w = int(h + 0.5), int(w + 0.5)
        d = self.size_divisor
        return h // d * d, w // d * d

    @staticmethod
    def _pad(arrays: list[torch.Tensor]) -> torch.Tensor:
        """``(3, h_i, w_i)`` tensors -> one ``(B, 3, H, W)`` batch, NaN where an image has no pixel."""
        hmax, wmax = max(a.shape[-2] for a in arrays), max(a.shape[-1] for a in arrays)
        out = torch.full((len(arrays), 3, hmax, wmax), float("nan"))
        for i, a in enumerate(arrays):
            out[i, :, : a.shape[-2], : a.shape[-1]] = a
        return out

    def to_unit(self, images) -> torch.Tensor:
        arrays = [torch.from_numpy(a.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)
                  for a in self._arrays(images)]
        return self._pad(arrays)

    def to_uint8(self, images) -> torch.Tensor:
        arrays = self._arrays(images)
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("ViLT inputs of different sizes cannot share a uint8 batch; use to_unit / __call__, "
                             "which pad with NaN")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def vilt_preprocess(source, patch_size: int) -> ViltPreprocess:
    """:class:`ViltPreprocess` with the settings of a ``ViltImageProcessor`` config (folder, hub id or dict):
    ``size`` (an int or ``{"shortest_edge"}``), ``size_divisor``, ``resample``, ``image_mean``/``image_std``."""
    cfg = source if isinstance(source, dict) else read_preprocessor_config(source)
    size = cfg.get("size", 384)
    side = int(size["shortest_edge"] if isinstance(size, dict) else size)
    divisor = int(cfg.get("size_divisor", 32))
    if divisor % patch_size:
        raise ValueError(f"ViLT size_divisor {divisor} is not a multiple of the patch size {patch_size}: patches "
                         "would be cut at the border")
    if not cfg.get("do_resize", True) or not cfg.get("do_normalize", True):
        raise ValueError("ViLT preprocessor configs without resize or normalisation are not supported")
    if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ValueError(f"unsupported rescale_factor {cfg.get('rescale_factor')} (only 1/255)")
    return ViltPreprocess(side, divisor, PIL_RESAMPLE_CODES[int(cfg.get("resample", 3))],
                          cfg.get("image_mean", (0.5, 0.5, 0.5)), cfg.get("image_std", (0.5, 0.5, 0.5)))


def pixel_mask_of(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """``(pixels with NaN padding set to 0, pixel_mask (B, H, W) long, [(h_i, w_i)])`` of a :class:`ViltPreprocess`
    batch; raises :class:`PatchGridError` unless each image's valid pixels form one top-left rectangle."""
    valid = ~torch.isnan(pixel_values).any(dim=1)  # (B, H, W)
    sizes = []
    for i, m in enumerate(valid):
        h, w = int(m[:, 0].sum()), int(m[0, :].sum())
        if h == 0 or w == 0 or int(m.sum()) != h * w or not bool(m[:h, :w].all()):
            raise PatchGridError(f"image {i} of the batch: its valid pixels are not one top-left rectangle "
                                 "(NaN marks padding only; NaN inside an image is an error)")
        sizes.append((h, w))
    return torch.nan_to_num(pixel_values, nan=0.0), valid.long(), sizes


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
    def from_pretrained(cls, name: str, device="auto", attn_implementation=None, dtype=None, allow_missing=False):
        # lazy: transformers is slow to import; only loading a checkpoint needs it
        from transformers import AutoTokenizer, ViltForImageAndTextRetrieval

        kwargs = hf_load_kwargs(attn_implementation, dtype)
        model = load_hf_strict(ViltForImageAndTextRetrieval, name, allow_missing, **kwargs)
        pre = vilt_preprocess(name, _patch(model.config))
        return cls(model, AutoTokenizer.from_pretrained(name, trust_remote_code=False), pre, name).to(resolve_device(device))

    def adapter_config(self) -> dict:
        return {"max_length": self.max_length, "pixel_mask": "nan-padding"}

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
        """``rank_output`` logits ``(B,)`` of aligned pairs. NaN in ``pixel_values`` marks padding (a
        :class:`ViltPreprocess` batch of different sizes) and becomes HF's ``pixel_mask``; every image's
        token count is asserted against its own patch grid (module docstring)."""
        self._check_pairs(pixel_values, texts)
        pixels, mask, sizes = pixel_mask_of(pixel_values)
        expected = [self.expected_image_tokens(h, w) for h, w in sizes]
        t = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        pixels = pixels.to(self.device, self.dtype)
        seen = {}

        def hook(_module, _inputs, output):
            embeddings, masks = output[0], output[1]
            n_text = t["input_ids"].shape[1]
            seen["image_tokens"] = embeddings.shape[1] - n_text
            seen["valid"] = masks[:, n_text:].long().sum(dim=1).tolist()

        handle = self.model.vilt.embeddings.register_forward_hook(hook)
        try:
            logits = self.model(**t, pixel_values=pixels, pixel_mask=mask.to(self.device)).logits
        finally:
            handle.remove()
        self.last_image_tokens = expected[0] if len(set(expected)) == 1 else list(expected)
        if seen.get("image_tokens") != max(expected) or seen.get("valid") != expected:
            raise PatchGridError(
                f"ViLT received {seen.get('image_tokens')} image tokens ({seen.get('valid')} valid per image) for "
                f"inputs of {sizes}, expected {expected[0] if len(set(expected)) == 1 else expected} (1 CLS + one "
                f"token per patch); "
                f"max_image_length={self.model.config.max_image_length}"
            )
        return logits[:, 0]


def _patch(config) -> int:
    p = config.patch_size
    return int(p if isinstance(p, int) else p[0])
