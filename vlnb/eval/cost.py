"""What a model costs, measured in one run: parameters, peak memory, encoding speed, query time vs gallery size.

The trade-off the book's models embody: a **dual encoder** embeds every gallery image once (an index) and
answers a text query with one text forward pass and one ``(N, D) @ (D,)`` product; a **cross encoder**
(ViLT-like) must run one joint forward pass per (query, image) pair, so its query time grows with N at
the price of a full model pass per image; **ITC top-k + ITM** (BLIP-like) pays the dual encoder's
product plus ``k`` pairs, whatever N is.

:func:`measure_cost` returns two tidy tables:

- ``models`` -- one row per model: ``params``, ``weights_mb`` (parameters + buffers, exact), ``peak_mem_mb``
  -- memory a forward pass of a batch of images and texts adds on top of the weights (CUDA:
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before; CPU: the peak of the process's
  resident set sampled every ~2 ms over the pass, minus the RSS before it -- allocations freed between two
  samples, or served from memory the allocator already holds, are missed, so on a CPU it is a lower bound
  and a small model can read 0), ``images_per_s`` / ``texts_per_s`` (dual encoders and ITC heads:
  preprocessed pixels in, embeddings out -- decoding excluded), ``pairs_per_s`` (cross encoders and ITM
  heads).
- ``queries`` -- one row per (model, protocol, N): ``query_s`` = the time to answer one text query over a
  gallery of N images, and ``basis``: ``"measured"`` when that exact work ran (a text embedding plus the
  similarity and top-k over a gallery of N embeddings; the ITM of k pairs), or ``"extrapolated"`` when it
  is ``N x`` the per-pair time measured on ``n_pairs`` pairs (cross encoders over every image: running
  5,000 pairs per N on two CPU cores would take minutes per model). Gallery embeddings for the
  N-dependent part are random unit vectors of the model's real shape (the time of a matrix product does not
  depend on the values); the index build (embedding N images once) is ``index_s``, extrapolated from
  ``images_per_s``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..progress import tqdm
from .compositionality import heads
from .features import autocast_for, model_device

#: Gallery sizes of the query-time table.
GALLERY_SIZES = (100, 300, 1000, 3000, 5000)
MODEL_COLUMNS = ["model", "kind", "params", "weights_mb", "peak_mem_mb", "mem_method", "images_per_s", "texts_per_s",
                 "pairs_per_s"]
QUERY_COLUMNS = ["model", "protocol", "n_gallery", "query_s", "index_s", "basis"]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameter values (shared tensors counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return int(n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: psutil if present
        try:
            import psutil  # lazy: optional; only off Linux, when /proc is missing

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            return 0


class _PeakMemory:
    """Context manager: peak memory over a block (CUDA allocator peak, or sampled RSS delta on CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self.method = device, 0, ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        else:
            self.base = _rss()
            self._max, self._stop = self.base, threading.Event()
            self.method = "RSS delta (sampled)" if self.base else "unavailable"

            def poll():
                while not self._stop.is_set():
                    self._max = max(self._max, _rss())
                    time.sleep(0.002)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._max = max(self._max, _rss())
            self._stop.set()
            self._thread.join()
            self.peak = self._max - self.base
        return False


def _timed(fn, device, repeats: int = 1) -> float:
    """Seconds of one call of ``fn`` (best of ``repeats``, after one warm-up call)."""
    with torch.inference_mode():
        fn()
        best = float("inf")
        for _ in range(max(1, repeats)):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best = min(best, time.perf_counter() - t)
    return best


def _pixels(model, images: Sequence, n: int) -> torch.Tensor:
    """``n`` preprocessed images (the given PIL images / arrays repeated) on the model's device."""
    px = model.preprocess(list(images))
    reps = -(-n // len(px))
    return px.repeat(reps, 1, 1, 1)[:n].to(model_device(model))


def _texts(texts: Sequence[str], n: int) -> list[str]:
    texts = list(texts)
    return (texts * (-(-n // len(texts))))[:n]


def _batched(fn, items, batch_size: int):
    for s in range(0, len(items), batch_size):
        fn(items[s : s + batch_size])


def _model_heads(model):

    return heads(model)


def _measure_model(name, model, images, texts, sizes, n_images, n_texts, n_pairs, rerank_k, batch_size, repeats):
    """One model's row of the models table and its rows of the queries table."""
    qrows: list[dict] = []
    model.eval()
    hs = _model_heads(model)
    device = model_device(model)
    weights = sum(t.numel() * t.element_size() for t in {id(t): t for t in (*model.parameters(), *model.buffers())}.values())
    row = {"model": name, "kind": "+".join(hs), "params": count_parameters(model), "weights_mb": weights / 2**20,
           "peak_mem_mb": np.nan,
           "mem_method": "", "images_per_s": np.nan, "texts_per_s": np.nan, "pairs_per_s": np.nan}
    dual, cross = hs.get("ITC"), hs.get("ITM")
    with autocast_for(model):
        px = _pixels(model, images, max(n_images, n_pairs, rerank_k))
        tx = _texts(texts, max(n_texts, n_pairs, rerank_k))
        # peak memory of one forward pass of a batch (images and texts, or pairs)
        with torch.inference_mode(), _PeakMemory(device) as mem:
            if dual is not None:
                dual.encode_image(px[:batch_size])
                dual.encode_text(**dual.tokens_on_device(dual.tokenize(tx[:batch_size])))
            if cross is not None:
                cross.score(px[:batch_size], tx[:batch_size])
        row["peak_mem_mb"], row["mem_method"] = mem.peak / 2**20, mem.method
        if dual is not None:
            t_img = _timed(lambda: _batched(dual.encode_image, px[:n_images], batch_size), device, repeats)
            t_txt = _timed(lambda: _batched(
                lambda b: dual.encode_text(**dual.tokens_on_device(dual.tokenize(b))), tx[:n_texts], batch_size),
                device, repeats)
            row["images_per_s"], row["texts_per_s"] = n_images / t_img, n_texts / t_txt
            with torch.inference_mode():
                img_shape = tuple(dual.encode_image(px[:1]).shape[1:])
            t_query_text = _timed(lambda: dual.encode_text(**dual.tokens_on_device(dual.tokenize(tx[:1]))),
                                  device, repeats)
        if cross is not None:
            t_pairs = _timed(lambda: _batched(
                lambda idx: cross.score(px[idx], [tx[i] for i in idx]), list(range(n_pairs)), batch_size),
                device, repeats)
            per_pair = t_pairs / n_pairs
            row["pairs_per_s"] = 1.0 / per_pair
            t_k = _timed(lambda: cross.score(px[:rerank_k], tx[:rerank_k]), device, repeats)
    for n in sizes:
        if dual is not None:
            gallery = torch.nn.functional.normalize(torch.randn(n, *img_shape, device=device), dim=-1)
            q = torch.nn.functional.normalize(torch.randn(1, img_shape[-1], device=device), dim=-1)

            def search(g=gallery, q=q):
                dual.similarity(g, q)[:, 0].topk(min(10, len(g)))

            t_search = _timed(search, device, repeats)
            index_s = n / row["images_per_s"]
            qrows.append({"model": name, "protocol": "ITC: embed text + one product", "n_gallery": n,
                          "query_s": t_query_text + t_search, "index_s": index_s, "basis": "measured"})
            if cross is not None:
                k = min(rerank_k, n)
                qrows.append({"model": name, "protocol": f"ITC top-{rerank_k} + ITM", "n_gallery": n,
                              "query_s": t_query_text + t_search + t_k * k / rerank_k, "index_s": index_s,
                              "basis": "measured"})
        if cross is not None:
            if n <= n_pairs:  # small galleries: time exactly N pairs
                with autocast_for(model):
                    t_n = _timed(lambda n=n: _batched(
                        lambda idx: cross.score(px[idx], [tx[i] for i in idx]), list(range(n)), batch_size),
                        device, repeats)
                basis = "measured"
            else:
                t_n, basis = n * per_pair, f"extrapolated ({n_pairs} pairs timed)"
            qrows.append({"model": name, "protocol": "ITM on every image", "n_gallery": n, "query_s": t_n,
                          "index_s": 0.0, "basis": basis})
    return row, qrows


def measure_cost(
    models: Mapping,
    images: Sequence,
    texts: Sequence[str],
    gallery_sizes: Sequence[int] = GALLERY_SIZES,
    n_images: int = 64,
    n_texts: int = 128,
    n_pairs: int = 128,
    rerank_k: int = 16,
    batch_size: int = 32,
    repeats: int = 3,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(models, queries)`` cost tables of every model (see the module docstring), measured in this run.

    ``images``: a few PIL images / arrays (repeated to ``n_images``); ``texts``: captions (repeated to
    ``n_texts`` / ``n_pairs``). ``rerank_k``: the candidates an ITC+ITM model re-ranks per query.
    """
    if not images or not texts:
        raise ValueError("measure_cost needs at least one image and one text to time the models on")
    sizes = sorted({int(n) for n in gallery_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"gallery_sizes must be positive ints, got {list(gallery_sizes)}")
    mrows, qrows = [], []
    items = list(models.items())
    if progress:
        items = tqdm(items, desc="measuring cost", leave=False)
    for name, model in items:
        row, rows = _measure_model(name, model, images, texts, sizes, n_images, n_texts, n_pairs, rerank_k,
                                   batch_size, repeats)
        mrows.append(row)
        qrows += rows
    return pd.DataFrame(mrows, columns=MODEL_COLUMNS), pd.DataFrame(qrows, columns=QUERY_COLUMNS)


def cost_summary(models: pd.DataFrame, queries: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """The models table with each protocol's query time at gallery size ``n`` (default: the largest) as
    columns, extrapolated values marked with ``*``."""
    n = int(queries["n_gallery"].max()) if n is None else int(n)
    q = queries[queries["n_gallery"] == n]
    out = models.set_index("model").copy()
    out["params"] = [f"{p / 1e6:.2f}M" for p in out["params"]]
    out["weights_mb"] = out["weights_mb"].round(1)
    out["peak_mem_mb"] = out["peak_mem_mb"].round(1)
    for col in ("images_per_s", "texts_per_s", "pairs_per_s"):
        out[col] = out[col].round(0)
    for proto, d in q.groupby("protocol", sort=False):
        col = f"query ms @ N={n}: {proto}"
        vals = {m: f"{s * 1e3:,.1f}{'*' if b != 'measured' else ''}" for m, s, b in zip(d["model"], d["query_s"],
                                                                                        d["basis"])}
        out[col] = [vals.get(m, "–") for m in out.index]
    return out.astype(object).where(out.notna(), "–")


def cost_page(models: pd.DataFrame, queries: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """:func:`cost_summary` for a page: one row per quantity, one column per model (five models fit a page's
    width; a dozen quantity columns do not)."""
    out = cost_summary(models, queries, n).T
    out.index.name, out.columns.name = "quantity", None
    return out


__all__ = ["GALLERY_SIZES", "MODEL_COLUMNS", "QUERY_COLUMNS", "cost_page", "cost_summary", "count_parameters",
           "measure_cost"]
