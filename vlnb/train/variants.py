"""Text-encoder attention variants of the from-scratch CLIP, trained alike and compared in one table.

:func:`compare_text_attention` trains :class:`~vlnb.models.scratch.ScratchDualEncoder` once per
``text_attention`` variant (``"self"``: full causal self-attention as CLIP; ``"memory"``: plus cross-attention to
learned memory slots, which the text never shares with the image; ``"local"``: sparse attention within a window,
see :mod:`vlnb.models.scratch`) with everything else equal -- architecture, initialisation seed, data order,
optimiser, schedule -- and returns one row per variant: retrieval Recall@1/5/10 in both directions on the test
manifest, training time, peak memory while training and parameter counts.

``"cross"`` is the true cross-*modal* variant: the same widths and depths as a BLIP-like model
(:class:`~vlnb.models.fusion.ScratchBLIP`), whose bidirectional text layers also cross-attend to the image's patch
tokens, trained with ITC + ITM on hard negatives (:func:`vlnb.train.itm.train_fusion`). It is no longer a dual
encoder, so its row is measured under another protocol (column ``protocol``): ITC top-``rerank_k`` re-ranked by
the ITM head, one text forward pass per candidate pair.

Peak memory is what training adds on top of the built model (weights): on CUDA ``torch.cuda.max_memory_allocated``
above the allocation at the start; on CPU the process's peak resident set size (RSS) above its value at the start
(after ``gc`` and ``malloc_trim``, so memory freed by a previous variant is returned to the system first): the
kernel's own high-water mark on Linux (``VmHWM``, reset at the start through ``/proc/self/clear_refs``), exact and
free; elsewhere RSS sampled every 2 ms by a thread (which wakes 500 times a second beside the training).
``tracemalloc`` is no use here: it sees Python objects, not the tensors' memory. RSS also counts allocator caching
and is coarse for tiny models (a few MiB of noise); the ``memory_measure`` column says which measure a row used.
An untimed one-step warm-up run comes first, so the first variant does not pay one-off start-up costs (lazy
initialisation, thread pools, CUDA context) that the others would not.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import multiprocessing as mp
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import pandas as pd
import torch

from ..data import build_manifest
from ..data.manifest import fingerprint as manifest_fingerprint
from ..data.manifest import subset, texts_and_targets
from ..device import SideJob, resolve_device, side_by_side_jobs, start_worker
from ..eval.intervals import t_interval
from ..models.fusion import FusionConfig, create_fusion
from ..models.scratch import ScratchConfig, ScratchDualEncoder
from .itm import evaluate_fusion, train_fusion
from .trainer import TrainConfig, evaluate_retrieval, train_contrastive

VARIANTS = ("self", "memory", "cross", "local")
RECALL_COLUMNS = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
COLUMNS = ["variant", "protocol", *RECALL_COLUMNS, "train_time_s", "peak_memory_mb", "memory_measure", "params",
           "text_params", "final_train_loss", "epochs", "image_size", "n_test_images", "device"]
PROTOCOL_ITC = "ITC (dual encoder)"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil  # lazy: optional; only off Linux (no /proc), when installed

        return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _peak_rss_bytes() is not None


def _peak_rss_bytes() -> int | None:
    """``VmHWM`` (peak RSS since the last reset) in bytes, or None where ``/proc/self/status`` lacks it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Context manager: ``.peak_mb`` = peak memory above the start while inside, ``.measure`` = how it was taken."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device, self.interval_s = torch.device(device), interval_s
        self.peak_mb: float = float("nan")
        self.measure = ""

    def __enter__(self) -> PeakMemory:  # noqa: PYI034
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.measure = "cuda max_memory_allocated"
            return self
        _malloc_trim()
        self._base = self._max = _rss_bytes()
        self._thread = None
        if _reset_peak_rss():
            self.measure = "cpu peak RSS (VmHWM)"
            return self
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self._max = max(self._max, _rss_bytes())
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        self.measure = "cpu RSS (2 ms samples)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._thread is None:
            peak = max(_peak_rss_bytes() or 0, _rss_bytes()) - self._base
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss_bytes()) - self._base
        self.peak_mb = max(0.0, peak / 2**20)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compare_text_attention(
    train: pd.DataFrame,
    test: pd.DataFrame,
    variants: Sequence[str] = VARIANTS,
    epochs: int = 5,
    config="tiny",
    train_config: TrainConfig | dict | None = None,
    adapt_preprocess: Callable | None = None,
    seed: int = 0,
    device: str | None = None,
    eval_batch_size: int = 256,
    progress: bool = True,
    return_models: bool = False,
    rerank_k: int = 16,
    **overrides,
):
    """Train the scratch model once per text-attention variant on ``train``; evaluate retrieval on ``test``.

    ``config``: a :class:`~vlnb.models.scratch.ScratchConfig` or preset name, ``overrides`` replace its fields
    (``text_attention`` is set per variant). The word tokenizer is fit to ``train``'s captions (unless the config
    uses the CLIP BPE). ``train_config``: :class:`~vlnb.train.TrainConfig` fields (``epochs``, ``seed`` and
    ``device`` come from the arguments). ``adapt_preprocess(model.preprocess)`` replaces each model's
    preprocessing (e.g. :func:`vlnb.data.paired_cifar.pair_preprocess`). Returns the table (columns
    :data:`COLUMNS`, one row per variant, in order), and ``{variant: model}`` too with ``return_models=True``.
    ``rerank_k``: candidates per query the ``"cross"`` variant's ITM head re-ranks.
    """

    variants = list(variants)
    if not variants:
        raise ValueError("variants is empty: name at least one of " + ", ".join(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(set(variants)) != len(variants):
        raise ValueError(f"variants must be distinct names among {VARIANTS}, got {variants}")
    if "text_attention" in overrides:
        raise ValueError("text_attention is set per variant; do not pass it as an override")
    base = train_config.model_dump() if isinstance(train_config, TrainConfig) else dict(train_config or {})
    tc = TrainConfig(**{**base, "epochs": epochs, "seed": seed, "device": device})
    cfg = ScratchConfig.preset(config, **overrides) if isinstance(config, str) else replace(config, **overrides)
    captions = [c for caps in train["captions"] for c in caps]
    n_test = len(test)
    if not texts_and_targets(test)[0]:
        raise ValueError("the test manifest has no captions: nothing to retrieve")

    dev = torch.device(resolve_device(tc.device))
    # untimed warm-up: one step of a throwaway model, so the first variant does not pay one-off start-up costs
    # (lazy imports and initialisation, thread pools, CUDA context and kernels, allocator growth)
    warm = ScratchDualEncoder.create(cfg, captions=captions, seed=seed,
                                     text_attention="self" if variants[0] == "cross" else variants[0])
    if adapt_preprocess is not None:
        warm.preprocess = adapt_preprocess(warm.preprocess)
    n_warm = min(len(train), tc.global_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_contrastive(warm.to(dev), subset(train, slice(0, n_warm)), None, tc.model_copy(update={"epochs": 1, "warmup_steps": 0}),
                          progress=False)
    del warm

    rows, models = [], {}
    for v in variants:
        if v == "cross":
            model = _cross_modal_variant(cfg, captions, seed)
        else:
            model = ScratchDualEncoder.create(cfg, captions=captions, seed=seed, name=f"scratch-{v}",
                                              text_attention=v)
        if adapt_preprocess is not None:
            model.preprocess = adapt_preprocess(model.preprocess)
        model.to(dev)
        meter = PeakMemory(dev)
        with meter:
            t0 = time.perf_counter()
            if v == "cross":
                history = train_fusion(model, train, tc.model_copy(update={"device": str(dev)}), progress=progress)
            else:
                history = train_contrastive(model, train, None, tc, progress=progress)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elapsed = time.perf_counter() - t0
        if v == "cross":
            recall = evaluate_fusion(model, test, k=rerank_k, batch_size=eval_batch_size, progress=progress)
            protocol = f"ITC top-{rerank_k} → ITM re-rank (cross encoder)"
            text_params = _n_params(model.text) + _n_params(model.text_proj) + _n_params(model.itm_head)
        else:
            recall = evaluate_retrieval(model, test, batch_size=eval_batch_size, progress=progress)
            protocol, text_params = PROTOCOL_ITC, _n_params(model.text)
        rows.append({
            "variant": v, "protocol": protocol, **{k: recall.get(k, float("nan")) for k in RECALL_COLUMNS},
            "train_time_s": elapsed, "peak_memory_mb": meter.peak_mb, "memory_measure": meter.measure,
            "params": _n_params(model), "text_params": text_params,
            "final_train_loss": history.epochs[-1]["train_loss"], "epochs": len(history.epochs),
            "image_size": cfg.image_size, "n_test_images": n_test, "device": str(dev),
        })
        if return_models:
            models[v] = model.eval()
        else:
            del model
    table = pd.DataFrame(rows, columns=COLUMNS)
    return (table, models) if return_models else table


def _one_variant_run(train, test, variant: str, seed: int, kwargs: dict) -> pd.DataFrame:
    return compare_text_attention(train, test, variants=(variant,), seed=seed, **kwargs).assign(seed=seed)


#: Processes that train variants side by side (:func:`vlnb.device.side_by_side_jobs`).
variant_jobs = side_by_side_jobs

#: (variant, seed) runs trained ahead, in another pool (:func:`ahead_runs`), by :func:`_run_key`: the next
#: :func:`compare_text_attention_seeds` with the same arguments takes them instead of training them again.
_FINISHED: dict[str, pd.DataFrame] = {}
#: Rough one-thread seconds of a run of the offline variants (chapter 2's sizes), for the order a pool starts them
#: in: a "cross" run (ITC + ITM, then re-ranking) takes about four times a dual encoder's.
_RUN_COST = {"cross": 25.0}
_DEFAULT_RUN_COST = 6.5


def _run_key(train: pd.DataFrame, test: pd.DataFrame, variant: str, seed: int, kwargs: dict) -> str:
    """Everything a run's table depends on: both manifests' content, the variant, the seed and the arguments."""
    args = {k: v for k, v in kwargs.items() if k != "progress"}
    payload = {"train": manifest_fingerprint(train), "test": manifest_fingerprint(test), "variant": variant,
               "seed": int(seed), "kwargs": args}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


def _record(key: str) -> Callable[[pd.DataFrame], None]:
    def done(table: pd.DataFrame) -> None:
        _FINISHED[key] = table
    return done


def ahead_runs(train: pd.DataFrame, test: pd.DataFrame, seeds: Sequence[int], variants: Sequence[str] = VARIANTS,
               jobs: int | None = None, **kwargs) -> list[SideJob]:
    """The runs :func:`compare_text_attention_seeds` with these arguments would train side by side, as one-thread
    :class:`~vlnb.device.SideJob` s for another pool (chapter 2 hands them to the pool that trains its reference
    models: they fill the core beside scratch-world). Each finished run is kept in this process until the next
    :func:`compare_text_attention_seeds` with the same arguments takes it instead of training it again. Empty
    where that would train them one at a time (a GPU, one core, ``jobs=1``): it trains them itself."""
    if variant_jobs(len(seeds) * len(variants), kwargs.get("device"), jobs) < 2:
        return []
    kwargs = {**kwargs, "progress": False}
    jobs = []
    for s in seeds:
        for v in variants:
            key = _run_key(train, test, v, s, kwargs)
            if key not in _FINISHED:
                jobs.append(SideJob(f"{v} variant, seed {s}", _RUN_COST.get(v, _DEFAULT_RUN_COST), _one_variant_run,
                                    (train, test, v, s, kwargs), done=_record(key)))
    return jobs


def compare_text_attention_seeds(train: pd.DataFrame, test: pd.DataFrame, seeds: Sequence[int],
                                 variants: Sequence[str] = VARIANTS, jobs: int | None = None,
                                 **kwargs) -> pd.DataFrame:
    """:func:`compare_text_attention` once per seed: one table with a ``seed`` column, rows by seed, then variant.

    Every (variant, seed) run is independent (its own initialisation and data order from ``seed``), so on a CPU
    they run in ``jobs`` processes side by side, one thread each (:func:`variant_jobs`); ``train_time_s`` is
    then the time of a one-thread run. ``kwargs`` go to :func:`compare_text_attention` (not ``return_models``).
    """

    if kwargs.get("return_models"):
        raise ValueError("compare_text_attention_seeds returns tables only; call compare_text_attention for models")
    variants, seeds = list(variants), list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one training seed")
    runs = [(s, v) for s in seeds for v in variants]
    n = variant_jobs(len(runs), kwargs.get("device"), jobs)
    if n > 1:
        kwargs = {**kwargs, "progress": False}
    keys = {run: _run_key(train, test, run[1], run[0], kwargs) for run in runs}
    tables = {run: _FINISHED.pop(keys[run]) for run in runs if keys[run] in _FINISHED}  # trained ahead: ahead_runs
    todo = [run for run in runs if run not in tables]
    if n == 1:  # one process: a seed's variants in one call (one warm-up), as before
        for s in seeds:
            missing = [v for v in variants if (s, v) not in tables]
            if missing:
                table = compare_text_attention(train, test, variants=missing, seed=s, **kwargs).assign(seed=s)
                tables.update({(s, v): table[table["variant"] == v] for v in missing})
    elif todo:
        with ProcessPoolExecutor(min(n, len(todo)), mp_context=mp.get_context("spawn"),
                                 initializer=start_worker) as pool:
            # the "cross" runs (a fusion model: about 2.5x a dual encoder's time) start first, so the short runs
            # fill the cores at the end instead of one long run finishing alone
            futures = {run: pool.submit(_one_variant_run, train, test, run[1], run[0], kwargs)
                       for run in sorted(todo, key=lambda r: r[1] != "cross")}
            tables.update({run: f.result() for run, f in futures.items()})
    return pd.concat([tables[run] for run in runs], ignore_index=True)  # rows by seed, then variant


def chapter_variants(cfg, device) -> dict:
    """The arguments of chapter 2's comparison (:func:`compare_text_attention_seeds`, :func:`ahead_runs`) from its
    parameters (``cfg.variant_*``, ``cfg.attention_variants``): a small world rendered at the size the models read
    (``variant_image_size``), split into ``train`` and ``test``, and the runs' settings."""
    small, _ = build_manifest("world", n_train=cfg.variant_n_train, n_test=cfg.variant_n_test,
                              image_size=cfg.variant_image_size, seed=cfg.seed + 1)
    return {"train": small[small["split"] == "train"], "test": small[small["split"] == "test"],
            "seeds": list(cfg.variant_seeds), "variants": tuple(cfg.attention_variants), "jobs": cfg.variant_jobs,
            "epochs": cfg.variant_epochs, "device": device, "image_size": cfg.variant_image_size, "progress": False,
            "train_config": {"warmup_steps": cfg.variant_warmup_steps, "batch_size": cfg.variant_batch_size}}


def _cross_modal_variant(cfg, captions, seed: int):
    """The ``"cross"`` variant: a BLIP-like model (:class:`~vlnb.models.fusion.ScratchBLIP`) of ``cfg``'s sizes."""

    if cfg.tokenizer != "word" or cfg.width != cfg.text_width or cfg.heads != cfg.text_heads:
        raise ValueError("the 'cross' variant (a BLIP-like text encoder over the image's patches) needs the word "
                         f"tokenizer and one width/head count for both towers; got tokenizer={cfg.tokenizer!r}, "
                         f"width {cfg.width} / text_width {cfg.text_width}, heads {cfg.heads} / {cfg.text_heads}")
    fc = FusionConfig(arch="blip", image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width,
                      layers=cfg.layers, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, text_layers=cfg.text_layers,
                      context_length=cfg.context_length, embed_dim=cfg.embed_dim,
                      init_logit_scale=cfg.init_logit_scale)
    return create_fusion(fc, captions=captions, seed=seed, name="scratch-cross")


def seed_summary(table: pd.DataFrame, metrics: Sequence[str] = ("t2i_R@1", "i2t_R@1", "t2i_R@5", "i2t_R@5"),
                 level: float = 0.95, baseline: str | None = "self") -> pd.DataFrame:
    """One row per (variant, metric) of a table with a ``seed`` column (several :func:`compare_text_attention`
    runs): the mean over seeds, its Student-t interval, and the paired difference to ``baseline`` (same seed,
    same data order) with its interval. ``distinguishable`` is False when the difference's interval contains 0:
    the two variants cannot be told apart on this test set with these seeds."""
    rows = []
    base = table[table["variant"] == baseline].set_index("seed") if baseline is not None else None
    for v, t in table.groupby("variant", sort=False):
        t = t.set_index("seed")
        for metric in metrics:
            m, lo, hi = t_interval(t[metric], level)
            row = {"variant": v, "metric": metric, "seeds": len(t), "mean": m, "ci_lo": lo, "ci_hi": hi,
                   "seed_sd": float(t[metric].std(ddof=1)) if len(t) > 1 else float("nan")}
            if base is not None and v != baseline:
                common = t.index.intersection(base.index)
                d, dlo, dhi = t_interval(t.loc[common, metric] - base.loc[common, metric], level)
                row.update({f"diff_vs_{baseline}": d, "diff_lo": dlo, "diff_hi": dhi,
                            "distinguishable": bool(dlo > 0 or dhi < 0)})
            rows.append(row)
    return pd.DataFrame(rows)


def variant_verdict(summary: pd.DataFrame, metric: str = "t2i_R@1") -> dict[str, str]:
    """Glue-ready sentences from :func:`seed_summary`: the number of seeds, and per variant its mean with the
    interval and whether its paired difference to the baseline can be told apart from zero."""
    s = summary[summary["metric"] == metric]
    diff_col = next((c for c in s.columns if c.startswith("diff_vs_")), None)
    parts = []
    for r in s.itertuples(index=False):
        r = r._asdict()
        text = f"{r['variant']} {r['mean']:.1f}"
        if r["ci_lo"] == r["ci_lo"]:  # not nan: at least two seeds
            text += f" (95 % CI {r['ci_lo']:.1f} to {r['ci_hi']:.1f})"
        if diff_col and r.get(diff_col) == r.get(diff_col) and r.get(diff_col) is not None:
            d = r[diff_col]
            told = "distinguishable" if r["distinguishable"] else "cannot be told apart"
            if r["diff_lo"] == r["diff_lo"]:
                text += f", {d:+.1f} points vs {diff_col[8:]} ({r['diff_lo']:+.1f} to {r['diff_hi']:+.1f}: {told})"
            else:
                text += f", {d:+.1f} points vs {diff_col[8:]} (one seed: no interval)"
        parts.append(text)
    return {"variant_n_seeds": str(int(s["seeds"].max())) if len(s) else "0", "variant_verdict": "; ".join(parts)}


def seed_summary_page(summary: pd.DataFrame, metrics: Sequence[str] = ("t2i_R@1", "i2t_R@1", "t2i_R@5")) -> pd.DataFrame:
    """What the page shows of :func:`seed_summary`: one row per variant, per metric "mean [lo, hi]" and the
    paired difference to the baseline "±d [lo, hi]" ("baseline" on its own row); no NaN, narrow enough for a
    page. The CSV keeps the numbers."""
    def f(x):
        return "—" if pd.isna(x) else f"{x:.1f}"

    diff_col = next((c for c in summary.columns if c.startswith("diff_vs_")), None)
    rows = {}
    for r in summary[summary["metric"].isin(metrics)].itertuples(index=False):
        r = r._asdict()
        row = rows.setdefault(r["variant"], {"variant": r["variant"], "seeds": int(r["seeds"])})
        row[f"{r['metric']} mean [95 % CI]"] = f"{f(r['mean'])} [{f(r['ci_lo'])}, {f(r['ci_hi'])}]"
        if diff_col is not None:
            d = r.get(diff_col)
            row[f"{r['metric']} − {diff_col[8:]}"] = ("baseline" if pd.isna(d) else
                                                     f"{d:+.1f} [{r['diff_lo']:+.1f}, {r['diff_hi']:+.1f}]")
    return pd.DataFrame(list(rows.values()))
