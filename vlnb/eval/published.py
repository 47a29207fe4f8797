"""Published reference numbers to print beside vlnb's own (literature values, never vlnb results).

Recall@K in percent; COCO = Karpathy 5k test, Flickr30k = 1k test. Each row carries its protocol and
source, because the protocol changes the numbers (ITC-only vs ITC→ITM re-ranking, zero-shot vs
fine-tuned, all captions per image). Transcribed from ``../shared/reference-numbers.md`` (open_clip's
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
    ("ViLT-B/32", "dandelin/vilt-b32-finetuned-coco", "coco", "fine-tuned on COCO, ITM", (61.5, 86.3, 92.7),
     (42.7, 72.9, 83.1), "ViLT paper"),
    ("ViLT-B/32", "dandelin/vilt-b32-finetuned-flickr30k", "flickr30k", "fine-tuned on Flickr30k, ITM",
     (83.5, 96.7, 98.6), (64.4, 88.7, 93.8), "ViLT paper"),
    ("BLIP ViT-B (14M)", "Salesforce/blip-itm-base-coco", "coco", "fine-tuned on COCO, ITC→ITM rerank (k=256)",
     (80.6, 95.2, 97.6), (63.1, 85.3, 91.1), "BLIP paper Table 5"),
    ("BLIP ViT-B (14M)", "Salesforce/blip-itm-base-coco", "flickr30k",
     "COCO-fine-tuned, zero-shot transfer, ITC→ITM rerank (k=128)", (94.8, 99.7, 100.0), (84.9, 96.7, 98.3),
     "BLIP paper Table 6"),
    ("BLIP-2 ViT-g", "Salesforce/blip2-itm-vit-g", "coco", "fine-tuned on COCO, ITC→ITM rerank (k=256)",
     (85.4, 97.0, 98.5), (68.3, 87.7, 92.6), "BLIP-2 paper Table 5"),
    ("BLIP-2 ViT-g", "Salesforce/blip2-itm-vit-g", "flickr30k",
     "COCO-fine-tuned, zero-shot transfer, ITC→ITM rerank (k=128)", (97.6, 100.0, 100.0), (89.7, 98.1, 98.9),
     "BLIP-2 paper Table 5"),
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
    """Tidy table: ``model, hub_id, dataset, protocol, direction, k, recall, source`` (one row per metric)."""
    rows = []
    for model, hub, ds, proto, i2t, t2i, src in _R:
        for direction, vals in (("i2t", i2t), ("t2i", t2i)):
            for k, v in zip((1, 5, 10), vals):
                rows.append({"model": model, "hub_id": hub, "dataset": ds, "protocol": proto,
                             "direction": direction, "k": k, "recall": v, "source": src})
    return pd.DataFrame(rows)


def published_for(hub_id: str, dataset: str) -> pd.DataFrame:
    """Published rows of one checkpoint on one data set (empty when none were published)."""
    df = published_retrieval()
    return df[(df["hub_id"] == hub_id) & (df["dataset"] == dataset)].reset_index(drop=True)
