"""compare_text_attention: one tidy row per text-attention variant, trained alike, on a tiny paired-CIFAR setup."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch

from vlnb.data.images import encode_png
from vlnb.data.manifest import make_manifest
from vlnb.models.fusion import ScratchBLIP
from vlnb.train import TrainConfig
from vlnb.train.variants import COLUMNS, PROTOCOL_ITC, RECALL_COLUMNS, PeakMemory, compare_text_attention

TINY = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "text_width": 32, "text_layers": 1,
        "text_heads": 2, "embed_dim": 16, "context_length": 16, "local_window": 2, "n_memory": 4}


def manifest(n: int, seed: int, split: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colours = ("red", "blue", "green", "pink")
    rows = [{"image_id": f"{split}{i}", "image": encode_png(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)),
             "captions": [f"a {colours[i % 4]} thing and a {colours[(i + 1) % 4]} one"], "split": split}
            for i in range(n)]
    return make_manifest(rows, name="tiny-pairs")


def test_one_row_per_variant_with_metrics_time_memory_and_params():
    from vlnb.data.paired_cifar import pair_preprocess

    train, test = manifest(32, 0, "train"), manifest(12, 1, "test")
    table, models = compare_text_attention(
        train, test, epochs=1, train_config={"batch_size": 16, "warmup_steps": 1, "lr": 1e-3}, device="cpu",
        adapt_preprocess=pair_preprocess, progress=False, return_models=True, **TINY)
    assert list(table.columns) == COLUMNS and table["variant"].tolist() == ["self", "memory", "cross", "local"]
    for v, m in models.items():
        assert m.preprocess.crop is None and m.preprocess.resize == (16, 16)
        assert (m.config.arch == "blip") if v == "cross" else (m.config.text_attention == v)
    # the true cross-modal variant is a fusion model: its row is measured as ITC top-k re-ranked by its ITM head
    assert isinstance(models["cross"], ScratchBLIP) and "ITM re-rank" in table.set_index("variant").loc["cross", "protocol"]
    assert (table.loc[table["variant"] != "cross", "protocol"] == PROTOCOL_ITC).all()
    r = table.set_index("variant")
    assert ((table[RECALL_COLUMNS] >= 0) & (table[RECALL_COLUMNS] <= 100)).all().all()
    for d in ("i2t", "t2i"):
        assert (table[f"{d}_R@1"] <= table[f"{d}_R@5"]).all() and (table[f"{d}_R@5"] <= table[f"{d}_R@10"]).all()
    # local attention only masks, memory attention adds layers and memory slots, cross-modal adds them and an ITM head
    assert r.loc["self", "params"] == r.loc["local", "params"] < r.loc["memory", "params"]
    assert r.loc["memory", "params"] - r.loc["self", "params"] == r.loc["memory", "text_params"] - r.loc["self", "text_params"]
    assert r.loc["cross", "text_params"] > r.loc["self", "text_params"]
    assert (table["train_time_s"] > 0).all() and table["peak_memory_mb"].map(math.isfinite).all()
    assert (table["peak_memory_mb"] >= 0).all() and table["memory_measure"].str.startswith("cpu").all()
    assert (table["epochs"] == 1).all() and (table["n_test_images"] == 12).all() and (table["device"] == "cpu").all()
    # the same seed and data give the same results: variants differ by their attention only
    again = compare_text_attention(train, test, variants=["local"], epochs=1, progress=False, device="cpu",
                                   adapt_preprocess=pair_preprocess,
                                   train_config=TrainConfig(batch_size=16, warmup_steps=1, lr=1e-3), **TINY)
    assert again[RECALL_COLUMNS + ["final_train_loss"]].iloc[0].tolist() == \
        r.loc["local", RECALL_COLUMNS + ["final_train_loss"]].tolist()


def test_the_cross_modal_variant_can_run_alone_or_first():
    from vlnb.data.paired_cifar import pair_preprocess

    train, test = manifest(32, 0, "train"), manifest(8, 1, "test")
    table = compare_text_attention(train, test, variants=["cross", "self"], epochs=1, device="cpu", progress=False,
                                   adapt_preprocess=pair_preprocess, rerank_k=4,
                                   train_config={"batch_size": 16, "warmup_steps": 1}, **TINY)
    assert table["variant"].tolist() == ["cross", "self"] and "top-4" in table["protocol"].iloc[0]
    assert table[[c for c in RECALL_COLUMNS if not c.endswith("@5") and not c.endswith("@10")]].notna().all().all()


def test_bad_variants_are_named():
    train, test = manifest(16, 0, "train"), manifest(4, 1, "test")
    with pytest.raises(ValueError, match="sparse"):
        compare_text_attention(train, test, variants=["self", "sparse"], **TINY)
    with pytest.raises(ValueError, match="empty"):
        compare_text_attention(train, test, variants=[], **TINY)
    with pytest.raises(ValueError, match="per variant"):
        compare_text_attention(train, test, text_attention="self", **TINY)
    with pytest.raises(ValueError, match="no captions"):
        compare_text_attention(train, test.assign(captions=[[] for _ in range(4)]), **TINY)


@pytest.mark.parametrize("kernel_mark", [True, False])
def test_peak_memory_sees_a_large_allocation(kernel_mark, monkeypatch):
    """The kernel's peak-RSS mark (Linux) and the sampling thread (elsewhere) both see a short-lived 64 MiB."""
    import vlnb.train.variants as V

    if kernel_mark and not V._reset_peak_rss():
        pytest.skip("no resettable VmHWM here (/proc/self/clear_refs)")
    if not kernel_mark:
        monkeypatch.setattr(V, "_reset_peak_rss", lambda: False)
    before = torch.ones(96 * 2**20 // 4)  # a larger peak *before* the block must not count
    del before
    with PeakMemory("cpu") as m:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.05)  # held for many sampling intervals
        del x
    assert 40 < m.peak_mb < 90
    assert m.measure == ("cpu peak RSS (VmHWM)" if kernel_mark else "cpu RSS (2 ms samples)")


