"""A bias planted on purpose: retrain on the offline world with one group made rare, measure its gap.

On real data the cause of a subgroup gap is never known. In the offline world it can be *set*: the
world's rare-group knob (``rare_attribute=("colour", "purple"), rare_fraction=f``) keeps a training scene
that shows the value with probability ``f`` and re-colours it otherwise, so the group is ``f`` times as
frequent in training as it would be, while the **test split is untouched** (the same images at every
``f``). :func:`rarity_experiment` trains one small from-scratch CLIP per (``f``, seed) with exactly the
same recipe and measures, on the same test images,

- zero-shot classification of the largest object's value of the attribute (colour names, prompts "a
  {colour} circle", "a {colour} square" ... averaged), per group of that value, with Wilson intervals;
- the **contrast** ``rest - rare``: how much worse the rare group does than all others pooled, with a
  stratified bootstrap interval and a permutation p-value (:func:`vlnb.fairness.group_contrast`);
- the max - min gap over all groups (:func:`vlnb.fairness.gap_table`).

``f = 1`` is the control: the same recipe without any planted rarity, so any difference between groups there
is how different the values are to learn, not a bias of the training data. What the rarity did is the
**shift** of the contrast from the control, seed by seed (:meth:`RarityResult.summary`); every seed is a
separate training run, so the spread over seeds is the experiment's own noise, reported with Student-t
intervals over seeds.

The default recipe (:data:`RARITY_MODEL`, :data:`RARITY_TRAIN`: 32-pixel world, 1000 training images, the
``tiny`` preset narrowed to width 64 and 2 layers, 10 epochs, always the first caption, which names every
object's colour) takes ~10 s per model on one CPU core. Chapter 7 trains 3 seeds x 4 fractions at 10 epochs:
the same training steps as the 2 seeds x 15 epochs it ran before. Measured side by side with the same command
(one thread, the shared 2-core machine; CPU seconds in three windows): old 155 / 103 / 96, new 132 / 111 / 102
— training equal, ~1 s of evaluation per extra model. The trend is the same (the gap grows towards rarer
fractions, with 3 seeds at every step), the models are less trained (final loss ~1.3 instead of ~0.7), and the
rarest fraction's gap is larger (~53 instead of ~37 points; seed ranges 50-60 and 32-42).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data.manifest import subset
from ..data.world import WorldConfig, build_world_manifest
from ..device import torch_threads
from ..eval.compare import WORLD_TEMPLATES, ZeroShotTask, class_indices
from ..eval.intervals import t_interval
from ..models.scratch import ScratchDualEncoder
from ..progress import tqdm
from ..train import TrainConfig, train_contrastive
from ..train.trainer import PairDataset
from .metrics import Outcomes, evaluate_outcomes, gap_table, group_contrast, group_table, in_percent

#: Architecture overrides of the ``tiny`` ScratchConfig preset for the experiment's models.
RARITY_MODEL: dict = {"config": "tiny", "width": 64, "layers": 2, "text_width": 64, "text_layers": 2,
                      "embed_dim": 64}
#: TrainConfig of the experiment's models (the seed is the run's).
RARITY_TRAIN: dict = {"epochs": 10, "batch_size": 64, "lr": 2e-3, "warmup_steps": 10, "weight_decay": 0.2,
                      "caption_sampling": "first"}
#: The world column holding the largest object's value of each attribute.
_PRIMARY = {"colour": "primary_colour", "shape": "primary_shape"}


def world_attribute_task(manifest: pd.DataFrame, attribute: str = "colour"):
    """Zero-shot task "which colour (shape) is the largest object?" on a world manifest.

    Colour prompts name the colour with every shape ("a {} circle", "a {} square", ...: the world's captions
    always say both) and are averaged; shape prompts are :data:`vlnb.eval.compare.WORLD_TEMPLATES`.
    """

    attribute = "colour" if attribute == "color" else attribute
    if attribute not in _PRIMARY:
        raise ValueError(f"zero-shot world tasks exist for 'colour' and 'shape', not {attribute!r}")
    spec = manifest.attrs.get("vlnb", {}).get("config")
    cfg = WorldConfig.from_dict(spec) if spec else WorldConfig()
    names = list(cfg.values(attribute))
    templates = tuple(f"a {{}} {s}" for s in cfg.shapes) if attribute == "colour" else tuple(WORLD_TEMPLATES)
    return ZeroShotTask("world", names, templates, {"primary": class_indices(manifest[_PRIMARY[attribute]], names)})


def train_world_model(train: pd.DataFrame, seed: int = 0, model: dict | None = None, train_cfg: dict | None = None,
                      image_size: int | None = None, progress: bool = False):
    """A fresh from-scratch CLIP (``RARITY_MODEL`` + ``model``) trained on ``train`` with ``RARITY_TRAIN``.

    Returns ``(model, history)``. The preprocessed images are kept in memory across epochs.
    """

    kw = {**RARITY_MODEL, **(model or {})}
    preset = kw.pop("config", "tiny")
    if image_size is not None:
        kw["image_size"] = image_size
    captions = [c for caps in train["captions"] for c in caps]
    net = ScratchDualEncoder.create(preset, captions=captions, seed=seed, name=f"scratch-rare-s{seed}", **kw)
    cfg = TrainConfig(**{**RARITY_TRAIN, **(train_cfg or {}), "seed": seed})
    pairs = PairDataset(train, net.preprocess, cfg.caption_sampling, cfg.seed, cache=True)
    history = train_contrastive(net, pairs, config=cfg, progress=progress)
    return net.eval(), history


@dataclass
class RarityResult:
    """Tables of :func:`rarity_experiment` (one row per fraction x seed [x group]), in the book's unit: accuracies
    and recalls in %, gaps in percentage points, the mean similarity a cosine (column ``unit``), shares of the
    training / test images in % (``train_rare_pct``, ``test_rare_pct``)."""

    groups: pd.DataFrame  #: group_table rows + fraction, seed
    contrasts: pd.DataFrame  #: group_contrast rows (rare group vs rest) + fraction, seed
    gaps: pd.DataFrame  #: gap_table rows (max - min over all groups) + fraction, seed
    training: pd.DataFrame  #: per fraction x seed: rare-group training images, final loss, seconds
    outcomes: dict = field(default_factory=dict)  #: (fraction, seed) -> Outcomes
    level: float = 0.95

    def summary(self, metric: str | None = None) -> pd.DataFrame:
        """Per metric and fraction, over seeds: the rare-vs-rest gap's mean, Student-t interval (``gap_ci_lo``,
        ``gap_ci_hi``, at ``level``, a column too) and range (``gap_min``, ``gap_max``); the **shift** from the
        control, seed by seed (``shift_mean`` = this fraction's gap minus the control's, the control being the
        largest fraction, paired by seed, with its Student-t interval ``shift_ci_lo``, ``shift_ci_hi``: what the
        rarity did, the colour's own difficulty subtracted); the rare group's and the others' mean value; and in
        how many seeds the permutation test detects a gap (``p < 1 - level``). Intervals need two seeds (NaN
        with one)."""
        c = self.contrasts if metric is None else self.contrasts[self.contrasts["metric"] == metric]
        alpha = 1 - self.level
        c = c.merge(self.training[["fraction", "seed", "train_rare_pct"]], on=["fraction", "seed"])
        keys = [k for k in ("metric", "unit") if k in c.columns]
        control = c[c["fraction"] == c["fraction"].max()].set_index([*keys, "seed"])["gap"]
        c = c.assign(shift=c["gap"].to_numpy() - control.reindex(pd.MultiIndex.from_frame(c[[*keys, "seed"]]))
                     .to_numpy())
        agg = c.groupby([*keys, "fraction"]).agg(
            train_rare_pct=("train_rare_pct", "mean"), seeds=("seed", "nunique"), gap_mean=("gap", "mean"),
            gap_ci_lo=("gap", lambda x: _t_interval(x, self.level)[0]),
            gap_ci_hi=("gap", lambda x: _t_interval(x, self.level)[1]), gap_min=("gap", "min"),
            gap_max=("gap", "max"), shift_mean=("shift", "mean"),
            shift_ci_lo=("shift", lambda x: _t_interval(x, self.level)[0]),
            shift_ci_hi=("shift", lambda x: _t_interval(x, self.level)[1]),
            rare_value=("target_value", "mean"), rest_value=("rest_value", "mean"),
            detected=("p_value", lambda p: int((p < alpha).sum()))).reset_index().assign(level=self.level)
        return agg.sort_values(["metric", "fraction"], ascending=[True, False]).reset_index(drop=True)

    def headline(self, metric: str) -> dict[str, str]:
        """Strings for the prose: the control (largest fraction) and the rarest fraction of ``metric`` (gaps in
        percentage points, values in %), and the shift of the rarest fraction's gap from the control's."""
        s = self.summary(metric)
        if s.empty:
            raise ValueError(f"no contrast rows for metric {metric!r}")
        out = {"rare_n_seeds": str(int(s["seeds"].max()))}
        for tag, row in (("control", s.iloc[0]), ("rarest", s.iloc[-1])):
            spread = f" (seeds {_signed(row['gap_min'])} to {_signed(row['gap_max'])})" if row["seeds"] > 1 else ""
            out[f"rare_gap_{tag}"] = f"{_signed(row['gap_mean'])} points{spread}"
            out[f"rare_share_{tag}"] = f"{row['train_rare_pct']:.1f} %"
            out[f"rare_value_{tag}"] = f"{row['rare_value']:.1f} %"
            out[f"rare_rest_{tag}"] = f"{row['rest_value']:.1f} %"
            out[f"rare_detected_{tag}"] = f"{int(row['detected'])} of {int(row['seeds'])}"
        c, r = s.iloc[0], s.iloc[-1]
        out["rare_shift_rarest"] = f"{_signed(r['shift_mean'])} points" + (
            f" ({100 * self.level:.0f} % Student-t interval over {int(r['seeds'])} paired seeds: "
            f"{_signed(r['shift_ci_lo'])} to {_signed(r['shift_ci_hi'])})" if not np.isnan(r["shift_ci_lo"]) else
            " (one seed: no interval)")
        lo, hi = c["gap_ci_lo"], c["gap_ci_hi"]
        out["rare_control_reading"] = (
            "with one seed there is no interval to read it against" if np.isnan(lo) else
            f"its {100 * self.level:.0f} % interval over seeds, {_signed(lo)} to {_signed(hi)}, "
            + ("contains 0: without any rarity, the seeds cannot tell the colour apart from the others"
               if lo <= 0 <= hi else
               f"excludes 0: even without any rarity the colour is {'easier' if hi < 0 else 'harder'} to name "
               "than the average of the others, which is why the planted effect is read as the shift from the "
               "control and not as the gap itself"))
        return out


def _t_interval(x, level: float) -> tuple[float, float]:
    """Student-t interval of the mean of ``x`` (NaN values dropped) at ``level``; NaN with fewer than two values."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    return t_interval(x, level)[1:]


def _signed(x) -> str:
    """A difference in percentage points with its sign and one decimal (never "-0.0")."""
    return f"{round(float(x), 1) + 0.0:+.1f}"


def rarity_experiment(
    fractions: Sequence[float] = (1.0, 0.3, 0.1, 0.03),
    seeds: Sequence[int] = (0, 1),
    rare: tuple[str, str] = ("colour", "purple"),
    n_train: int = 1000,
    n_test: int = 400,
    image_size: int = 32,
    world_seed: int = 0,
    model: dict | None = None,
    train: dict | None = None,
    ks: Sequence[int] = (5,),
    min_size: int = 10,
    level: float = 0.95,
    n_boot: int = 1000,
    n_perm: int = 1000,
    cache_dir=None,
    progress: bool = True,
    threads: int | None = 1,
) -> RarityResult:
    """Train one model per (rare fraction, seed) and measure the rare group's gap (module docstring).

    ``rare``: ``(attribute, value)`` made rare in training; ``attribute`` is ``"colour"`` or ``"shape"``
    (groups and the zero-shot task are that attribute of the largest object). ``threads``: torch's CPU threads
    while a model trains and is evaluated (None: leave the setting alone). The models are too small to gain
    from a second thread, and on a busy machine a second one costs: on the shared 2-core machine, under a load
    of ~4, 3 epochs took 3 s with one thread and 15-51 s with two (interleaved, same process).
    """

    attribute, value = rare
    attribute = "colour" if attribute == "color" else attribute
    if attribute not in _PRIMARY:
        raise ValueError(f"rarity_experiment makes a colour or a shape rare, not {attribute!r}")
    fractions = [float(f) for f in fractions]
    if not fractions or not seeds:
        raise ValueError("give at least one fraction and one seed")
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    runs = [(f, s) for f in fractions for s in seeds]
    bar = runs
    if progress:
        bar = tqdm(runs, desc="rarity experiment")
    groups, contrasts, gaps, training, outs = [], [], [], [], {}
    worlds: dict[float, pd.DataFrame] = {}
    for f, s in bar:
        if f not in worlds:
            worlds[f], _ = build_world_manifest(n_train=n_train, n_test=n_test, image_size=image_size,
                                                seed=world_seed, rare_attribute=(attribute, value), rare_fraction=f)
        df = worlds[f]
        tr = subset(df, (df["split"] == "train").to_numpy())
        te = subset(df, (df["split"] == "test").to_numpy())
        task = world_attribute_task(te, attribute)
        metric = f"zero-shot {attribute}"
        with torch_threads(threads):
            t0 = time.perf_counter()
            net, hist = train_world_model(tr, seed=s, model=model, train_cfg=train, image_size=image_size)
            seconds = time.perf_counter() - t0
            out = evaluate_outcomes(net, te, "world", model_name=f"f={f:g} seed={s}",
                                    zeroshot={metric: (task, "primary")}, ks=ks, cache_dir=cache_dir, progress=False)
        outs[f, s] = out
        g = te.set_index("image_id")[_PRIMARY[attribute]]
        tag = {"fraction": f, "seed": s}
        groups.append(group_table(out, g, attribute, min_size=min_size, level=level, n_boot=n_boot, seed=s)
                      .assign(**tag))
        contrasts.append(group_contrast(out, g, value, level=level, n_boot=n_boot, n_perm=n_perm, seed=s)
                         .assign(**tag))
        gaps.append(gap_table(out, g, attribute, min_size=min_size, level=level, n_boot=n_boot, n_perm=n_perm,
                              seed=s).assign(**tag))
        vocab = net.tokenizer.get_vocab() if hasattr(net.tokenizer, "get_vocab") else {}
        training.append({**tag, "train_images": len(tr), "train_with_rare": int(tr["contains_rare"].sum()),
                         "train_rare_pct": 100 * float(tr["contains_rare"].mean()),
                         "test_rare_pct": 100 * float(te["contains_rare"].mean()),
                         "rare_word_in_vocab": value in vocab if vocab else None,
                         "final_loss": float(hist.epochs_df["train_loss"].iloc[-1]), "train_seconds": seconds})
    cat = lambda parts: in_percent(pd.concat(parts, ignore_index=True))
    return RarityResult(cat(groups), cat(contrasts), cat(gaps), pd.DataFrame(training), outs, level)


__all__ = [
    "RARITY_MODEL",
    "RARITY_TRAIN",
    "Outcomes",
    "RarityResult",
    "rarity_experiment",
    "rarity_shape_sentence",
    "rarity_spread_sentence",
    "train_world_model",
    "world_attribute_task",
]


def rarity_shape_sentence(summary: pd.DataFrame) -> str:
    """Whether the planted gap grows as the rare value gets rarer, read from :meth:`RarityResult.summary` of one
    metric (gaps in percentage points): the gap per fraction (mean, seed range), and for every step where the mean
    goes the wrong way (smaller gap at a rarer fraction), whether the two seed ranges overlap — i.e. whether the
    seeds can tell the two fractions apart at all."""
    s = summary.sort_values("fraction", ascending=False).reset_index(drop=True)
    if s.empty:
        return "no fraction was run"
    per = "; ".join(f"f = {r.fraction:g}: {_signed(r.gap_mean)} ({int(r.seeds)} seed{'s' if r.seeds != 1 else ''}"
                    + (f", {_signed(r.gap_min)} to {_signed(r.gap_max)})" if r.seeds > 1 else ")")
                    for r in s.itertuples())
    wrong = []
    for a, b in zip(s.itertuples(), s.iloc[1:].itertuples()):
        if b.gap_mean < a.gap_mean:
            overlap = b.gap_max >= a.gap_min and a.gap_max >= b.gap_min
            wrong.append(f"from f = {a.fraction:g} to f = {b.fraction:g} the mean gap shrinks "
                         + ("but with one seed there is no seed range to tell the two fractions apart"
                            if min(a.seeds, b.seeds) < 2 else
                            "but the seed ranges overlap, so the seeds cannot order the two fractions"
                            if overlap else "and the seed ranges do not overlap: a real reversal to explain"))
    shape = ("the mean gap grows at every step towards rarer fractions" if not wrong else "; ".join(wrong))
    return f"{per} (percentage points). {shape[0].upper()}{shape[1:]}"


def rarity_spread_sentence(contrasts: pd.DataFrame, metric: str) -> str:
    """What the seeds' spread says, from :attr:`RarityResult.contrasts` of one metric: how far apart the seeds of
    one fraction lie (the widest range, and where), against the width of one model's own bootstrap interval
    (the median over fractions and seeds). Training noise that is as large as the test-set noise means a single
    seed's interval understates the experiment's uncertainty."""
    c = contrasts[contrasts["metric"] == metric]
    if c.empty:
        raise ValueError(f"no contrast rows for metric {metric!r}")
    if c["seed"].nunique() < 2:
        return "with one seed per fraction there is no spread to read; add seeds (rare_seeds) to see it"
    rng = c.groupby("fraction")["gap"].agg(lambda g: g.max() - g.min())
    f = rng.idxmax()
    width = float((c["gap_hi"] - c["gap_lo"]).median())
    ratio = float(rng.max()) / width if width > 0 else float("inf")
    how = ("well inside" if ratio < 0.5 else "a large part of" if ratio < 1 else "wider than")
    tail = ("so a single seed's interval leaves out a real part of the experiment's uncertainty, and the intervals "
            "over seeds (the summary's gap_ci and shift_ci columns) are the ones to read" if ratio >= 0.5 else
            "so here the training noise is small next to the test-set noise")
    return (f"the seeds of one fraction lie up to {float(rng.max()):.1f} points apart (at f = {f:g}), {how} the "
            f"{width:.1f}-point width of one model's own bootstrap interval (median over fractions and seeds), "
            f"{tail}")
