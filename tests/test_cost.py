"""The cost table: columns, parameter counts, measured vs extrapolated rows, and how query time scales."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlnb.eval.cost import MODEL_COLUMNS, QUERY_COLUMNS, cost_summary, count_parameters, measure_cost
from vlnb.models.base import CrossEncoder
from vlnb.models.scratch import ScratchDualEncoder

CAPS = ["a red circle and a blue square", "two green stars on grass", "a small white cross left of a black star"]
TINY = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "heads": 2, "text_width": 32, "text_layers": 1,
        "text_heads": 2, "embed_dim": 16}


def _dual(seed=0):
    return ScratchDualEncoder.create("tiny", captions=CAPS, seed=seed, **TINY).eval()


class PairwiseCross(CrossEncoder):
    """A cross encoder by cost: one joint forward pass of both towers per (image, text) pair."""

    def __init__(self):
        d = _dual(1)
        super().__init__("pairwise", d.preprocess)
        self.net = d

    def score(self, pixel_values, texts):
        self._check_pairs(pixel_values, texts)
        tok = self.net.tokenize(list(texts))
        return (self.net.encode_image(pixel_values) * self.net.encode_text(**tok)).sum(-1)


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]


def test_cost_tables_columns_and_scaling(images):
    dual, cross = _dual(), PairwiseCross()
    models, queries = measure_cost({"dual": dual, "cross": cross}, images, CAPS, gallery_sizes=(100, 5000),
                                   n_images=16, n_texts=16, n_pairs=100, batch_size=16, repeats=2, progress=False)
    assert list(models.columns) == MODEL_COLUMNS and list(queries.columns) == QUERY_COLUMNS
    m = models.set_index("model")
    assert m.loc["dual", "params"] == count_parameters(dual) == sum(p.numel() for p in dual.parameters())
    assert m.loc["dual", "kind"] == "ITC" and m.loc["cross", "kind"] == "ITM"
    assert m.loc["dual", "images_per_s"] > 0 and m.loc["dual", "texts_per_s"] > 0
    assert np.isnan(m.loc["dual", "pairs_per_s"]) and np.isnan(m.loc["cross", "images_per_s"])
    assert m.loc["cross", "pairs_per_s"] > 0
    assert (m["peak_mem_mb"] >= 0).all() and set(m["mem_method"]) <= {"RSS delta (sampled)", "unavailable"}
    q = queries.set_index(["model", "n_gallery"])
    # cross: N = 100 pairs were run; 5,000 is extrapolated from the per-pair time, and says so
    assert q.loc[("cross", 100), "basis"] == "measured"
    assert q.loc[("cross", 5000), "basis"].startswith("extrapolated")
    assert (queries.loc[queries["model"] == "dual", "basis"] == "measured").all()
    grow = {name: q.loc[(name, 5000), "query_s"] / q.loc[(name, 100), "query_s"] for name in ("dual", "cross")}
    assert grow["dual"] < grow["cross"], grow  # embed-once + a product grows slower than one pass per image
    summary = cost_summary(models, queries)
    assert "query ms @ N=5000: ITM on every image" in summary.columns
    assert summary.loc["cross", "query ms @ N=5000: ITM on every image"].endswith("*")
    from vlnb.eval.cost import cost_page

    page = cost_page(models, queries)  # on its side: one column per model
    assert list(page.columns) == list(summary.index) and page.loc["query ms @ N=5000: ITM on every image", "cross"] \
        == summary.loc["cross", "query ms @ N=5000: ITM on every image"]
    assert not page.isna().any().any()


def test_itc_plus_itm_model_gets_all_three_protocols(tiny_blip_dir, images):
    from vlnb.models import load_model

    blip = load_model(str(tiny_blip_dir))
    models, queries = measure_cost({"blip": blip}, images, CAPS, gallery_sizes=(100, 300), n_images=4, n_texts=4,
                                   n_pairs=8, rerank_k=4, batch_size=4, repeats=1, progress=False)
    assert models.loc[0, "kind"] == "ITC+ITM"
    assert set(queries["protocol"]) == {"ITC: embed text + one product", "ITC top-4 + ITM", "ITM on every image"}
    itc = queries[queries["protocol"].str.startswith("ITC:")].set_index("n_gallery")["query_s"]
    rr = queries[queries["protocol"] == "ITC top-4 + ITM"].set_index("n_gallery")["query_s"]
    assert (rr > itc).all()  # re-ranking adds the k pairs on top of the ITC search


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match="at least one image"):
        measure_cost({"dual": _dual()}, [], CAPS, progress=False)
    with pytest.raises(ValueError, match="gallery_sizes"):
        measure_cost({"dual": _dual()}, ["x"], CAPS, gallery_sizes=(0,), progress=False)


def test_query_time_plot_and_probe_plot_render():
    import matplotlib

    matplotlib.use("Agg")
    from vlnb.plots import probe_plot, query_time_plot

    q = pd.DataFrame({"model": ["a"] * 2 + ["b"] * 2, "protocol": ["ITC"] * 2 + ["ITM"] * 2,
                      "n_gallery": [100, 5000] * 2, "query_s": [1e-3, 2e-3, 1e-1, 5.0], "index_s": 0.0,
                      "basis": ["measured", "measured", "measured", "extrapolated (100 pairs timed)"]})
    ax = query_time_plot(q)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    t = pd.DataFrame({"model": ["a", "a"], "head": ["ITC", "ITC"], "type": ["attribute swap", "count change"],
                      "accuracy": [0.5, 0.9], "ci_lo": [0.4, 0.8], "ci_hi": [0.6, 1.0], "chance": [0.5, 0.5]})
    ax = probe_plot(t)
    assert ax.get_ylim()[1] == pytest.approx(102) and "%" in ax.get_ylabel()  # percent, like the book's tables
    assert ax.lines[0].get_ydata()[0] == pytest.approx(50.0)  # the first point: 0.5 drawn as 50 %