def test_seed_summary_intervals_and_paired_differences():
    """Means over seeds with a t-interval, and differences paired by seed: a constant +2 is distinguishable from
    self (zero spread), seed noise of the same size as the difference is not."""
    import pandas as pd
    from scipy import stats

    from vlnb.train.variants import seed_summary

    t = pd.DataFrame({"variant": ["self", "cross", "local"] * 3, "seed": [0, 0, 0, 1, 1, 1, 2, 2, 2],
                      "t2i_R@1": [10.0, 12.0, 9.0, 14.0, 16.0, 15.0, 12.0, 14.0, 12.0]})
    s = seed_summary(t, metrics=["t2i_R@1"]).set_index("variant")
    assert s.loc["self", "mean"] == 12.0 and s.loc["self", "seeds"] == 3
    half = stats.t.ppf(0.975, 2) * 2.0 / 3 ** 0.5  # sd of (10, 14, 12) is 2
    assert s.loc["self", "ci_lo"] == pytest.approx(12.0 - half) and s.loc["self", "ci_hi"] == pytest.approx(12.0 + half)
    assert s.loc["cross", "diff_vs_self"] == pytest.approx(2.0) and bool(s.loc["cross", "distinguishable"])
    assert s.loc["local", "diff_vs_self"] == pytest.approx(0.0) and not bool(s.loc["local", "distinguishable"])


def test_seed_summary_page_has_no_nan_and_names_the_baseline():
    import pandas as pd

    from vlnb.train.variants import seed_summary, seed_summary_page

    t = pd.DataFrame({"variant": ["self", "local"] * 2, "seed": [0, 0, 1, 1], "t2i_R@1": [10.0, 9.0, 12.0, 12.0],
                      "i2t_R@1": [20.0, 18.0, 22.0, 21.0]})
    page = seed_summary_page(seed_summary(t, metrics=["t2i_R@1", "i2t_R@1"]), metrics=("t2i_R@1", "i2t_R@1"))
    assert page["variant"].tolist() == ["self", "local"] and "nan" not in page.to_string().lower()
    assert page.loc[0, "t2i_R@1 − self"] == "baseline" and page.loc[1, "t2i_R@1 − self"].startswith("-0.5 [")


