"""One memo of frozen-tower features: each distinct input is encoded once.

Training heads over a frozen tower sees every image and caption once per epoch; the tower's output for an
input never changes, so it is remembered, keyed by a digest of the input's exact values (a caption: its
token ids without padding; an image: its preprocessed pixels). Results are bit-identical with and without
the memo. Used by :class:`vlnb.models.towers.TowersDualEncoder` (opt-in: hooks on the towers, e.g. Grad-CAM,
need them to run) and :class:`vlnb.train.paired.ScratchImageFrozenText` (always: its text tower is frozen).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch


class FeatureMemo:
    """Remembered outputs of a frozen tower, at most ``max_items`` of them (later inputs are computed, not kept)."""

    def __init__(self, max_items: int = 50_000):
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.max_items = int(max_items)
        self._store: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    @staticmethod
    def key(row: torch.Tensor) -> bytes:
        """The digest of a tensor's exact values (and dtype, so int32 and int64 ids never collide silently)."""
        a = row.detach().cpu().contiguous().numpy()
        return hashlib.blake2b(a.tobytes() + str(a.dtype).encode(), digest_size=16).digest()

    def __call__(self, rows: Sequence[torch.Tensor], compute: Callable[[torch.Tensor], torch.Tensor],
                 device=None) -> torch.Tensor:
        """Features of every row: ``compute(indices)`` (a ``LongTensor`` of batch rows) is called once, for the
        rows not remembered yet; the result is stacked in batch order on ``device`` (default: ``compute``'s)."""
        keys = [self.key(r) for r in rows]
        todo = [i for i, k in enumerate(keys) if k not in self._store]
        fresh: dict[int, torch.Tensor] = {}
        if todo:
            out = compute(torch.tensor(todo, dtype=torch.long)).detach()
            fresh = dict(zip(todo, out))
            for i in todo:
                if len(self._store) >= self.max_items:
                    break
                self._store[keys[i]] = fresh[i]
            device = out.device if device is None else device
        feats = [fresh[i] if i in fresh else self._store[k] for i, k in enumerate(keys)]
        return torch.stack([f.to(device) if device is not None else f for f in feats])


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Masked mean of token states ``(B, T, D) -> (B, D)`` (sentence-transformers' pooling); ``normalize``
    says explicitly whether the result is L2-normalised (all-MiniLM-L6-v2's sentence embedding is; a
    trainable head that reads the raw pooled features may not want it)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


__all__ = ["FeatureMemo", "mean_pool"]
