"""The heads: two projection heads over cached frozen features, trained as a dual encoder; scoring."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import DualEncoder, weights_fingerprint
from ..models.scratch import Block, init_tower
from ..models.towers import make_head
from ..timing import timer
from ..train import TrainConfig, train_contrastive
from ..train.trainer import caption_choice
from .features import FrozenFeatures

HEAD_KINDS = ("linear", "mlp")


class HeadsDualEncoder(DualEncoder):
    """Two projection heads over cached frozen features, as a :class:`DualEncoder` the trainer can train.

    ``encode_image(x)``: ``x`` is a batch of image-feature vectors ``(B, D_image)`` (the "pixels" of
    :func:`vlnb.train.train_contrastive`). ``tokenize(captions)`` looks each caption up in the text-feature
    table set by :meth:`set_text_table` and returns ``{"rows": indices}``; ``encode_text(rows=...)`` projects
    those rows. Both outputs are L2-normalised; ``log_logit_scale`` starts at ``log(1/0.07)`` as in CLIP.
    The head weights are initialised from ``seed`` alone (the global RNG is left untouched).
    """

    family = "heads"
    text_input_names = ("rows",)

    def __init__(self, image_dim: int, text_dim: int, head: str = "linear", embed_dim: int = 256,
                 hidden_dim: int | None = None, seed: int = 0, init_temperature: float = 0.07, name: str | None = None):
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {head!r}")
        if min(image_dim, text_dim, embed_dim) < 1:
            raise ValueError(f"dimensions must be positive, got image {image_dim}, text {text_dim}, embed {embed_dim}")
        super().__init__(name or f"{head} head (seed {seed})", preprocess=None)
        self.image_dim, self.text_dim, self.embed_dim = int(image_dim), int(text_dim), int(embed_dim)
        self.head_kind, self.hidden_dim, self.seed = head, hidden_dim, int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.image_head = make_head(head, self.image_dim, self.embed_dim, hidden_dim)
            self.text_head = make_head(head, self.text_dim, self.embed_dim, hidden_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.register_buffer("text_table", torch.empty(0, self.text_dim), persistent=False)
        self._rows: dict[str, int] = {}

    def adapter_config(self) -> dict:
        return {"head": self.head_kind, "image_dim": self.image_dim, "text_dim": self.text_dim,
                "embed_dim": self.embed_dim, "hidden_dim": self.hidden_dim}

    def fingerprint(self) -> str:
        return weights_fingerprint(self, {"family": self.family, **self.adapter_config()})

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def set_text_table(self, texts: Sequence[str], features: torch.Tensor) -> None:
        """The captions :meth:`tokenize` knows and their frozen features ``(len(texts), D_text)``."""
        if features.ndim != 2 or features.shape != (len(texts), self.text_dim):
            raise ValueError(f"text features must be ({len(texts)}, {self.text_dim}), got {tuple(features.shape)}")
        self.text_table = features.detach().float().to(self.log_logit_scale.device)
        self._rows = {t: i for i, t in enumerate(texts)}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        missing = [t for t in texts if t not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} caption(s) have no cached text features (set_text_table), "
                           f"e.g. {missing[:3]}")
        return {"rows": torch.tensor([self._rows[t] for t in texts], dtype=torch.long)}

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features.to(self.log_logit_scale.device).float()), dim=-1)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features.to(self.log_logit_scale.device).float()), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 2 or pixel_values.shape[1] != self.image_dim:
            raise ValueError(f"HeadsDualEncoder takes image features (B, {self.image_dim}), "
                             f"got {tuple(pixel_values.shape)}")
        return self.project_image(pixel_values)

    def encode_text(self, rows: torch.Tensor, **_) -> torch.Tensor:
        return self.project_text(self.text_table[rows.to(self.text_table.device)])


class QFormerHeads(HeadsDualEncoder):
    """A small BLIP-2-like Q-Former over a cached frozen *patch map*, with a linear text head, as a dual encoder.

    Image side: the ``(B, P, D_image)`` patch tokens (EfficientNet-Lite0's 7x7 map: ``P = 49``) go through
    LayerNorm + Linear to ``width`` plus a learned position embedding; ``n_queries`` learned queries pass
    ``layers`` pre-norm blocks of self-attention (queries among themselves), cross-attention (queries to the
    patch tokens) and an MLP (:class:`vlnb.models.scratch.Block`); each query output is projected to
    ``embed_dim`` and L2-normalised: ``encode_image`` returns ``(B, n_queries, embed_dim)``. Text side: a linear
    head on the cached sentence features, as :class:`HeadsDualEncoder`'s. Score of a pair = **max over the
    queries** of ``query . text`` (BLIP-2's ITC), both in training (:func:`vlnb.train.loss.clip_logits` takes
    ``(B, Q, D)`` image embeddings) and at test time (:func:`similarity`). No ITM head.
    """

    family = "heads"

    def __init__(self, image_dim: int, text_dim: int, n_patches: int = 49, embed_dim: int = 256, width: int = 128,
                 layers: int = 2, n_queries: int = 8, n_heads: int = 4, seed: int = 0,
                 init_temperature: float = 0.07, name: str | None = None):
        if min(n_patches, width, layers, n_queries, n_heads) < 1 or width % n_heads:
            raise ValueError(f"Q-Former needs positive sizes and width % heads == 0, got patches {n_patches}, "
                             f"width {width}, layers {layers}, queries {n_queries}, heads {n_heads}")
        super().__init__(image_dim, text_dim, "linear", embed_dim, None, seed, init_temperature,
                         name or f"Q-Former (seed {seed})")
        self.head_kind = "qformer"
        self.n_patches, self.width, self.layers, self.n_queries, self.n_heads = (
            int(n_patches), int(width), int(layers), int(n_queries), int(n_heads))
        del self.image_head
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 7919)  # the text head above came from `seed` exactly as the linear head's
            self.image_in = nn.Sequential(nn.LayerNorm(self.image_dim), nn.Linear(self.image_dim, self.width))
            self.patch_pos = nn.Parameter(torch.randn(self.n_patches, self.width) * 0.02)
            self.query_tokens = nn.Parameter(torch.randn(self.n_queries, self.width) * 0.02)
            self.blocks = nn.ModuleList(Block(self.width, self.n_heads, 4.0, cross=True) for _ in range(self.layers))
            self.ln_final = nn.LayerNorm(self.width)
            self.proj = nn.Linear(self.width, self.embed_dim, bias=False)
            init_tower(self, self.width, self.layers)

    def adapter_config(self) -> dict:
        return {"head": "qformer", "image_dim": self.image_dim, "text_dim": self.text_dim, "embed_dim": self.embed_dim,
                "n_patches": self.n_patches, "width": self.width, "layers": self.layers, "n_queries": self.n_queries,
                "n_heads": self.n_heads}

    def query_outputs(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, n_queries, width)`` query outputs over ``(B, n_patches, image_dim)`` patch features."""
        ctx = self.image_in(patches.to(self.log_logit_scale.device).float()) + self.patch_pos
        x = self.query_tokens.expand(len(ctx), -1, -1)
        for blk in self.blocks:
            x = blk(x, memory=ctx)
        return self.ln_final(x)

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.query_outputs(features)), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        want = (self.n_patches, self.image_dim)
        if pixel_values.ndim != 3 or tuple(pixel_values.shape[1:]) != want:
            raise ValueError(f"QFormerHeads takes patch features (B, {want[0]}, {want[1]}), "
                             f"got {tuple(pixel_values.shape)}")
        return self.project_image(pixel_values)


