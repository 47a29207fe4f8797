"""Text-encoder attention variants of the from-scratch CLIP, trained alike and compared in one table.

:func:`compare_text_attention` trains :class:`~vlnb.models.scratch.ScratchDualEncoder` once per
``text_attention`` variant (``"self"``: full causal self-attention as CLIP; ``"cross"``: plus cross-attention to
learned memory slots; ``"local"``: sparse attention within a window, see :mod:`vlnb.models.scratch`) with
everything else equal -- architecture, initialisation seed, data order, optimiser, schedule -- and returns one
row per variant: retrieval Recall@1/5/10 in both directions on the test manifest, training time, peak memory
while training and parameter counts.

Peak memory is what training adds on top of the built model (weights): on CUDA ``torch.cuda.max_memory_allocated``
above the allocation at the start; on CPU the process's resident set size (RSS) sampled every 2 ms, above its
value at the start (after ``gc`` and ``malloc_trim``, so memory freed by a previous variant is returned to the
system first). ``tracemalloc`` is no use here: it sees Python objects, not the tensors' memory. RSS also counts
allocator caching and is coarse for tiny models (a few MiB of noise); the ``memory_measure`` column says which
measure a row used. An untimed one-step warm-up run comes first, so the first variant does not pay one-off
start-up costs (lazy initialisation, thread pools, CUDA context) that the others would not.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import pandas as pd
import torch

from ..data.manifest import texts_and_targets
from .trainer import TrainConfig, evaluate_retrieval, train_contrastive

VARIANTS = ("self", "cross", "local")
RECALL_COLUMNS = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
COLUMNS = ["variant", *RECALL_COLUMNS, "train_time_s", "peak_memory_mb", "memory_measure", "params",
           "text_params", "final_train_loss", "epochs", "n_test_images", "device"]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil  # not on Linux: fall back to psutil when installed

        return int(psutil.Process().memory_info().rss)


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
    **overrides,
):
    """Train the scratch model once per text-attention variant on ``train``; evaluate retrieval on ``test``.

    ``config``: a :class:`~vlnb.models.scratch.ScratchConfig` or preset name, ``overrides`` replace its fields
    (``text_attention`` is set per variant). The word tokenizer is fit to ``train``'s captions (unless the config
    uses the CLIP BPE). ``train_config``: :class:`~vlnb.train.TrainConfig` fields (``epochs``, ``seed`` and
    ``device`` come from the arguments). ``adapt_preprocess(model.preprocess)`` replaces each model's
    preprocessing (e.g. :func:`vlnb.data.paired_cifar.pair_preprocess`). Returns the table (columns
    :data:`COLUMNS`, one row per variant, in order), and ``{variant: model}`` too with ``return_models=True``.
    """
    from ..models.scratch import ScratchConfig, ScratchDualEncoder

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

    dev = torch.device(tc.device) if tc.device else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    # untimed warm-up: one step of a throwaway model, so the first variant does not pay one-off start-up costs
    # (lazy imports and initialisation, thread pools, CUDA context and kernels, allocator growth)
    warm = ScratchDualEncoder.create(cfg, captions=captions, seed=seed, text_attention=variants[0])
    if adapt_preprocess is not None:
        warm.preprocess = adapt_preprocess(warm.preprocess)
    n_warm = min(len(train), tc.global_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_contrastive(warm.to(dev), train.iloc[:n_warm], None, tc.model_copy(update={"epochs": 1}), progress=False)
    del warm

    rows, models = [], {}
    for v in variants:
        model = ScratchDualEncoder.create(cfg, captions=captions, seed=seed, name=f"scratch-{v}", text_attention=v)
        if adapt_preprocess is not None:
            model.preprocess = adapt_preprocess(model.preprocess)
        model.to(dev)
        meter = PeakMemory(dev)
        with meter:
            t0 = time.perf_counter()
            history = train_contrastive(model, train, None, tc, progress=progress)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elapsed = time.perf_counter() - t0
        recall = evaluate_retrieval(model, test, batch_size=eval_batch_size, progress=progress)
        rows.append({
            "variant": v, **{k: recall[k] for k in RECALL_COLUMNS}, "train_time_s": elapsed,
            "peak_memory_mb": meter.peak_mb, "memory_measure": meter.measure, "params": _n_params(model),
            "text_params": _n_params(model.text), "final_train_loss": history.epochs[-1]["train_loss"],
            "epochs": len(history.epochs), "n_test_images": n_test, "device": str(dev),
        })
        if return_models:
            models[v] = model.eval()
        else:
            del model
    table = pd.DataFrame(rows, columns=COLUMNS)
    return (table, models) if return_models else table
