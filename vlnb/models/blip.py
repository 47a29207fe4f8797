"""BLIP (``BlipForImageTextRetrieval``, e.g. ``Salesforce/blip-itm-base-coco``): ITC dual encoder + ITM view.

Protocol (LAVIS/BLIP ``blip_retrieval``):

- captions cleaned by LAVIS' ``BlipCaptionProcessor.pre_caption`` (lower-case, ``.!"()*#:;~`` -> space,
  at most 50 words), tokenised with BLIP's BERT tokenizer, truncated to 35 tokens;
- ITC: image CLS -> ``vision_proj``, text ``[CLS]`` (text-only encoder) -> ``text_proj``, both L2-normalised;
- ITM (:meth:`BLIPAdapter.cross_encoder`): the text encoder cross-attends to all image tokens with the first
  token replaced by ``[ENC]`` (as BLIP does; HF's own forward keeps ``[CLS]``, pass
  ``itm_first_token="cls"`` to reproduce that), ``itm_head`` on it, score = "match" logit (index 1)
  or its softmax probability;
- images: the checkpoint's ``BlipImageProcessor`` config (384x384 bicubic, no crop, CLIP mean/std).

HF's BLIP retrieval checkpoints carry no learned temperature, so ``logit_scale`` is None.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..device import resolve_device
from .base import DualEncoder, ITMView, hf_load_kwargs, load_hf_strict
from .transforms import ImagePreprocess

LAVIS_RETRIEVAL_MAX_LENGTH = 35
LAVIS_MAX_WORDS = 50
# LAVIS' BLIP tokenizer: bert-base-uncased (30522) + [DEC] (30522) + [ENC] (30523)
_LAVIS_VOCAB, _LAVIS_ENC_ID = 30524, 30523


def pre_caption(caption: str, max_words: int = LAVIS_MAX_WORDS) -> str:
    """LAVIS ``BlipCaptionProcessor.pre_caption``: the caption cleaning behind BLIP/BLIP-2 retrieval numbers."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


class LavisTextMixin:
    """BLIP/BLIP-2 caption handling shared by both adapters."""

    max_words: int = LAVIS_MAX_WORDS

    def prepare_texts(self, texts: Sequence[str]) -> list[str]:
        return [pre_caption(t, self.max_words) for t in texts]

    def cross_encoder(self, output: str = "logit") -> ITMView:
        """The ITM head as a :class:`~vlnb.models.base.CrossEncoder` sharing this model's weights."""
        return ITMView(self, output)


def _enc_token_id(tokenizer, vocab_size: int) -> int:
    tid = tokenizer.convert_tokens_to_ids("[ENC]")
    if isinstance(tid, int) and tid != tokenizer.unk_token_id:
        return tid
    if vocab_size == _LAVIS_VOCAB:
        warnings.warn("the tokenizer has no [ENC] token; using id 30523 of LAVIS' BLIP vocabulary layout")
        return _LAVIS_ENC_ID
    raise ValueError("cannot find BLIP's [ENC] token in the tokenizer; pass itm_first_token='cls'")


class BLIPAdapter(LavisTextMixin, DualEncoder):
    family = "blip"

    def __init__(self, model, tokenizer, preprocess: ImagePreprocess, name: str,
                 max_length: int = LAVIS_RETRIEVAL_MAX_LENGTH, itm_first_token: str = "enc"):
        super().__init__(name, preprocess)
        if itm_first_token not in ("enc", "cls"):
            raise ValueError(f"itm_first_token must be 'enc' or 'cls', got {itm_first_token!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.embed_dim = int(model.config.image_text_hidden_size)
        self.max_length = int(max_length)
        self.itm_first_token = itm_first_token
        self.enc_token_id = (_enc_token_id(tokenizer, model.config.text_config.vocab_size)
                             if itm_first_token == "enc" else None)

    @classmethod
    def from_pretrained(cls, name: str, device="auto", attn_implementation=None, dtype=None, allow_missing=False,
                        **kw):
        # lazy: transformers is slow to import; only loading a checkpoint needs it
        from transformers import AutoTokenizer, BlipForImageTextRetrieval

        kwargs = hf_load_kwargs(attn_implementation, dtype)
        model = load_hf_strict(BlipForImageTextRetrieval, name, allow_missing, **kwargs)
        return cls(model, AutoTokenizer.from_pretrained(name, trust_remote_code=False), ImagePreprocess.from_hf(name), name, **kw).to(resolve_device(device))

    def adapter_config(self) -> dict:
        return {"max_length": self.max_length, "max_words": self.max_words, "itm_first_token": self.itm_first_token,
                "enc_token_id": self.enc_token_id}

    def _image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cls_tok = self._image_tokens(pixel_values)[:, 0, :]
        return F.normalize(self.model.vision_proj(cls_tok), dim=-1)

    def encode_text(self, **tokens) -> torch.Tensor:
        t = self.tokens_on_device(tokens)
        h = self.model.text_encoder(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
        return F.normalize(self.model.text_proj(h[:, 0, :]), dim=-1)

    def itm_score(self, pixel_values: torch.Tensor, texts: list[str], output: str = "logit",
                  pair_index: torch.Tensor | None = None) -> torch.Tensor:
        """ITM scores ``(B,)`` of aligned pairs (see the module docstring). With ``pair_index`` (B,),
        ``pixel_values`` holds each *distinct* image once and pair ``i`` uses image ``pair_index[i]``: the
        ViT runs once per image instead of once per pair (re-ranking scores k texts per image)."""
        image = self._image_tokens(pixel_values)
        if pair_index is not None:
            image = image[pair_index.to(image.device)]
        t = self.tokens_on_device(self.tokenize(texts))
        ids = t["input_ids"].clone()
        if self.enc_token_id is not None:
            ids[:, 0] = self.enc_token_id
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        h = self.model.text_encoder(input_ids=ids, attention_mask=t["attention_mask"], encoder_hidden_states=image,
                                    encoder_attention_mask=image_mask).last_hidden_state
        logits = self.model.itm_head(h[:, 0, :])
        return logits[:, 1] if output == "logit" else logits.softmax(dim=-1)[:, 1]
