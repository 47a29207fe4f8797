"""The paired-CIFAR-100 experiment: a from-scratch ViT image tower learned against a *frozen* text tower.

A seed project trained a ViT from scratch against a frozen CLIP text encoder on pairs of CIFAR images and
reported 0.24% top-1. Here the image tower is vlnb's scratch ViT (:mod:`vlnb.models.scratch`), the text
tower the real, frozen all-MiniLM-L6-v2 (mean-pooled, as sentence-transformers does) with a trainable linear
head, and the data :func:`vlnb.data.paired_cifar.build_paired_cifar` (held-out source images in the test
pairs). :func:`train_paired_cifar` trains it with :func:`vlnb.train.train_contrastive` and reports retrieval
and pair classification on the test pairs, each beside its chance level.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data.manifest import subset
from ..data.paired_cifar import pair_preprocess, pair_prompts
from ..eval.chance import recall_chance
from ..eval.compare import evaluate_retrieval
from ..eval.features import image_features, text_features
from ..models.base import DualEncoder
from ..models.memo import FeatureMemo, mean_pool
from ..models.scratch import ScratchConfig, VisionTransformer, init_tower
from ..models.towers import TEXT_DIM, minilm_path
from ..models.transforms import HALF, ImagePreprocess
from . import TrainConfig, train_contrastive
from .schedule import capped_warmup
from .trainer import PairDataset


class ScratchImageFrozenText(DualEncoder):
    """Scratch ViT image encoder + frozen all-MiniLM-L6-v2 text encoder with a trainable linear head."""

    family = "scratch-vit+minilm"
    text_input_names = ("input_ids", "attention_mask")

    def __init__(self, config: str | ScratchConfig = "tiny", name: str = "ViT (scratch) + frozen MiniLM",
                 seed: int | None = 0, **overrides):
        # lazy: transformers is slow to import; only loading a checkpoint needs it
        from transformers import AutoModel, AutoTokenizer

        cfg = ScratchConfig.preset(config, **overrides) if isinstance(config, str) else config
        s = cfg.image_size
        super().__init__(name, ImagePreprocess(s, crop=s, resample="bicubic", mean=HALF, std=HALF))
        self.config, self.embed_dim, self.max_length = cfg, cfg.embed_dim, 64
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.visual = VisionTransformer(cfg)
            init_tower(self.visual, cfg.width, cfg.layers)
            self.text_head = nn.Linear(TEXT_DIM, cfg.embed_dim)
        self.text_tower = AutoModel.from_pretrained(str(minilm_path()), trust_remote_code=False).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), trust_remote_code=False)
        for p in self.text_tower.parameters():
            p.requires_grad_(False)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.text_memo = FeatureMemo(200_000)  # the frozen text tower's pooled features, per caption

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_tower.eval()  # frozen: dropout off
        return self

    def adapter_config(self) -> dict:
        return {"image": asdict(self.config), "text": "all-MiniLM-L6-v2 (frozen, mean pool) + linear"}

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixel_values.to(self.device)), dim=-1)

    def encode_text(self, input_ids, attention_mask=None, **_) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).to(self.device)
        return F.normalize(self.text_head(self.frozen_text_features(input_ids, mask)), dim=-1)

    @torch.no_grad()
    def frozen_text_features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled MiniLM features, deliberately *not* L2-normalised (the linear head reads the raw pooled
        features; :class:`vlnb.models.towers.TowersDualEncoder` normalises, as the sentence embedding does).
        The tower is frozen, so each distinct caption is encoded once (:class:`vlnb.models.memo.FeatureMemo`)."""
        def compute(rows):
            hidden = self.text_tower(input_ids=input_ids[rows], attention_mask=mask[rows]).last_hidden_state
            return mean_pool(hidden, mask[rows], normalize=False)

        return self.text_memo([ids[m.bool()] for ids, m in zip(input_ids, mask)], compute, input_ids.device)


