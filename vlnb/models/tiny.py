"""Tiny, architecture-faithful checkpoints for tests and for exercising the full-profile code offline.

Each ``make_tiny_*`` builds the real HF model class from a shrunken config (random weights), and
``save_pretrained``s it together with tokenizer and image-processor files, so that
:func:`vlnb.models.load_model` loads the folder exactly as it loads a hub checkpoint. The numbers these
models produce are meaningless; the code paths (loading, tokenisation, preprocessing, heads, shapes) are real.

- CLIP: the real ViT-B/32 config shrunk (2 layers, width 32) keeping the 49,408-token vocabulary, image size
  224 and patch 32, with the *real* tokenizer and preprocessor files from ``shared/data/clip-vit-base-patch32``;
- BLIP / BLIP-2 / ViLT: a small BERT WordPiece vocabulary written here (``[PAD] [UNK] [CLS] [SEP] [MASK]``,
  common caption words; BLIP adds ``[DEC]``/``[ENC]``, BLIP-2 ``[DEC]``, as LAVIS does) and image processors
  of the same kind as the real ones at small sizes.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

import torch

from ..paths import shared_data_dir
from .transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "a an the of on in with and is are at to near next by two three man woman person people men women child boy "
    "girl dog cat horse bear bird cow sheep elephant giraffe zebra car bus truck train bike bicycle motorcycle "
    "plane boat street road city table chair bed room kitchen bathroom plate food pizza sandwich cake banana "
    "broccoli bowl cup glass sitting standing walking riding holding playing eating looking parked flying lying "
    "white black red blue green yellow brown large small big little young old front top side water grass field "
    "snow beach sky tree building window wall floor photo picture view group some many while his her their it "
    "that this there has have up down over under ball game tennis frisbee skateboard surfboard wave laptop phone"
).split()
_PUNCT = list(".,!?'\"-:;()")
_SUBWORDS = ["##s", "##ing", "##ed", "##er", "##ly", "##es"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _clip_dir() -> Path:

    return shared_data_dir(required=True) / "clip-vit-base-patch32"


def write_bert_tokenizer(directory: str | os.PathLike, extra_special: tuple[str, ...] = (), model_max_length=64,
                         bos_token: str | None = None):
    """Write and return a tiny uncased BERT WordPiece tokenizer (``vocab.txt`` + tokenizer files)."""
    from transformers import (  # lazy: transformers is slow to import; only loading a checkpoint needs it
        BertTokenizerFast,  # tokenizers-backed (BertTokenizer is the same in transformers 5)
    )

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(i) for i in range(10)]
    vocab = list(dict.fromkeys(SPECIALS + _PUNCT + letters + _WORDS + _SUBWORDS))
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        src = {"vocab": {w: i for i, w in enumerate(vocab)}}
    else:
        src = {"vocab_file": str(d / "vocab.txt")}
    tok = BertTokenizerFast(**src, do_lower_case=True, model_max_length=model_max_length)
    specials = {}
    if bos_token:
        specials["bos_token"] = bos_token
    if extra_special:
        specials["additional_special_tokens"] = list(extra_special)
    if specials:
        tok.add_special_tokens(specials)
    tok.save_pretrained(str(d))
    return tok


def _spread(model, std: float = 0.2, seed: int = 0):
    """Re-draw every matrix N(0, std): HF's 0.02 init makes tiny models' outputs nearly input-independent,
    which would let tests pass that should fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2))


