"""Contrastive (CLIP) training of any :class:`~vlnb.models.base.DualEncoder`: one loop, done carefully.

What :func:`train_contrastive` does, and why:

- **Batches are the negatives.** The symmetric InfoNCE loss (:mod:`vlnb.train.loss`) treats every other
  pair of a batch as a negative. A global batch of 2 gives each sample *one* negative: the task is almost
  trivial, the loss collapses fast and the embedding space stays poorly organised (mean similarities can
  even turn negative). CLIP used 32k. :class:`TrainConfig` warns below 16.
- **Gradient accumulation keeps every sample a negative** (gradient caching, Gao et al. 2021): with
  ``accum_steps = k`` the step's ``k`` micro-batches are first embedded without gradient, the loss is
  computed once over all of them with the embeddings as leaf tensors, its gradient w.r.t. each embedding
  is taken, and every micro-batch is then re-embedded *with* gradient and back-propagated with
  ``emb.backward(grad)``. The result equals one batch of ``k * batch_size`` at the memory of one
  micro-batch (plus one extra forward). Naive accumulation (k separate losses) would shrink the number
  of negatives ``k``-fold. Random states are replayed so dropout masks match between the two passes.
- **Data parallel** (torchrun, :mod:`vlnb.train.distributed`): every rank embeds its slice, embeddings
  are gathered with gradient, the loss is over the global batch, gradients are averaged.
- AdamW without weight decay on norms, biases, embeddings and the temperature; linear warmup + cosine
  decay; gradient clipping; autocast on CUDA (bf16 from compute capability 8, fp16 + GradScaler below); only parameters with
  ``requires_grad`` are trained (frozen towers); the temperature is clamped at ``max_logit_scale``.
- **Exact resume**: an atomic checkpoint per epoch (model, optimizer, scheduler, scaler, RNG states,
  history) loadable with ``weights_only=True``; the data order and caption choice of epoch ``e`` depend
  only on ``(seed, e)``, so a run interrupted and resumed ends with the same weights as a straight one.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..data.images import BadImageError, open_rgb
from ..data.manifest import texts_and_targets
from ..data.pixels import cacheable, decoded_pixels
from ..device import autocast_dtype, resolve_device
from ..eval.retrieval import recall_at_k
from ..progress import tqdm
from ..timing import timed, timer
from . import plots
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from .distributed import DistInfo, average_gradients, barrier, broadcast_parameters, init_distributed
from .loss import MAX_LOGIT_SCALE, contrastive_loss
from .schedule import warmup_cosine_scheduler

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
#: Config fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"epochs", "num_workers", "eval_every", "eval_batch_size", "device"})
SMALL_BATCH = 16


class TrainConfig(BaseModel):
    """Hyper-parameters of :func:`train_contrastive` (validated; unknown names are errors).

    The global batch (number of pairs per optimizer step, i.e. negatives + 1 per sample) is
    ``batch_size * accum_steps * world_size``; ``batch_size`` is the micro-batch one process embeds at once.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    accum_steps: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    #: Max global gradient norm (None = no clipping).
    grad_clip: float | None = 1.0
    seed: int = 0
    #: Mixed precision on CUDA (autocast with ``amp_dtype``); ignored on CPU, which trains in float32.
    amp: bool = True
    #: "auto": bf16 on GPUs of compute capability >= 8, fp16 (with GradScaler) on older ones such as the T4.
    amp_dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    #: Upper bound of exp(logit_scale) (CLIP: 100).
    max_logit_scale: float = Field(MAX_LOGIT_SCALE, gt=0)
    #: How a manifest's captions become pairs: a random caption per image per epoch, or always the first.
    caption_sampling: Literal["random", "first"] = "random"
    num_workers: int = Field(0, ge=0)
    #: Evaluate retrieval on ``val_data`` every this many epochs (and after the last one).
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    #: None / "auto": ``cuda:LOCAL_RANK`` when CUDA is available, else CPU (see :mod:`vlnb.device`).
    device: str | None = None

    def global_batch(self, world_size: int = 1) -> int:
        return self.batch_size * self.accum_steps * world_size


# ---------------------------------------------------------------------------------------------- data
def _pixels(src, preprocess, image_id) -> torch.Tensor:
    try:
        with timed("decode"):
            return preprocess([open_rgb(src)])[0]
    except BadImageError as e:
        raise BadImageError(
            f"image_id {image_id!r}: {e.reason} (drop bad images from the manifest first: "
            "vlnb.data.drop_bad_images)",
            e.source,
        ) from None


