"""Published reference numbers to print beside vlnb's own (literature values, never vlnb results).

Recall@K in percent; COCO = Karpathy 5k test, Flickr30k = 1k test. Each row sits beside the checkpoint it
was measured with (``hub_id``) and carries its protocol and source, because the protocol changes the
numbers (ITC-only vs ITC→ITM re-ranking and its depth k, zero-shot vs fine-tuned, all captions per image).
Transcribed from ``../shared/reference-numbers.md`` (open_clip's
retrieval results, the CLIP, ViLT, BLIP and BLIP-2 papers).
"""

from __future__ import annotations

import pandas as pd

_R = [
    # model, hub id, dataset, protocol, i2t R@1/5/10, t2i R@1/5/10, source
    ("CLIP ViT-B/32", "openai/clip-vit-base-patch32", "flickr30k", "zero-shot, ITC", (78.9, 94.9, 98.2),
     (58.8, 83.6, 90.0), "open_clip retrieval results"),
    ("CLIP ViT-B/32", "openai/clip-vit-base-patch32", "coco", "zero-shot, ITC", (50.1, 75.0, 83.5),
     (30.4, 55.9, 66.9), "open_clip retrieval results"),
    ("CLIP ViT-B/16", "openai/clip-vit-base-patch16", "flickr30k", "zero-shot, ITC", (82.2, 96.6, 99.0),
     (62.2, 85.7, 91.9), "open_clip retrieval results"),
    ("CLIP ViT-B/16", "openai/clip-vit-base-patch16", "coco", "zero-shot, ITC", (52.4, 76.7, 84.6),
     (33.1, 58.4, 69.0), "open_clip retrieval results"),
    ("CLIP ViT-L/14", "openai/clip-vit-large-patch14", "flickr30k", "zero-shot, ITC", (85.2, 97.4, 99.2),
     (65.0, 87.2, 92.0), "open_clip retrieval results"),
    ("CLIP ViT-L/14", "openai/clip-vit-large-patch14", "coco", "zero-shot, ITC", (56.3, 79.4, 86.6),
     (36.5, 61.1, 71.1), "open_clip retrieval results"),
    ("ViLT-B/32", "dandelin/vilt-b32-finetuned-coco", "coco", "fine-tuned on COCO, ITM score alone",
     (61.5, 86.3, 92.7), (42.7, 72.9, 83.1), "ViLT paper"),
    ("ViLT-B/32", "dandelin/vilt-b32-finetuned-flickr30k", "flickr30k", "fine-tuned on Flickr30k, ITM score alone",
     (83.5, 96.7, 98.6), (64.4, 88.7, 93.8), "ViLT paper"),
    # LAVIS's own evaluation of the checkpoint that Salesforce/blip-itm-base-coco was converted from
    # (model_base_retrieval_coco.pth; LAVIS docs/benchmark.rst), not the BLIP paper's 14M row (80.6 / 63.1)
    ("BLIP ViT-B (COCO retrieval)", "Salesforce/blip-itm-base-coco", "coco",
     "fine-tuned on COCO, ITC top-256 → ITM rerank (ITM + ITC)", (82.0, 95.8, 98.1), (64.5, 86.0, 91.7),
     "LAVIS docs/benchmark.rst (model_base_retrieval_coco)"),
    # the BLIP-2 paper's retrieval numbers are those of the COCO-fine-tuned ViT-g (LAVIS model_type coco,
    # 364 px, k_test 128 on COCO and Flickr30k), i.e. Salesforce/blip2-itm-vit-g-coco, not the pretrained
    # Salesforce/blip2-itm-vit-g (224 px), for which no retrieval number was published
    ("BLIP-2 ViT-g (COCO-fine-tuned)", "Salesforce/blip2-itm-vit-g-coco", "coco",
     "fine-tuned on COCO, ITC top-128 → ITM rerank (ITM + ITC)", (85.4, 97.0, 98.5), (68.3, 87.7, 92.6),
     "BLIP-2 paper Table 5"),
    ("BLIP-2 ViT-g (COCO-fine-tuned)", "Salesforce/blip2-itm-vit-g-coco", "flickr30k",
     "COCO-fine-tuned, zero-shot transfer, ITC top-128 → ITM rerank (ITM + ITC)", (97.6, 100.0, 100.0),
     (89.7, 98.1, 98.9), "BLIP-2 paper Table 5"),
]

#: Zero-shot top-1 accuracy (%) of CLIP on CIFAR-100 (open_clip classification results, 18 CIFAR templates).
PUBLISHED_ZEROSHOT = pd.DataFrame(
    [
        ("CLIP ViT-B/32", "openai/clip-vit-base-patch32", "cifar100", 64.2, "open_clip classification results"),
        ("CLIP ViT-B/16", "openai/clip-vit-base-patch16", "cifar100", 67.0, "open_clip classification results"),
        ("CLIP ViT-L/14", "openai/clip-vit-large-patch14", "cifar100", 75.8, "open_clip classification results"),
    ],
    columns=["model", "hub_id", "dataset", "top1", "source"],
)


def published_retrieval() -> pd.DataFrame:
    """Tidy table: ``model, hub_id, dataset, protocol, stage, direction, k, recall, source`` (one row per
    metric). ``stage`` is ``"itc"`` (dual-encoder similarity) or ``"itm"`` (a cross-encoder / ITM score, alone
    or re-ranking an ITC top-k): what a measured row must share, with the hub id, to be drawn beside it."""
    rows = []
    for model, hub, ds, proto, i2t, t2i, src in _R:
        for direction, vals in (("i2t", i2t), ("t2i", t2i)):
            for k, v in zip((1, 5, 10), vals):
                rows.append({"model": model, "hub_id": hub, "dataset": ds, "protocol": proto,
                             "stage": protocol_stage(proto), "direction": direction, "k": k, "recall": v,
                             "source": src})
    return pd.DataFrame(rows)


def protocol_stage(protocol: str) -> str:
    """``"itm"`` for a protocol scored by an ITM head or cross encoder (re-ranking or alone), else ``"itc"``."""
    return "itm" if "ITM" in str(protocol) else "itc"


def published_for(hub_id: str, dataset: str) -> pd.DataFrame:
    """Published rows of one checkpoint on one data set (empty when none were published)."""
    df = published_retrieval()
    return df[(df["hub_id"] == hub_id) & (df["dataset"] == dataset)].reset_index(drop=True)
