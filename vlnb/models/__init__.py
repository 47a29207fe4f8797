"""One interface for dual and cross encoders: CLIP, BLIP, BLIP-2, ViLT and the offline towers.

:func:`load_model` is the single entry point: it infers the family from the checkpoint's HF config
(``model_type``: clip, blip, blip-2, vilt) or from a vlnb save folder (:class:`TowersDualEncoder`, the
scratch model of :mod:`vlnb.models.scratch`), and returns a :class:`DualEncoder` (CLIP, BLIP, BLIP-2,
towers, scratch; BLIP/BLIP-2 offer ``.cross_encoder()`` for their ITM head) or a :class:`CrossEncoder`
(ViLT). See :mod:`vlnb.models.base` for the contract.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import CrossEncoder, DualEncoder, ITMView, VLModel, weights_fingerprint
from .blip import BLIPAdapter, pre_caption
from .blip2 import BLIP2Adapter
from .clip import CLIPAdapter
from .tiny import make_tiny_blip, make_tiny_blip2, make_tiny_clip, make_tiny_vilt
from .towers import TowersDualEncoder, is_towers_dir
from .transforms import ImagePreprocess
from .vilt import PatchGridError, ViLTAdapter

ADAPTERS = {"clip": CLIPAdapter, "blip": BLIPAdapter, "blip2": BLIP2Adapter, "vilt": ViLTAdapter}
_SAVED_FAMILIES = ("towers", "scratch")  # vlnb's own save formats
FAMILIES = (*ADAPTERS, *_SAVED_FAMILIES)
_MODEL_TYPES = {"clip": "clip", "blip": "blip", "blip-2": "blip2", "blip_2": "blip2", "vilt": "vilt"}


def _vlnb_family(path) -> str | None:
    """The family of a vlnb save folder (towers, scratch), None for anything else."""
    if is_towers_dir(path):
        return "towers"
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        try:
            family = json.loads(cfg.read_text()).get("family")
        except (ValueError, AttributeError):
            return None
        return family if family in _SAVED_FAMILIES else None
    return None


def infer_family(name_or_path: str) -> str:
    """The family of a vlnb save folder (``towers``, ``scratch``), else of the HF config's ``model_type``."""
    family = _vlnb_family(name_or_path)
    if family:
        return family
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name_or_path).model_type
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"{name_or_path}: model_type {model_type!r} is not supported; vlnb knows {sorted(_MODEL_TYPES)}")
    return _MODEL_TYPES[model_type]


def load_model(name_or_path: str, family: str | None = None, device="cpu", attn_implementation: str | None = None,
               **kw) -> VLModel:
    """Load a checkpoint (hub id or local folder) as a vlnb model on ``device``, in eval mode.

    ``attn_implementation``: None lets transformers choose (sdpa where supported); pass ``"eager"`` when
    attention maps are needed. Other keyword arguments go to the adapter (``dtype``, ``allow_missing``,
    BLIP's ``itm_first_token``, ``max_length``...).
    """
    family = family or infer_family(name_or_path)
    if family in _SAVED_FAMILIES:
        if attn_implementation is not None or kw:
            raise ValueError(f"{family} folders take no attn_implementation or extra arguments")
        if family == "scratch":
            from .scratch import ScratchDualEncoder as cls
        else:
            cls = TowersDualEncoder
        return cls.load(name_or_path, device=device).eval()
    if family not in ADAPTERS:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    return ADAPTERS[family].from_pretrained(str(name_or_path), device=device, attn_implementation=attn_implementation,
                                            **kw).eval()


__all__ = [
    "ADAPTERS", "FAMILIES", "BLIP2Adapter", "BLIPAdapter", "CLIPAdapter", "CrossEncoder", "DualEncoder",
    "ITMView", "ImagePreprocess", "PatchGridError", "TowersDualEncoder", "VLModel", "ViLTAdapter",
    "infer_family", "load_model", "make_tiny_blip", "make_tiny_blip2", "make_tiny_clip", "make_tiny_vilt",
    "pre_caption", "weights_fingerprint",
]
