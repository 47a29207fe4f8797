"""NegCLIP on the offline world: contrastive training with composition-aware hard negatives in the batch.

Yuksekgonul et al. (ICLR 2023) fine-tuned CLIP with, beside every caption, a *foil* of it -- the same words
with two of them swapped -- added to the texts each image must choose among (:func:`vlnb.train.loss.clip_loss`
with ``neg_text_emb``). The foil can only be told apart from the caption by its composition, so a model
that reads captions as bags of words gains nothing on it. Here the foils come from the world's grammar
(:func:`vlnb.data.negatives.caption_foil`: a relation's arguments, or two noun phrases' colours / sizes,
exchanged) and each is checked *false* for its image against the scene; captions with no such foil
(one object, counts only) bring none. :class:`WorldFoilPairs` yields ``(pixels, caption, [foil])`` items,
which :func:`vlnb.train.trainer.train_contrastive` turns into the extra negatives.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pandas as pd

from ..data.negatives import caption_foil, world_scenes
from .trainer import PairDataset


class WorldFoilPairs(PairDataset):
    """:class:`~vlnb.train.trainer.PairDataset` of a world manifest whose items carry the caption's foil:
    ``(pixels, caption, [foil])``, or ``(pixels, caption, [])`` when the caption has none. The foil is
    drawn from ``(seed, epoch, item)`` only, so a run is reproducible and resumable."""

    def __init__(self, manifest: pd.DataFrame, preprocess: Callable, caption_sampling: str = "random",
                 seed: int = 0, cache: bool = False):
        super().__init__(manifest, preprocess, caption_sampling, seed, cache)
        scenes = {sc.image_id: sc for sc in world_scenes(manifest)}
        self.scenes = [scenes[i] for i in self.image_ids]
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch = int(epoch)

    def foil(self, i: int) -> str | None:
        """This epoch's foil of item ``i``'s caption (None when it has none)."""
        rng = random.Random(f"{self.seed}|{self._epoch}|{i}")
        return caption_foil(self.caption(i), self.scenes[i], rng)

    def __getitem__(self, i: int):
        x, cap = super().__getitem__(i)
        f = self.foil(i)
        return x, cap, ([f] if f else [])

    def foil_rate(self) -> float:
        """Share of this epoch's captions that bring a foil."""
        return sum(self.foil(i) is not None for i in range(len(self))) / max(1, len(self))


__all__ = ["WorldFoilPairs"]