def caption_choice(n_captions, sampling: str, seed: int, epoch: int) -> np.ndarray:
    """Index of the caption each image uses in ``epoch``: always 0 (``"first"``), or drawn uniformly from a
    generator seeded by ``(seed, epoch)`` (``"random"``), so the choice is reproducible and worker-independent."""
    n_caps = np.asarray(n_captions)
    if sampling == "first":
        return np.zeros(len(n_caps), dtype=np.int64)
    u = np.random.default_rng([int(seed), int(epoch), 0xC4]).random(len(n_caps))
    return np.minimum((u * n_caps).astype(np.int64), n_caps - 1)


class PairDataset(torch.utils.data.Dataset):
    """``(pixels, caption)`` training pairs from a manifest: one item per image that has a caption.

    ``caption_sampling="random"`` picks one of the image's captions per epoch, from a generator seeded by
    ``(seed, epoch)`` (call :meth:`set_epoch`), so the choice is reproducible and independent of workers;
    ``"first"`` always takes the first. Images are decoded with :func:`vlnb.data.images.open_rgb` and
    preprocessed with ``preprocess`` (the model's); ``cache=True`` keeps the preprocessed tensors in memory
    (useful for small image sets with ``num_workers=0``).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        preprocess: Callable,
        caption_sampling: str = "random",
        seed: int = 0,
        cache: bool = False,
    ):
        if caption_sampling not in ("random", "first"):
            raise ValueError(f"caption_sampling must be 'random' or 'first', got {caption_sampling!r}")
        for col in ("image_id", "image", "captions"):
            if col not in manifest.columns:
                raise ValueError(f"PairDataset needs a manifest with column '{col}'")
        keep = [i for i, c in enumerate(manifest["captions"]) if len(c) > 0]
        if not keep:
            raise ValueError("the manifest has no image with a caption: nothing to train on")
        self.image_ids = [manifest["image_id"].iloc[i] for i in keep]
        self.images = [manifest["image"].iloc[i] for i in keep]
        self.captions = [list(manifest["captions"].iloc[i]) for i in keep]
        self.preprocess, self.caption_sampling, self.seed = preprocess, caption_sampling, int(seed)
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        # an ImagePreprocess: every image decoded once into the shared pixel cache (vlnb.data.pixels), for
        # every epoch, worker and later run; other preprocess callables decode on access
        self._px, self._rows = None, np.asarray(keep, dtype=np.int64)

        if cacheable(preprocess):
            self._px, self._cache = decoded_pixels(manifest, preprocess, progress=False), None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose the caption of every image for ``epoch`` (deterministic in ``(seed, epoch)``)."""
        self._choice = caption_choice([len(c) for c in self.captions], self.caption_sampling, self.seed, epoch)

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, i: int) -> str:
        return self.captions[i][self._choice[i]]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        if self._px is not None:
            return self._px.normalized(self._rows[i : i + 1])[0], self.caption(i)
        if self._cache is not None and i in self._cache:
            x = self._cache[i]
        else:
            x = _pixels(self.images[i], self.preprocess, self.image_ids[i])
            if self._cache is not None:
                self._cache[i] = x
        return x, self.caption(i)


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, manifest: pd.DataFrame, preprocess):
        self.ids, self.images, self.preprocess = (
            list(manifest["image_id"]),
            list(manifest["image"]),
            preprocess,
        )
        # decoded once (vlnb.data.pixels), not at every evaluation of every epoch
        self._px = decoded_pixels(manifest, preprocess, progress=False) if cacheable(preprocess) else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        if self._px is not None:
            return self._px.normalized([i])[0]
        return _pixels(self.images[i], self.preprocess, self.ids[i])


def _collate_pairs(items):
    """``(pixels, captions)``, or ``(pixels, captions, foils)`` for ``(pixels, caption, [foil, ...])`` items
    (NegCLIP: every item's foils become extra text negatives of the whole batch)."""
    pixels, captions = torch.stack([it[0] for it in items]), [str(it[1]) for it in items]
    if all(len(it) == 2 for it in items):
        return pixels, captions
    return pixels, captions, [str(f) for it in items for f in (it[2] if len(it) > 2 else ())]