class FeaturePairs(torch.utils.data.Dataset):
    """``(image feature vector, caption)`` training pairs, one per image that has a caption.

    The caption of each image is drawn per epoch exactly as :class:`vlnb.train.PairDataset` draws it
    (``caption_sampling="random"``: from a generator seeded by ``(seed, epoch)``; ``"first"``: always the first).
    """

    def __init__(self, features: torch.Tensor, captions: Sequence[Sequence[str]], caption_sampling: str = "random",
                 seed: int = 0):
        if caption_sampling not in ("random", "first"):
            raise ValueError(f"caption_sampling must be 'random' or 'first', got {caption_sampling!r}")
        if len(features) != len(captions):
            raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
        keep = [i for i, c in enumerate(captions) if len(c) > 0]
        if not keep:
            raise ValueError("no image has a caption: nothing to train on")
        self.features = features[keep].float()
        self.captions = [list(captions[i]) for i in keep]
        self.caption_sampling, self.seed = caption_sampling, int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self._choice = caption_choice([len(c) for c in self.captions], self.caption_sampling, self.seed, epoch)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return self.features[i], self.captions[i][self._choice[i]]


@timer("training")
def train_head(
    train: FrozenFeatures,
    head: str = "linear",
    seed: int = 0,
    config=None,
    embed_dim: int = 256,
    hidden_dim: int | None = None,
    progress: bool = False,
):
    """Train one :class:`HeadsDualEncoder` on ``train`` with :func:`vlnb.train.train_contrastive`.

    ``config``: :class:`vlnb.train.TrainConfig` fields (dict or object); its ``seed`` is replaced by ``seed``,
    which also seeds the head initialisation. Returns ``(model in eval mode, History)``.
    """
    base = config.model_dump() if hasattr(config, "model_dump") else dict(config or {})
    cfg = TrainConfig(**{**base, "seed": int(seed)})
    model = HeadsDualEncoder(train.image_dim, train.text_dim, head, embed_dim, hidden_dim, seed)
    model.set_text_table(train.texts, train.text)
    pairs = FeaturePairs(train.pooled, train.captions, cfg.caption_sampling, cfg.seed)
    history = train_contrastive(model, pairs, config=cfg, progress=progress)
    return model.eval(), history

