"""Image preprocessing without torchvision: PIL resize/crop, numpy, torch normalisation.

One class, :class:`ImagePreprocess`, covers every model here; what differs is its :attr:`config`:

- CLIP (OpenAI ``clip.load`` / ``CLIPImageProcessor``): shortest edge -> 224 bicubic, center crop 224;
- BLIP / BLIP-2 (LAVIS ``blip_image_eval``, ``BlipImageProcessor``): resize to a square, no crop;
- ViLT: aspect-kept resize, sides floored to whole patches (:class:`vlnb.models.vilt.ViltPreprocess`);
- EfficientNet-Lite0: shortest edge 256, center crop 224.

Resizing is PIL's (what torchvision's ``Resize`` does on PIL images and what HF's PIL backend does), so the
output matches the reference implementations to float precision. Center crops use torchvision's offset
``int(round((H - h) / 2))`` by default (``crop_offset="round"``: OpenAI's CLIP pipeline, which produced the
published numbers); HF's image processors floor it (``crop_offset="floor"``), one pixel apart when
``H - h`` is 3 mod 4. ``__call__(imgs) == normalize(to_unit(imgs))``;
``to_unit`` exposes the resized, cropped ``[0, 1]`` pixels so robustness perturbations can act before the
model's own normalisation; ``to_uint8`` + ``unit_from_uint8`` split it into the CPU part (PIL, uint8) and a
device part, which is how :func:`vlnb.eval.features.image_features` moves images (4x fewer bytes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
PIL_RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


class ImagePreprocess:
    """PIL images -> ``(B, 3, H, W)`` float32 tensors.

    ``resize``: an int resizes the *shortest edge* to it (aspect kept, long edge ``int(size * long / short)``
    as torchvision/HF do); a pair ``(h, w)`` resizes to exactly that. ``crop``: ``(h, w)`` center crop or
    None. ``mean``/``std``: per-channel, applied to ``[0, 1]`` pixels. ``crop_offset``: ``"round"``
    (torchvision/OpenAI) or ``"floor"`` (HF image processors).
    """

    def __init__(self, resize: int | Sequence[int], crop: int | Sequence[int] | None = None,
                 resample: str = "bicubic", mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 std: Sequence[float] = OPENAI_CLIP_STD, crop_offset: str = "round"):
        if resample not in RESAMPLE:
            raise ValueError(f"unknown resample {resample!r}; choose one of {sorted(RESAMPLE)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must be 3 per-channel values with std > 0, got {mean}, {std}")
        if crop_offset not in ("round", "floor"):
            raise ValueError(f"crop_offset must be 'round' or 'floor', got {crop_offset!r}")
        self.crop_offset = crop_offset
        self.resize = int(resize) if isinstance(resize, (int, np.integer)) else _pair(resize)
        self.crop = None if crop is None else _pair(crop)
        self.resample = resample
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def config(self) -> dict:
        """Everything that defines the output (part of feature-cache keys)."""
        return {"impl": "vlnb-pil-1", "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
                "crop": None if self.crop is None else list(self.crop), "resample": self.resample,
                **({"crop_offset": self.crop_offset} if self.crop is not None else {}),
                "mean": list(self.mean), "std": list(self.std)}

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of every output, or None when it depends on the input's aspect ratio."""
        if self.crop is not None:
            return self.crop
        return None if isinstance(self.resize, int) else self.resize

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """``(H, W)`` of the output for a ``height x width`` image (:attr:`output_size` when it is fixed)."""
        return self.crop if self.crop is not None else self._resized_hw(height, width)

    def __repr__(self) -> str:
        return f"ImagePreprocess({self.config})"

    # ------------------------------------------------------------------------------------------------
    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """``(H, W)`` after the resize, before the crop."""
        if not isinstance(self.resize, int):
            return self.resize
        if w <= h:
            return int(self.resize * h / w), self.resize
        return self.resize, int(self.resize * w / h)

    def _resize(self, im: Image.Image, resample: str | None = None) -> Image.Image:
        w, h = im.size
        nh, nw = self._resized_hw(h, w)
        return im if (nw, nh) == (w, h) else im.resize((nw, nh), RESAMPLE[resample or self.resample])

    def _crop(self, im: Image.Image) -> Image.Image:
        if self.crop is None:
            return im
        ch, cw = self.crop
        w, h = im.size
        if ch > h or cw > w:
            raise ValueError(f"center crop {ch}x{cw} is larger than the resized image {h}x{w}")
        if self.crop_offset == "round":
            top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)  # Python's round, as torchvision
        else:
            top, left = (h - ch) // 2, (w - cw) // 2
        return im.crop((left, top, left + cw, top + ch))

    def _arrays(self, images) -> list[np.ndarray]:
        """The resized/cropped images (one PIL image or several) as ``(H, W, 3)`` uint8 arrays."""
        if isinstance(images, Image.Image):
            images = [images]
        arrays = []
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"expected PIL images, got {type(im).__name__}")
            im = self._crop(self._resize(im if im.mode == "RGB" else im.convert("RGB")))
            arrays.append(np.asarray(im, dtype=np.uint8))
        if not arrays:
            raise ValueError("no images given")
        return arrays

    def _resized(self, images) -> list[np.ndarray]:
        """:meth:`_arrays`, all of one size."""
        arrays = self._arrays(images)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"images preprocess to different sizes {sorted(shapes)}; use a crop or a fixed (h, w) resize")
        return arrays

    def to_unit(self, images) -> torch.Tensor:
        """Resized/cropped pixels in ``[0, 1]``, ``(B, 3, H, W)`` float32, NOT normalised."""
        arrays = [a.astype(np.float32) / np.float32(255.0) for a in self._resized(images)]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def to_uint8(self, images) -> torch.Tensor:
        """Resized/cropped pixels as ``(B, 3, H, W)`` uint8: a quarter of the bytes of :meth:`to_unit`, so data
        loader workers and host-to-device copies move less; finish with :meth:`unit_from_uint8` on the device
        (``unit_from_uint8(to_uint8(x))`` equals ``to_unit(x)`` bit for bit)."""
        return torch.from_numpy(np.stack(self._resized(images))).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def unit_from_uint8(x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> float32 ``[0, 1]`` on ``x``'s device (one correctly rounded division, as ``to_unit``)."""
        if x.dtype != torch.uint8:
            raise TypeError(f"unit_from_uint8 expects uint8 pixels, got {x.dtype}")
        return x.to(torch.float32) / 255.0

    def resize_mask(self, mask) -> np.ndarray:
        """A ``(H0, W0)`` mask of the original image at the output geometry: the same resize (nearest
        neighbour) and center crop as :meth:`to_unit`, as a bool ``(H, W)`` array (e.g. object masks for
        occlusion experiments)."""
        m = np.asarray(mask)
        if m.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
        im = Image.fromarray((m > 0).astype(np.uint8) * 255)  # mode "L"
        return np.asarray(self._crop(self._resize(im, resample="nearest"))) > 127

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel on ``x``'s device and dtype."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images) -> torch.Tensor:
        return self.normalize(self.to_unit(images))

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, source: str | os.PathLike | dict, crop_offset: str = "round") -> ImagePreprocess:
        """Build from a HF ``preprocessor_config.json`` (a folder, the file, or its dict).

        Supports the CLIP/BLIP style keys (``size``, ``crop_size``, ``do_center_crop``, ``resample``,
        ``image_mean``, ``image_std``). Rescaling must be ``1/255`` and normalisation on, as in all models here.
        """
        cfg = source if isinstance(source, dict) else read_preprocessor_config(source)
        if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
            raise ValueError(f"unsupported rescale_factor {cfg.get('rescale_factor')} (only 1/255)")
        if not cfg.get("do_normalize", True) or not cfg.get("do_resize", True):
            raise ValueError("preprocessor configs without resize or normalisation are not supported")
        size = cfg.get("size", 224)
        if isinstance(size, dict):
            if "shortest_edge" in size:
                resize = int(size["shortest_edge"])
            elif "height" in size and "width" in size:
                resize = (int(size["height"]), int(size["width"]))
            else:
                raise ValueError(f"unsupported size spec {size}")
        else:
            # a bare int means "shortest edge" for CLIP-style processors (HF default_to_square=False), else a square
            kind = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "")
            square = cfg.get("default_to_square", not kind.startswith(("CLIP", "Vilt")))
            resize = (int(size), int(size)) if square else int(size)
        crop = None
        if cfg.get("do_center_crop", False):
            cs = cfg.get("crop_size", resize)
            crop = (int(cs["height"]), int(cs["width"])) if isinstance(cs, dict) else _pair(cs)
        resample = PIL_RESAMPLE_CODES.get(int(cfg.get("resample", 3)), None)
        if resample is None:
            raise ValueError(f"unsupported resample code {cfg.get('resample')}")
        return cls(resize, crop, resample, cfg.get("image_mean", OPENAI_CLIP_MEAN), cfg.get("image_std", OPENAI_CLIP_STD),
                   crop_offset)


def read_preprocessor_config(source) -> dict:
    """The preprocessor config of a local folder/file or of a hub id (through the HF cache)."""
    p = Path(source)
    if p.is_dir():
        p = p / "preprocessor_config.json"
    elif not p.exists():
        # lazy: transformers is slow to import; only loading a checkpoint needs it
        from transformers.utils import cached_file

        p = Path(cached_file(str(source), "preprocessor_config.json"))
    if not p.is_file():
        raise FileNotFoundError(f"no preprocessor_config.json at {source}")
    return json.loads(p.read_text())