def epoch_batches(
    n: int, batch: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's indices of every optimizer step of ``epoch``: a ``(seed, epoch)`` permutation of
    ``range(n)`` cut into global batches of ``batch * world_size`` (the incomplete last one dropped),
    rank ``r`` taking the ``r``-th slice of ``batch`` of each."""
    g = batch * world_size
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    return [perm[s * g + rank * batch : s * g + (rank + 1) * batch].tolist() for s in range(n // g)]


# ---------------------------------------------------------------------------------------------- model helpers
def logit_scale_parameter(model: torch.nn.Module) -> torch.Tensor | None:
    """The model's log-space temperature parameter (``log(1 / tau)``), or None if it has none.

    The parameter whose name ends in ``logit_scale`` (``log_logit_scale`` in vlnb's scratch model,
    ``model.logit_scale`` inside the HF CLIP adapter, whose ``logit_scale`` *property* is the exp'd value).
    """
    found = [
        p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("logit_scale", "log_logit_scale")
    ]
    if len(found) > 1:
        raise ValueError(
            f"{type(model).__name__} has {len(found)} logit_scale parameters; expected at most one"
        )
    return found[0] if found else None


def _log_scale(model) -> torch.Tensor | float:
    p = logit_scale_parameter(model)
    if p is not None:
        return p
    s = getattr(model, "logit_scale", None)
    if s is None:
        raise AttributeError(f"{type(model).__name__} has no logit_scale (neither a parameter nor a value)")
    return math.log(float(s))


_NORM_TYPES = (
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.batchnorm._NormBase,
    torch.nn.Embedding,
)
_NO_DECAY_NAMES = (
    "logit_scale",
    "pos_emb",
    "positional_embedding",
    "position_embedding",
    "cls_token",
    "class_embedding",
    "token_embedding",
    "query_tokens",
    "memory",
)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups of the trainable parameters: decay on weight matrices only; none on norms, biases,
    embeddings (token/position/CLS), 1-D parameters and the temperature. Group names: "decay", "no_decay"."""
    decay, no_decay, seen = [], [], set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{pname}" if mname else pname
            skip = (
                isinstance(module, _NORM_TYPES)
                or p.ndim < 2
                or pname == "bias"
                or any(k in full for k in _NO_DECAY_NAMES)
                or "norm" in type(module).__name__.lower()
            )
            (no_decay if skip else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter (all have requires_grad=False)")
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def adamw(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with ``cfg``'s lr, betas, eps and weight decay, using PyTorch's fused
    kernel wherever it exists (floating-point parameters on a CPU or a CUDA GPU): one pass over each tensor
    instead of a chain of element-wise ops, each with a temporary as large as the tensor. On one CPU thread this
    took ViT-B/32's training step from 0.94x to 1.03-1.07x open_clip's (medians of two runs of
    ``benchmarks/train_throughput.py --device cpu --batch-size 8 --steps 1 --repeats 15``)."""
    groups = param_groups(model, cfg.weight_decay)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True if fused else None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's kernel choice (fused or not): the saved
    groups would otherwise bring back the kernel of the run that wrote them."""
    kernel = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for g, k in zip(optimizer.param_groups, kernel):
        g.update(k)


def _to(tokens: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in tokens.items()}


def _chunk_tokens(tokens: dict, start: int, stop: int) -> dict:
    return {k: (v[start:stop] if isinstance(v, torch.Tensor) else v) for k, v in tokens.items()}


def _device_rng(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_device_rng(device: torch.device, state) -> None:
    if state is not None:
        torch.cuda.set_rng_state(state, device)


# ---------------------------------------------------------------------------------------------- evaluation
@timer("encoding")
@torch.no_grad()
def evaluate_retrieval(
    model,
    manifest: pd.DataFrame,
    batch_size: int = 256,
    num_workers: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    autocast=None,
    progress: bool = False,
) -> dict[str, float]:
    """Recall@K (percent, both directions, :func:`vlnb.eval.retrieval.recall_at_k`) of ``model`` on a
    manifest: all its images against all its captions. Not cached (weights change while training)."""

    texts, t2i = texts_and_targets(manifest)
    if not texts:
        raise ValueError("validation manifest has no captions: cannot evaluate retrieval")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = autocast or contextlib.nullcontext()
    try:
        ds = ImageDataset(manifest, model.preprocess)
        if ds._px is not None:  # cached pixels: whole batches straight from the memory map
            loader = (ds._px.normalized(np.arange(s, min(s + batch_size, len(ds))))
                      for s in range(0, len(ds), batch_size))
        else:
            loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers)
        if progress:
            loader = tqdm(loader, desc="val images", leave=False)
        with ctx:
            img = torch.cat([model.encode_image(x.to(device)).float() for x in loader])
            txt = torch.cat(
                [
                    model.encode_text(**_to(model.tokenize(texts[i : i + batch_size]), device)).float()
                    for i in range(0, len(texts), batch_size)
                ]
            )
        sim = model.similarity(img, txt) if hasattr(model, "similarity") else img @ txt.T
        return recall_at_k(sim.float().cpu(), t2i, ks)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------- history
@dataclass
class History:
    """Per-step and per-epoch training records (plain dicts, so they go into a weights-only checkpoint).

    ``steps``: step, epoch, loss, logit_scale (exp'd, after the step), lr (used by the step), grad_norm.
    ``epochs``: epoch, step, train_loss (mean over the epoch), logit_scale, lr, epoch_time_s,
    samples_per_s and, when evaluated, the validation ``i2t_R@k`` / ``t2i_R@k``.
    """

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)

    @property
    def steps_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.steps)

    @property
    def epochs_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.epochs)

    def tidy(self) -> pd.DataFrame:
        """Long format ``(level, epoch, step, metric, value)`` of both tables (for seaborn)."""
        parts = []
        for level, df in (("step", self.steps_df), ("epoch", self.epochs_df)):
            if len(df):
                parts.append(df.melt(id_vars=["epoch", "step"], var_name="metric").assign(level=level))
        if not parts:
            return pd.DataFrame(columns=["level", "epoch", "step", "metric", "value"])
        out = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
        return out[["level", "epoch", "step", "metric", "value"]]

    def state_dict(self) -> dict:
        return {"steps": [dict(r) for r in self.steps], "epochs": [dict(r) for r in self.epochs]}

    @classmethod
    def from_state(cls, state: dict) -> History:
        return cls([dict(r) for r in state.get("steps", [])], [dict(r) for r in state.get("epochs", [])])

    def plot(self, axes=None):
        return plots.plot_history(self, axes)  # looked up on the module: a patched plot_history is used


# ---------------------------------------------------------------------------------------------- training
class _Trainer:
    """State of one :func:`train_contrastive` call (kept private: the function is the API)."""

    def __init__(self, model, cfg: TrainConfig, info: DistInfo, device: torch.device):
        self.model, self.cfg, self.info, self.device = model, cfg, info, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.scale_param = logit_scale_parameter(model)
        self.use_amp = cfg.amp and device.type == "cuda"
        if cfg.amp_dtype == "auto":
            self.amp_dtype = autocast_dtype(device) or torch.bfloat16  # (unused off CUDA: use_amp is False)
        else:
            self.amp_dtype = getattr(torch, cfg.amp_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.optimizer = adamw(model, cfg)
        self.tower_needs_grad: dict[str, bool] = {}

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def encode(self, tower: str, pixels: torch.Tensor, tokens: dict) -> torch.Tensor:
        with self.autocast():
            out = self.model.encode_image(pixels) if tower == "image" else self.model.encode_text(**tokens)
        return out.float()

    def loss(self, img, txt, neg=None) -> torch.Tensor:
        return contrastive_loss(img, txt, _log_scale(self.model), self.cfg.max_logit_scale, neg_text_emb=neg)

    def backward_step(self, pixels: torch.Tensor, tokens: dict, neg_tokens: dict | None = None) -> float:
        """Forward + backward of one step's local samples; returns the (global) loss. ``neg_tokens``: the
        batch's extra text negatives (NegCLIP), one forward pass with gradient through the text tower."""
        if neg_tokens is not None:
            if self.cfg.accum_steps != 1:
                raise ValueError("extra text negatives (NegCLIP) need accum_steps=1 (gradient caching does not "
                                 "carry them); use a larger batch_size instead")
            neg = self.encode("text", pixels, neg_tokens)
            loss = self.loss(self.encode("image", pixels, tokens), self.encode("text", pixels, tokens), neg)
            self.scaler.scale(loss).backward()
            return loss.item()
        if self.cfg.accum_steps == 1:
            loss = self.loss(self.encode("image", pixels, tokens), self.encode("text", pixels, tokens))
            self.scaler.scale(loss).backward()
            return loss.item()
        # gradient caching: 1) embed every micro-batch without gradient, remembering the random states
        n, bs = len(pixels), self.cfg.batch_size
        chunks = [(pixels[a : a + bs], _chunk_tokens(tokens, a, a + bs)) for a in range(0, n, bs)]
        states, emb = {}, {"image": [], "text": []}
        with torch.no_grad():
            for j, (px, tok) in enumerate(chunks):
                for tower, out in emb.items():
                    states[j, tower] = (torch.get_rng_state(), _device_rng(self.device))
                    out.append(self.encode(tower, px, tok))
        # 2) one loss over the whole step with the embeddings as leaves -> d loss / d embedding
        leaves = {tower: torch.cat(e).requires_grad_() for tower, e in emb.items()}
        loss = self.loss(leaves["image"], leaves["text"])
        self.scaler.scale(loss).backward()
        after = (torch.get_rng_state(), _device_rng(self.device))
        # 3) re-embed each micro-batch with gradient (replaying its random state: same dropout masks)
        #    and push the cached gradient through it; a frozen tower is not re-run
        for j, (px, tok) in enumerate(chunks):
            outs, grads = [], []
            for tower, leaf in leaves.items():
                if not self.tower_needs_grad.get(tower, True):
                    continue
                torch.set_rng_state(states[j, tower][0])
                _set_device_rng(self.device, states[j, tower][1])
                e = self.encode(tower, px, tok)
                self.tower_needs_grad[tower] = e.requires_grad
                if e.requires_grad:
                    outs.append(e)
                    grads.append(leaf.grad[j * bs : j * bs + len(px)])
            if outs:
                torch.autograd.backward(outs, grads)
        torch.set_rng_state(after[0])
        _set_device_rng(self.device, after[1])
        return loss.item()

    def optimizer_step(self) -> float:
        average_gradients(self.params)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.params if p.grad is not None])
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scale_param is not None and self.scale_param.requires_grad:
            with torch.no_grad():
                self.scale_param.clamp_(0.0, math.log(self.cfg.max_logit_scale))
        return float(norm)

    def logit_scale_value(self) -> float:
        s = _log_scale(self.model)
        s = float(s.detach()) if isinstance(s, torch.Tensor) else s
        return min(math.exp(s), self.cfg.max_logit_scale)