@timer("training")
def train_qformer(train: FrozenFeatures, seed: int = 0, config=None, embed_dim: int = 256, width: int = 128,
                  layers: int = 2, n_queries: int = 8, progress: bool = False):
    """Train one :class:`QFormerHeads` on ``train`` (image features = the ``(N, P, D)`` patch map) with the same
    trainer, recipe and seed handling as :func:`train_head`. Returns ``(model in eval mode, History)``."""
    if train.image.ndim != 3:
        raise ValueError(f"a Q-Former needs patch features (N, P, D), got {tuple(train.image.shape)}")
    base = config.model_dump() if hasattr(config, "model_dump") else dict(config or {})
    cfg = TrainConfig(**{**base, "seed": int(seed)})
    model = QFormerHeads(train.image_dim, train.text_dim, int(train.image.shape[1]), embed_dim, width, layers,
                         n_queries, seed=seed)
    model.set_text_table(train.texts, train.text)
    pairs = FeaturePairs(train.image, train.captions, cfg.caption_sampling, cfg.seed)
    history = train_contrastive(model, pairs, config=cfg, progress=progress)
    return model.eval(), history


def similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(N, M)``; multi-query ``(N, Q, D)`` image embeddings take the max over queries."""
    return DualEncoder.similarity(None, image_emb.float(), text_emb.float())


@torch.no_grad()
def head_embeddings(model: HeadsDualEncoder, feats: FrozenFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (N, D), text (M, D))`` normalised embeddings of ``feats`` through the heads (CPU); a
    :class:`QFormerHeads` reads the patch map and gives ``(N, n_queries, D)`` image embeddings."""
    img = feats.image if isinstance(model, QFormerHeads) else feats.pooled
    return model.project_image(img).cpu(), model.project_text(feats.text).cpu()


@torch.no_grad()
def pretrained_embeddings(model, feats: FrozenFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretrained contrastive head applied to cached frozen features -- exactly the model's own
    ``encode_image`` / ``encode_text`` (towers: its trained heads; BLIP-2: ``vision_projection`` on each of the
    32 query outputs, ``(N, 32, D)``, and ``text_projection`` on ``[CLS]``). BLIP-2 needs unpooled features."""
    family = getattr(model, "family", None)
    if family == "towers":
        return model.project_image(feats.image).float().cpu(), model.project_text(feats.text).float().cpu()
    if family == "blip2":
        if feats.image.ndim != 3:
            raise ValueError("BLIP-2's ITC head needs all query outputs: extract with pool_queries=False")
        vp, tp = model.model.vision_projection, model.model.text_projection
        dev = vp.weight.device
        img = F.normalize(vp(feats.image.to(dev, vp.weight.dtype)).float(), dim=-1).cpu()
        txt = F.normalize(tp(feats.text.to(dev, tp.weight.dtype)).float(), dim=-1).cpu()
        return img, txt
    raise ValueError(f"no pretrained head for family {family!r}")
