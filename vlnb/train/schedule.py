"""Learning-rate schedule: linear warmup then cosine decay (CLIP / open_clip's default).

The multiplier of the base learning rate at optimizer step ``t`` (0-based: the ``t``-th update) is

- ``(t + 1) / warmup_steps`` while ``t < warmup_steps``;
  a warmup that does not fit (``warmup_steps >= total_steps``) is a ``ValueError``;
- ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` afterwards, with
  ``p = (t - warmup_steps) / (total_steps - 1 - warmup_steps)``, reaching ``min_ratio`` at the last
  step ``t = total_steps - 1``.
"""

from __future__ import annotations

import math

import torch


def capped_warmup(requested: int, n_train: int, batch_size: int, epochs: int) -> int:
    """A recipe's default warmup, shortened to at most half of a run too short for it.

    For built-in recipes whose size the user changes (tests, exercises: a 1-epoch run on 128 pairs);
    a warmup the user asks for explicitly is never shortened (:class:`WarmupCosine` refuses one that
    does not fit). ``n_train // batch_size`` steps per epoch, as the trainer counts them."""
    total = max(1, n_train // max(1, batch_size)) * max(1, epochs)
    return min(int(requested), total // 2)


class WarmupCosine:
    """The multiplier as a picklable callable (its ``__dict__`` is saved by ``LambdaLR.state_dict``)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        if warmup_steps >= total_steps:
            # an error, not a warning: such a run never reaches its peak learning rate and never decays, so
            # whatever it measures is a mistrained model (lower warmup_steps, or train for more steps)
            raise ValueError(
                f"warmup_steps={warmup_steps} >= total_steps={total_steps}: the warmup does not fit in the "
                "run, so the learning rate never reaches its peak; lower warmup_steps or train for more steps"
            )
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - 1 - self.warmup_steps)
        p = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :class:`WarmupCosine`; call ``.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


def lr_curve(base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> list[float]:
    """The learning rate of every optimizer step (for plots and tests)."""
    f = WarmupCosine(warmup_steps, total_steps, min_ratio)
    return [base_lr * f(t) for t in range(total_steps)]