def _resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:

    dev = resolve_device(cfg.device)  # None / "auto": CUDA when available, else the CPU
    return torch.device(f"cuda:{info.local_rank}") if dev == "cuda" else torch.device(dev)


def _check_resume(saved: dict, cfg: TrainConfig, path: Path) -> None:
    now = cfg.model_dump()
    diff = sorted(
        k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    )
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ValueError(
            f"cannot resume from {path}: the training config changed ({detail}). Use the original config, "
            "pass resume=False to start over (the checkpoint is overwritten), or choose another out_dir"
        )
    if saved.get("epochs") != now["epochs"]:
        warnings.warn(
            f"resuming with epochs={now['epochs']} instead of {saved.get('epochs')}: the cosine schedule is "
            "recomputed for the new length, so the run will not match a straight run of either length",
            stacklevel=3,
        )


@timer("training")
def train_contrastive(
    model,
    train_data,
    val_data: pd.DataFrame | None = None,
    config: TrainConfig | dict | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[History], Any] | None = None,
) -> History:
    """Train ``model`` (a dual encoder) with the CLIP loss; returns the :class:`History`.

    ``train_data``: a manifest (wrapped in :class:`PairDataset` with the config's ``caption_sampling`` and
    ``seed``) or any map-style dataset of ``(pixels (3, H, W), caption)`` items (``set_epoch(e)`` is called
    when it has one). ``val_data``: a manifest evaluated with :func:`evaluate_retrieval` every
    ``eval_every`` epochs. ``out_dir``: where ``checkpoint.pt`` is written atomically after every epoch;
    with ``resume=True`` an existing checkpoint there is loaded and training continues after its last
    epoch (the config must match, see :data:`RESUMABLE_CHANGES`). ``on_epoch_end(history)`` runs after
    each epoch's checkpoint (e.g. a live plot, :func:`vlnb.train.plots.live_plot`); returning ``False``
    stops training. In a process group (torchrun) every rank calls this function; rank 0 writes.
    A fresh run seeds python/numpy/torch with ``config.seed`` (a resumed one restores the saved states).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**(config or {}))
    info = init_distributed()
    device = _resolve_device(cfg, info)
    model.to(device)
    broadcast_parameters(model)
    if isinstance(train_data, pd.DataFrame):
        train_data = PairDataset(train_data, model.preprocess, cfg.caption_sampling, cfg.seed)
    local_batch = cfg.batch_size * cfg.accum_steps
    global_batch = cfg.global_batch(info.world_size)
    steps_per_epoch = len(train_data) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_data)} training pairs cannot fill one global batch of {global_batch} "
            f"(batch_size {cfg.batch_size} x accum_steps {cfg.accum_steps} x world_size {info.world_size})"
        )
    if global_batch < SMALL_BATCH:
        warnings.warn(
            f"global batch of {global_batch} pairs: each sample sees only {global_batch - 1} negative(s), "
            "so the contrastive task is nearly trivial; use a larger batch (or accum_steps) of at "
            f"least {SMALL_BATCH}",
            stacklevel=2,
        )
    tr = _Trainer(model, cfg, info, device)
    scheduler = warmup_cosine_scheduler(
        tr.optimizer, cfg.warmup_steps, steps_per_epoch * cfg.epochs, cfg.min_lr_ratio
    )
    history, start_epoch, step = History(), 0, 0
    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None

    if resume and ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location=device)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not a vlnb training checkpoint (format {ck.get('format')!r})")
        _check_resume(ck["config"], cfg, ckpt_path)
        if ck.get("world_size", 1) != info.world_size:
            warnings.warn(
                f"checkpoint was written with world_size={ck.get('world_size')}, resuming with "
                f"{info.world_size}: data order differs from a straight run",
                stacklevel=2,
            )
        model.load_state_dict(ck["model"])
        load_optimizer_state(tr.optimizer, ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        tr.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        history, start_epoch, step = History.from_state(ck["history"]), int(ck["epoch"]), int(ck["step"])
    else:
        seed_everything(cfg.seed)

    show = progress and info.is_main
    epochs = range(start_epoch, cfg.epochs)
    epoch_bar = tqdm(epochs, desc="epochs", initial=start_epoch, total=cfg.epochs) if show else epochs
    model.train()
    for epoch in epoch_bar:
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        batches = epoch_batches(len(train_data), local_batch, cfg.seed, epoch, info.rank, info.world_size)
        loader = torch.utils.data.DataLoader(
            train_data, batch_sampler=batches, num_workers=cfg.num_workers, collate_fn=_collate_pairs
        )
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False) if show else loader
        t0, losses = time.perf_counter(), []
        for pixels, captions, *foils in bar:
            lr = tr.optimizer.param_groups[0]["lr"]
            neg_tokens = _to(model.tokenize(foils[0]), device) if foils and foils[0] else None
            loss = tr.backward_step(pixels.to(device), _to(model.tokenize(captions), device), neg_tokens)
            grad_norm = tr.optimizer_step()
            scheduler.step()
            step += 1
            losses.append(loss)
            scale = tr.logit_scale_value()
            history.steps.append(
                {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss": loss,
                    "logit_scale": scale,
                    "lr": lr,
                    "grad_norm": grad_norm,
                }
            )
            if show:
                bar.set_postfix(loss=f"{loss:.3f}", scale=f"{scale:.1f}")
        elapsed = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(np.mean(losses)),
            "logit_scale": tr.logit_scale_value(),
            "lr": tr.optimizer.param_groups[0]["lr"],
            "epoch_time_s": elapsed,
            "samples_per_s": len(batches) * global_batch / max(elapsed, 1e-9),
        }
        if val_data is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            row.update(
                evaluate_retrieval(
                    model,
                    val_data,
                    cfg.eval_batch_size,
                    cfg.num_workers,
                    autocast=tr.autocast(),
                    progress=show,
                )
            )
        history.epochs.append(row)
        if show:
            epoch_bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("train_loss", "t2i_R@1")})
        if ckpt_path is not None and info.is_main:
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": model.state_dict(),
                    "optimizer": tr.optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": tr.scaler.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "rng": rng_state(),
                    "history": history.state_dict(),
                    "config": cfg.model_dump(),
                    "world_size": info.world_size,
                },
                ckpt_path,
            )
        barrier()
        if on_epoch_end is not None and on_epoch_end(history) is False:
            break
    return history