def pair_classification(model, test: pd.DataFrame, class_names, batch_size: int = 256, progress: bool = False) -> dict:
    """Zero-shot classification of each test pair among all ordered class-pair prompts (C·(C−1) of them).

    ``ordered top-1``: the best prompt names the right classes in the right order; ``unordered top-1``: the
    right two classes in either order. Proportions in [0, 1], with their chance levels.
    """

    names = list(class_names)
    present = sorted(set(test["left_class"]) | set(test["right_class"]))
    unknown = [c for c in present if c not in names]
    if unknown:
        raise KeyError(f"test classes {unknown[:5]} are not among the class names")
    template = test.attrs.get("vlnb", {}).get("template") or "a photo of a {a} and a {b}"
    prompts, pairs = pair_prompts(names, template)
    txt = text_features(model, prompts, batch_size=batch_size, progress=progress)
    img = image_features(model, test, progress=progress)
    pred = (img.embeddings @ txt.T).argmax(dim=1).numpy()
    pos = {n: i for i, n in enumerate(names)}
    order = {iid: r for r, iid in enumerate(test["image_id"])}
    truth = [(pos[test["left_class"].iloc[order[i]]], pos[test["right_class"].iloc[order[i]]]) for i in img.image_ids]
    got = [pairs[p] for p in pred]
    ordered = np.mean([g == t for g, t in zip(got, truth)])
    unordered = np.mean([set(g) == set(t) for g, t in zip(got, truth)])
    n_pairs = len(pairs)
    return {"ordered top-1": float(ordered), "ordered chance": 1 / n_pairs,
            "unordered top-1": float(unordered), "unordered chance": 2 / n_pairs, "n_prompts": n_pairs}


def train_paired_cifar(manifest: pd.DataFrame, epochs: int = 6, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                       config: str = "tiny", classify: bool = True, progress: bool = True, device: str = "auto"):
    """Train :class:`ScratchImageFrozenText` on the ``train`` pairs of a paired-CIFAR-100 manifest; returns
    ``(results table, History)`` with test retrieval R@1/5/10 (percent) and, with ``classify``, pair
    classification among all C·(C−1) class-pair prompts (proportions), each with its chance level."""

    train, test = (subset(manifest, (manifest["split"] == s).to_numpy()) for s in ("train", "test"))
    if len(train) == 0 or len(test) == 0:
        raise ValueError("the paired manifest needs both train and test pairs")
    model = ScratchImageFrozenText(config, seed=seed)
    model.preprocess = pair_preprocess(model.preprocess)
    batch = min(batch_size, len(train))
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, warmup_steps=capped_warmup(10, len(train), batch, epochs),
                      seed=seed, eval_every=max(1, epochs // 3), device=device)
    pairs = PairDataset(train, model.preprocess, cfg.caption_sampling, cfg.seed, cache=True)
    history = train_contrastive(model, pairs, val_data=test, config=cfg, progress=progress)
    model.eval()
    run = evaluate_retrieval(model, test, "paired-cifar100", model.name, progress=progress)
    ret, chance = run.results[0], recall_chance(run.text_to_image, len(run.image_ids))
    rows = []
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            rows.append({"metric": f"{d} R@{k} (%)", "value": ret[f"{d}_R@{k}"], "chance": chance[f"{d}_R@{k}"]})
    if classify:
        names = manifest.attrs.get("vlnb", {}).get("class_names") or sorted(
            set(manifest["left_class"]) | set(manifest["right_class"]))
        cls = pair_classification(model, test, names, progress=progress)
        rows.append({"metric": "pair classification, ordered top-1", "value": cls["ordered top-1"],
                     "chance": cls["ordered chance"]})
        rows.append({"metric": "pair classification, either order top-1", "value": cls["unordered top-1"],
                     "chance": cls["unordered chance"]})
    out = pd.DataFrame(rows)
    out["train pairs"], out["test pairs"], out["epochs"] = len(train), len(test), epochs
    return out, history
