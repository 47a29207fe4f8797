"""One interface for dual and cross encoders: CLIP, BLIP, BLIP-2, ViLT and the offline towers.

:func:`load_model` is the single entry point: it infers the family from the checkpoint's HF config
(``model_type``: clip, blip, blip-2, vilt) or from a vlnb save folder (:class:`TowersDualEncoder`, the
scratch model of :mod:`vlnb.models.scratch`, the fusion models of :mod:`vlnb.models.fusion`), and returns a
:class:`DualEncoder` (CLIP, BLIP, BLIP-2, towers, scratch, the BLIP-/Q-Former-like fusion models; those with an
ITM head offer ``.cross_encoder()``) or a :class:`CrossEncoder` (ViLT, the ViLT-like fusion model). See :mod:`vlnb.models.base` for the contract.

Shared pieces: :mod:`vlnb.models.transforms` (each model's exact preprocessing) and :mod:`vlnb.models.memo` (one
memo of frozen-tower features, and the explicit mean pooling of sentence features).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..device import resolve_device
from ..errors import ArtifactError
from .base import CrossEncoder, DualEncoder, ITMView, VLModel, weights_fingerprint
from .blip import BLIPAdapter, pre_caption
from .blip2 import BLIP2Adapter
from .clip import CLIPAdapter
from .fusion import load_fusion
from .scratch import ScratchDualEncoder
from .tiny import make_tiny_blip, make_tiny_blip2, make_tiny_clip, make_tiny_vilt
from .towers import TowersDualEncoder, is_towers_dir
from .transforms import ImagePreprocess
from .vilt import PatchGridError, ViLTAdapter

ADAPTERS = {"clip": CLIPAdapter, "blip": BLIPAdapter, "blip2": BLIP2Adapter, "vilt": ViLTAdapter}
_SAVED_FAMILIES = ("towers", "scratch", "fusion")  # vlnb's own save formats (fusion: vlnb.models.fusion)
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


def refuse_custom_code(name_or_path) -> None:
    """Refuse a local folder whose ``config.json`` asks for custom code (``auto_map``), before transformers
    sees it: vlnb passes ``trust_remote_code=False`` everywhere and never runs a checkpoint's code."""
    cfg = Path(str(name_or_path)) / "config.json"
    if not cfg.is_file():
        return
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{cfg}: damaged config, not readable JSON ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and data.get("auto_map"):
        raise ValueError(f"{cfg}: carries custom code (auto_map {data['auto_map']}); vlnb never runs code that "
                         "comes with a checkpoint (trust_remote_code=False)")


def infer_family(name_or_path: str) -> str:
    """The family of a vlnb save folder (``towers``, ``scratch``), else of the HF config's ``model_type``."""
    family = _vlnb_family(name_or_path)
    if family:
        return family
    from transformers import AutoConfig  # lazy: transformers is slow to import; only hub checkpoints need it

    refuse_custom_code(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    if getattr(config, "auto_map", None):
        raise ValueError(f"{name_or_path}: its config carries custom code (auto_map {config.auto_map}); vlnb "
                         "never runs code that comes with a checkpoint")
    model_type = config.model_type
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"{name_or_path}: model_type {model_type!r} is not supported; vlnb knows {sorted(_MODEL_TYPES)}")
    return _MODEL_TYPES[model_type]


def load_model(name_or_path: str, family: str | None = None, device="auto", attn_implementation: str | None = None,
               **kw) -> VLModel:
    """Load a checkpoint (hub id or local folder) as a vlnb model on ``device``, in eval mode.

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (see
    :func:`vlnb.device.resolve_device`).

    ``attn_implementation``: None lets transformers choose (sdpa where supported); pass ``"eager"`` when
    attention maps are needed. Other keyword arguments go to the adapter (``dtype``, ``allow_missing``,
    BLIP's ``itm_first_token``, ``max_length``...).
    """

    device = resolve_device(device)
    refuse_custom_code(name_or_path)
    family = family or infer_family(name_or_path)
    if family in _SAVED_FAMILIES:
        if attn_implementation is not None or kw:
            raise ValueError(f"{family} folders take no attn_implementation or extra arguments")
        if family == "fusion":  # ViLT-/BLIP-/Q-Former-like models trained from scratch (vlnb.models.fusion)

            return load_fusion(name_or_path, device=device).eval()
        cls = ScratchDualEncoder if family == "scratch" else TowersDualEncoder
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