def make_tiny_clip(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Tiny ``CLIPModel`` with the real ViT-B/32 tokenizer (77 tokens) and real preprocessing files."""
    # lazy: transformers is slow to import; only loading a checkpoint needs it
    from transformers import CLIPConfig, CLIPModel

    src, d = _clip_dir(), Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    real = json.loads((src / "config.json").read_text())
    text = {**real.get("text_config", {}), **_TINY, "vocab_size": 49408, "max_position_embeddings": 77}
    vision = {**real.get("vision_config", {}), **_TINY, "image_size": 224, "patch_size": 32}
    for cfg in (text, vision):
        cfg.pop("projection_dim", None)
    model = _spread(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16,
                                         logit_scale_init_value=real.get("logit_scale_init_value", 2.6592))), seed=seed)
    model.save_pretrained(str(d))
    for f in src.iterdir():
        if f.name != "config.json" and f.is_file():
            shutil.copy(f, d / f.name)
    return d


def make_tiny_blip(directory: str | os.PathLike, image_size: int = 64, seed: int = 0) -> Path:
    """Tiny ``BlipForImageTextRetrieval`` + BERT tokenizer with ``[DEC]``/``[ENC]`` + ``BlipImageProcessor``."""
    # lazy: transformers is slow to import; only loading a checkpoint needs it
    from transformers import BlipConfig, BlipForImageTextRetrieval

    d = Path(directory)
    tok = write_bert_tokenizer(d, extra_special=("[ENC]",), bos_token="[DEC]")
    text = {**_TINY, "vocab_size": len(tok), "max_position_embeddings": 64, "encoder_hidden_size": 32,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "sep_token_id": tok.sep_token_id,
            "is_decoder": True}
    vision = {**_TINY, "image_size": image_size, "patch_size": 16}
    model = _spread(BlipForImageTextRetrieval(BlipConfig(text_config=text, vision_config=vision,
                                                         image_text_hidden_size=16)), seed=seed)
    model.save_pretrained(str(d))
    _write_json(d / "preprocessor_config.json", {
        "image_processor_type": "BlipImageProcessor", "do_resize": True, "size": {"height": image_size, "width": image_size},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "do_convert_rgb": True})
    return d


def make_tiny_blip2(directory: str | os.PathLike, image_size: int = 32, seed: int = 0) -> Path:
    """Tiny ``Blip2ForImageTextRetrieval`` (32 queries, Q-Former with text input) + tokenizer + processor."""
    # lazy: transformers is slow to import; only loading a checkpoint needs it
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    d = Path(directory)
    tok = write_bert_tokenizer(d, bos_token="[DEC]")
    vision = {**_TINY, "image_size": image_size, "patch_size": 8}
    qformer = {**_TINY, "vocab_size": len(tok), "max_position_embeddings": 64, "encoder_hidden_size": 32,
               "cross_attention_frequency": 1, "use_qformer_text_input": True, "pad_token_id": tok.pad_token_id}
    model = _spread(Blip2ForImageTextRetrieval(Blip2Config(vision_config=vision, qformer_config=qformer,
                                                           num_query_tokens=32, image_text_hidden_size=16)), seed=seed)
    model.save_pretrained(str(d))
    _write_json(d / "preprocessor_config.json", {
        "image_processor_type": "BlipImageProcessor", "do_resize": True, "size": {"height": image_size, "width": image_size},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "do_convert_rgb": True})
    return d


def make_tiny_vilt(directory: str | os.PathLike, image_size: int = 64, patch_size: int = 16, seed: int = 0) -> Path:
    """Tiny ``ViltForImageAndTextRetrieval`` (all patches used) + tokenizer + ``ViltImageProcessor`` config."""
    # lazy: transformers is slow to import; only loading a checkpoint needs it
    from transformers import ViltConfig, ViltForImageAndTextRetrieval

    d = Path(directory)
    tok = write_bert_tokenizer(d, model_max_length=40)
    cfg = ViltConfig(**_TINY, vocab_size=len(tok), max_position_embeddings=40, image_size=image_size,
                     patch_size=patch_size, max_image_length=-1, pad_token_id=tok.pad_token_id)
    _spread(ViltForImageAndTextRetrieval(cfg), seed=seed).save_pretrained(str(d))
    _write_json(d / "preprocessor_config.json", {
        "image_processor_type": "ViltImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "size_divisor": patch_size, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True})
    return d


TINY_BUILDERS = {"clip": make_tiny_clip, "blip": make_tiny_blip, "blip2": make_tiny_blip2, "vilt": make_tiny_vilt}