def test_seeds_side_by_side_equal_one_at_a_time():
    """Two processes with one thread each give the table one process gives, row for row (same seeds, same data)."""
    from vlnb.train.variants import compare_text_attention_seeds, variant_jobs

    train, test = manifest(24, 0, "train"), manifest(8, 1, "test")
    kw = {"epochs": 1, "device": "cpu", "progress": False, "rerank_k": 4,
          "train_config": {"batch_size": 8, "warmup_steps": 1, "lr": 1e-3}, **TINY}
    serial = compare_text_attention_seeds(train, test, seeds=[0, 1], variants=["self", "cross"], jobs=1, **kw)
    pool = compare_text_attention_seeds(train, test, seeds=[0, 1], variants=["self", "cross"], jobs=2, **kw)
    assert serial[["variant", "seed"]].values.tolist() == [["self", 0], ["cross", 0], ["self", 1], ["cross", 1]]
    assert pool[["variant", "seed"]].values.tolist() == serial[["variant", "seed"]].values.tolist()
    cols = RECALL_COLUMNS + ["final_train_loss", "params"]
    assert np.allclose(pool[cols].to_numpy(float), serial[cols].to_numpy(float), atol=1e-4, equal_nan=True)
    assert serial.loc[0, "final_train_loss"] != serial.loc[2, "final_train_loss"]  # the seed matters
    assert variant_jobs(12, "cpu", jobs=1) == 1 and variant_jobs(1, "cpu") == 1
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        variant_jobs(4, "cpu", jobs=0)
    with pytest.raises(ValueError, match="seeds is empty"):
        compare_text_attention_seeds(train, test, seeds=[], **kw)


def test_runs_trained_ahead_are_taken_not_trained_again(monkeypatch):
    """Chapter 2 hands the variant runs to the pool that trains its reference models (ahead_runs); the variants
    cell then gets exactly those tables, with nothing trained again; a second call trains afresh."""
    import vlnb.train.variants as V

    train, test = manifest(24, 0, "train"), manifest(8, 1, "test")
    kw = {"epochs": 1, "device": "cpu", "progress": False, "rerank_k": 4,
          "train_config": {"batch_size": 8, "warmup_steps": 1, "lr": 1e-3}, **TINY}
    assert V.ahead_runs(train, test, seeds=[0, 1], variants=["self"], jobs=1, **kw) == []  # one at a time: itself
    jobs = V.ahead_runs(train, test, seeds=[0, 1], variants=["self", "local"], jobs=2, **kw)
    assert [j.name for j in jobs] == ["self variant, seed 0", "local variant, seed 0", "self variant, seed 1",
                                      "local variant, seed 1"]
    ahead = {}
    for j in jobs:  # what the pool does: the run in a process, then done() here
        ahead[j.name] = j.fn(*j.args)
        j.done(ahead[j.name])
    calls = []
    real = V.compare_text_attention
    monkeypatch.setattr(V, "compare_text_attention", lambda *a, **k: calls.append(k) or real(*a, **k))
    table = V.compare_text_attention_seeds(train, test, seeds=[0, 1], variants=["self", "local"], jobs=2, **kw)
    assert calls == [] and table[["variant", "seed"]].values.tolist() == [["self", 0], ["local", 0], ["self", 1],
                                                                         ["local", 1]]
    pd.testing.assert_frame_equal(table.iloc[[3]].reset_index(drop=True), ahead["local variant, seed 1"])
    other = {**kw, "epochs": 2}  # other arguments: a different run, trained here
    assert len(V.ahead_runs(train, test, seeds=[0, 1], variants=["self"], jobs=2, **other)) == 2
    V._FINISHED.clear()
    V.compare_text_attention_seeds(train, test, seeds=[0], variants=["self"], jobs=1, **kw)  # taken once only
    assert len(calls) == 1
