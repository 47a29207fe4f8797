"""Contrastive (CLIP) training: loss, schedule, checkpoints, data parallelism and the training loop.

- :mod:`vlnb.train.loss`        -- symmetric InfoNCE (:func:`clip_loss`), gathered across processes
- :mod:`vlnb.train.trainer`     -- :func:`train_contrastive`, :class:`TrainConfig`, :class:`PairDataset`
- :mod:`vlnb.train.schedule`    -- linear warmup + cosine decay
- :mod:`vlnb.train.checkpoint`  -- atomic, ``weights_only``-loadable checkpoints and RNG states
- :mod:`vlnb.train.distributed` -- torchrun process groups, gather-with-gradient, gradient averaging
- :mod:`vlnb.train.plots`       -- learning curves (static or live)
- :mod:`vlnb.train.itm`         -- ITM with hard negatives: the fusion models' training loop
- :mod:`vlnb.train.negclip`     -- NegCLIP: composition-aware hard negatives in the batch
- :mod:`vlnb.train.variants`    -- text-encoder attention variants of the from-scratch CLIP, compared
- :mod:`vlnb.train.paired`      -- the paired-CIFAR-100 experiment (scratch ViT against a frozen text tower)
- :mod:`vlnb.train.report`      -- chapter 2's held-out results table and prose numbers
"""

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from .distributed import DistInfo, init_distributed
from .loss import clip_logits, clip_loss, contrastive_loss
from .plots import live_plot, plot_history
from .schedule import WarmupCosine, lr_curve, warmup_cosine_scheduler
from .trainer import (
    History,
    PairDataset,
    TrainConfig,
    epoch_batches,
    evaluate_retrieval,
    logit_scale_parameter,
    param_groups,
    train_contrastive,
)

__all__ = [
    "DistInfo",
    "History",
    "PairDataset",
    "TrainConfig",
    "WarmupCosine",
    "clip_logits",
    "clip_loss",
    "contrastive_loss",
    "epoch_batches",
    "evaluate_retrieval",
    "init_distributed",
    "live_plot",
    "load_checkpoint",
    "logit_scale_parameter",
    "lr_curve",
    "param_groups",
    "plot_history",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "train_contrastive",
    "warmup_cosine_scheduler",
]
