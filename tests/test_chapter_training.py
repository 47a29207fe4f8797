"""Chapter 2 end to end (offline): reference models trained or loaded, results above chance, side experiments."""

import pandas as pd
import pytest

from vlnb.paths import REPO_ROOT
from vlnb.runs import run_notebook

NB = REPO_ROOT / "notebooks" / "02_clip_training.ipynb"


@pytest.mark.slow
def test_chapter2_offline(tmp_path):
    # the reference models go to the default artifacts folder: trained once, then shared with the other chapters
    params = {"variant_n_train": 200, "variant_n_test": 60, "variant_epochs": 1, "attention_variants": ["self", "local"],
              "variant_warmup_steps": 0, "variant_seeds": [0, 1], "paired_n_train": 128, "paired_n_test": 64, "paired_epochs": 1}
    run_notebook(NB, params, out_dir=tmp_path / "run", progress=False)
    res = pd.read_csv(tmp_path / "run" / "results" / "results.csv")
    assert set(res["model"]) == {"scratch-world", "towers-coco"}
    r1 = res[res["k"] == 1]
    # held-out Recall@1 of the reference recipes: far above a random ranking
    assert (r1["recall"] > 5 * r1["chance"]).all(), r1[["model", "direction", "recall", "chance"]]
    var = pd.read_csv(tmp_path / "run" / "results" / "attention_variants.csv")
    assert list(var["variant"].unique()) == ["self", "local"] and (var["train_time_s"] > 0).all()
    assert sorted(var["seed"]) == [0, 0, 1, 1]  # one row per (variant, seed)
    paired = pd.read_csv(tmp_path / "run" / "results" / "paired_cifar.csv")
    assert paired["metric"].str.startswith("t2i R@").sum() == 3 and (paired["train pairs"] == 128).all()
