"""Chapter 4 end to end: the offline book run, and the full profile with tiny checkpoints for the hub names."""

import pandas as pd
import pytest

from vlnb.paths import REPO_ROOT, shared_data_dir
from vlnb.runs import run_notebook

NB = REPO_ROOT / "notebooks" / "04_compare.ipynb"


@pytest.mark.slow
def test_full_profile_with_tiny_checkpoints(tmp_path, tiny_hub_models, monkeypatch):
    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    models = tiny_hub_models
    params = {"models": models, "datasets": ["coco", "cifar100"], "max_images": 10, "rerank_k": 3,
              "coco_root": str(shared_data_dir() / "coco-mini"), "coco_karpathy_split": "",  # "" = no Karpathy file: val2017
              "cifar100_source": str(shared_data_dir() / "cifar100-test-partial" / "cifar100_test_first916.npz"),
              "batch_size": 8, "n_gallery": 2, "t2i_dataset": "coco-mini", "baseline_epochs": 1}
    run_notebook(NB, params, profile="full", out_dir=tmp_path / "run", progress=False)
    ret = pd.read_csv(tmp_path / "run" / "results" / "retrieval.csv")
    protocols = set(zip(ret["model"], ret["protocol"]))
    assert ("CLIP ViT-B/32", "ITC") in protocols
    assert ("BLIP-2 ITM (ViT-g, COCO)", "ITC top-3 → own ITM rerank (ITM + ITC)") in protocols
    assert ("ViLT (COCO)", "CLIP ViT-B/32 ITC top-3 → ITM rerank (ITM score alone)") in protocols
    assert set(ret["dataset"]) == {"coco"} and ret["recall"].between(0, 100).all()
    zs = pd.read_csv(tmp_path / "run" / "results" / "zeroshot.csv")
    assert set(zs["dataset"]) == {"coco", "cifar100"} and zs["top1"].between(0, 1).all()
    assert "ViLT (COCO)" not in set(zs["model"])  # a cross encoder has no zero-shot classifier
    t2i = pd.read_csv(tmp_path / "run" / "results" / "text_to_image.csv")
    assert set(t2i["direction"]) == {"t2i"} and t2i["model"].str.contains("BERT\\+CNN").any()
    assert {"CLIP ViT-B/32", "BLIP-2 ITM (ViT-g, COCO)"} <= set(t2i["model"])
