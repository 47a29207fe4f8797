"""Cuts made for the book's time budget (issue 17) leave the numbers the book reports unchanged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from vlnb.data.images import encode_png
from vlnb.data.manifest import make_manifest
from vlnb.models.scratch import ScratchDualEncoder
from vlnb.train import TrainConfig, train_contrastive

COLORS = ("red", "blue", "green", "pink", "gray", "black")
SMALL = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "text_width": 32,
         "text_layers": 1, "text_heads": 2, "embed_dim": 16, "context_length": 16}


def captions(n: int) -> list[str]:
    return [f"the {COLORS[i % 6]} thing number {i}" for i in range(n)]


def scratch(seed: int = 0) -> ScratchDualEncoder:
    return ScratchDualEncoder.create("tiny", captions=captions(64), seed=seed, **SMALL)


def png_manifest(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [{"image_id": i, "image": encode_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
             "captions": [c, c.replace("thing", "object")], "split": "train", "labels": []}
            for i, c in enumerate(captions(n))]
    return make_manifest(rows, name="synthetic")


@pytest.mark.parametrize("cache", ["1", "0"])
def test_evaluating_less_often_trains_the_same_weights_and_final_recall(monkeypatch, cache):
    """Validation retrieval only reads the model: evaluating every 3rd epoch instead of every epoch gives the
    same weights and the same last-epoch Recall@K (with and without the decoded-pixel cache)."""
    monkeypatch.setenv("VLNB_PIXEL_CACHE", cache)
    man, val = png_manifest(24), png_manifest(8, seed=1)
    out = {}
    for every in (1, 3):
        cfg = TrainConfig(epochs=3, batch_size=4, warmup_steps=2, lr=2e-3, seed=7, eval_every=every)
        model = scratch()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[every] = (model, train_contrastive(model, man, val, cfg, progress=False))
    (a, ha), (b, hb) = out[1], out[3]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ea, eb = ha.epochs_df, hb.epochs_df
    assert ea["t2i_R@1"].notna().sum() == 3 and eb["t2i_R@1"].notna().sum() == 1
    cols = ["train_loss", "i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5"]
    assert ea.iloc[-1][cols].equals(eb.iloc[-1][cols])


def test_live_plot_draws_nothing_in_a_batch_run(monkeypatch):
    import IPython.display

    from vlnb.train import plots

    drawn = []
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: drawn.append(a) or None)
    monkeypatch.setattr(plots, "plot_history", lambda h: __import__("matplotlib.pyplot").pyplot.figure())
    monkeypatch.setenv("VLNB_RUN_DIR", "/somewhere")
    monkeypatch.delenv("VLNB_LIVE_PLOT", raising=False)
    plots.live_plot()(object())
    assert drawn == [] and not plots.live_plots_drawn()  # vlnb run / vlnb book: no redraws nobody watches
    monkeypatch.setenv("VLNB_LIVE_PLOT", "1")
    plots.live_plot()(object())
    assert len(drawn) == 1 and plots.live_plots_drawn()
    monkeypatch.delenv("VLNB_LIVE_PLOT")
    monkeypatch.delenv("VLNB_RUN_DIR")
    plots.live_plot()(object())  # an interactive session
    assert len(drawn) == 2 and plots.live_plots_drawn()
