"""BLIP-2 (``Blip2ForImageTextRetrieval``, e.g. ``Salesforce/blip2-itm-vit-g``): Q-Former ITC + ITM view.

Protocol (LAVIS ``blip2_qformer`` / ``compute_sim_matrix``):

- ITC image side: ViT (with its final LayerNorm = LAVIS' ``ln_vision``) -> Q-Former with the 32 learned
  query tokens cross-attending -> ``vision_projection`` per query, each L2-normalised: ``(B, 32, D)``;
- ITC text side: Q-Former text-only pass, ``[CLS]`` -> ``text_projection``, L2-normalised: ``(B, D)``;
- similarity = max over the 32 queries of the query-text cosine (:meth:`DualEncoder.similarity`);
- ITM (:meth:`BLIP2Adapter.cross_encoder`): queries + text tokens in one Q-Former pass cross-attending to
  the image, ``itm_head`` on every query output, score = mean over queries of the "match" logit
  (``output="prob"``: softmax of the query-averaged logits, as HF's forward);
- captions: LAVIS ``pre_caption`` then BERT tokenizer, 35 tokens; images: the checkpoint's processor
  config (224x224 bicubic, CLIP mean/std for ``blip2-itm-vit-g``).

The components are called directly (not ``forward``) so image features are computed once, and so that a
checkpoint whose config sets ``image_token_index`` does not strip the first 32 text tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..device import resolve_device
from .base import DualEncoder, hf_load_kwargs, load_hf_strict
from .blip import LAVIS_RETRIEVAL_MAX_LENGTH, LavisTextMixin
from .transforms import ImagePreprocess


class BLIP2Adapter(LavisTextMixin, DualEncoder):
    family = "blip2"

    def __init__(self, model, tokenizer, preprocess: ImagePreprocess, name: str,
                 max_length: int = LAVIS_RETRIEVAL_MAX_LENGTH):
        super().__init__(name, preprocess)
        if not model.config.qformer_config.use_qformer_text_input:
            raise ValueError("BLIP-2 retrieval needs a Q-Former with text input (qformer_config.use_qformer_text_input)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.embed_dim = int(model.config.image_text_hidden_size)
        self.num_queries = int(model.config.num_query_tokens)
        self.max_length = int(max_length)

    @classmethod
    def from_pretrained(cls, name: str, device="auto", attn_implementation=None, dtype=None, allow_missing=False,
                        **kw):
        # lazy: transformers is slow to import; only loading a checkpoint needs it
        from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

        kwargs = hf_load_kwargs(attn_implementation, dtype)
        model = load_hf_strict(Blip2ForImageTextRetrieval, name, allow_missing, **kwargs)
        return cls(model, AutoTokenizer.from_pretrained(name, trust_remote_code=False), ImagePreprocess.from_hf(name), name, **kw).to(resolve_device(device))

    def adapter_config(self) -> dict:
        return {"max_length": self.max_length, "max_words": self.max_words}

    def _vit(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        image = self.model.vision_model(pixel_values=pixel_values.to(self.device, dtype)).last_hidden_state
        return image, torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)

    def query_outputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, Q, H)`` Q-Former outputs of the learned queries attending to the ViT's patches: the image side
        *before* ``vision_projection`` (:meth:`encode_image` projects and normalises them)."""
        image, mask = self._vit(pixel_values)
        queries = self.model.query_tokens.expand(image.shape[0], -1, -1)
        return self.model.qformer(query_embeds=queries, encoder_hidden_states=image,
                                  encoder_attention_mask=mask).last_hidden_state

    def text_cls(self, **tokens) -> torch.Tensor:
        """``(B, H)`` Q-Former ``[CLS]`` of the text-only pass: the text side *before* ``text_projection``
        (:meth:`encode_text` projects and normalises it)."""
        t = self.tokens_on_device(tokens)
        emb = self.model.embeddings(input_ids=t["input_ids"])
        h = self.model.qformer(query_embeds=emb, query_length=0, attention_mask=t["attention_mask"]).last_hidden_state
        return h[:, 0, :]

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        proj = self.model.vision_projection
        return F.normalize(proj(self.query_outputs(pixel_values).to(proj.weight.dtype)), dim=-1)

    def encode_text(self, **tokens) -> torch.Tensor:
        proj = self.model.text_projection
        return F.normalize(proj(self.text_cls(**tokens).to(proj.weight.dtype)), dim=-1)

    def itm_score(self, pixel_values: torch.Tensor, texts: list[str], output: str = "logit",
                  pair_index: torch.Tensor | None = None) -> torch.Tensor:
        """ITM scores ``(B,)`` of aligned pairs (see the module docstring). With ``pair_index`` (B,),
        ``pixel_values`` holds each *distinct* image once and pair ``i`` uses image ``pair_index[i]``: the
        ViT-g runs once per image instead of once per pair."""
        image, image_mask = self._vit(pixel_values)
        if pair_index is not None:
            idx = pair_index.to(image.device)
            image, image_mask = image[idx], image_mask[idx]
        t = self.tokens_on_device(self.tokenize(texts))
        queries = self.model.query_tokens.expand(image.shape[0], -1, -1)
        emb = self.model.embeddings(input_ids=t["input_ids"], query_embeds=queries)
        mask = torch.cat([torch.ones(queries.shape[:-1], dtype=t["attention_mask"].dtype, device=self.device),
                          t["attention_mask"]], dim=1)
        h = self.model.qformer(query_embeds=emb, query_length=queries.shape[1], attention_mask=mask,
                               encoder_hidden_states=image, encoder_attention_mask=image_mask).last_hidden_state
        head = self.model.itm_head
        logits = head(h[:, : queries.shape[1], :].to(head.weight.dtype)).mean(dim=1)  # (B, 2)
        return logits[:, 1] if output == "logit" else logits.softmax(dim=-1)[:, 1]
