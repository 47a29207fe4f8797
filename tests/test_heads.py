"""Chapter 3: projection heads on frozen features, alignment/uniformity, the experiment, the notebook."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlnb import heads as H
from vlnb.data.manifest import make_manifest
from vlnb.eval.chance import recall_chance
from vlnb.eval.retrieval import recall_at_k
from vlnb.heads import (
    FeaturePairs,
    FrozenFeatureExtractor,
    FrozenFeatures,
    HeadsDualEncoder,
    alignment,
    extract_frozen_features,
    geometry,
    head_embeddings,
    paired_embeddings,
    pretrained_embeddings,
    run_heads,
    similarity,
    train_head,
    uniformity,
)
from vlnb.paths import REPO_ROOT


# ----------------------------------------------------------------------------- a synthetic aligned problem
def synthetic(n_images: int, seed: int, caps: int = 3, latent: int = 8, di: int = 32, dt: int = 24,
              world_seed: int = 123) -> FrozenFeatures:
    """Images and captions generated from one latent per image through two fixed random maps (+ noise):
    a problem a linear head can solve, and an untrained head cannot."""
    g = torch.Generator().manual_seed(world_seed)
    a, b = torch.randn(latent, di, generator=g), torch.randn(latent, dt, generator=g)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_images, latent, generator=g)
    image = z @ a + 0.3 * torch.randn(n_images, di, generator=g)
    texts, t2i, rows = [], [], []
    for i in range(n_images):
        for c in range(caps):
            texts.append(f"image {seed}-{i} caption {c}")
            t2i.append(i)
            rows.append(z[i] @ b + 0.3 * torch.randn(dt, generator=g))
    man = pd.DataFrame({"image_id": [f"{seed}-{i}" for i in range(n_images)],
                        "captions": [[texts[i * caps + c] for c in range(caps)] for i in range(n_images)]})
    return FrozenFeatures(image, torch.stack(rows), man, texts, np.asarray(t2i))


FAST = {"epochs": 12, "batch_size": 32, "lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.0}


@pytest.fixture(scope="module")
def problem():
    return synthetic(160, seed=1), synthetic(60, seed=2)


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_head_shapes_and_structure(kind):
    m = HeadsDualEncoder(32, 24, kind, embed_dim=16, seed=0)
    x = torch.randn(5, 32)
    e = m.encode_image(x)
    assert e.shape == (5, 16) and torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    m.set_text_table(["a", "b", "c"], torch.randn(3, 24))
    t = m.encode_text(**m.tokenize(["c", "a"]))
    assert t.shape == (2, 16) and torch.allclose(t, m.project_text(m.text_table[[2, 0]]))
    if kind == "mlp":  # Linear -> GELU -> Linear, same output size as the linear head
        layers = list(m.image_head)
        assert [type(x).__name__ for x in layers] == ["Linear", "GELU", "Linear"]
        assert layers[-1].out_features == 16 and layers[0].in_features == 32
    else:
        assert isinstance(m.image_head, torch.nn.Linear) and m.image_head.out_features == 16
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    with pytest.raises(KeyError, match="no cached text features"):
        m.tokenize(["never seen"])
    with pytest.raises(ValueError, match=r"\(B, 32\)"):
        m.encode_image(torch.randn(2, 31))
    with pytest.raises(ValueError, match="head must be one of"):
        HeadsDualEncoder(32, 24, "transformer")
    with pytest.raises(ValueError, match="text features must be"):
        m.set_text_table(["a"], torch.randn(2, 24))


def test_head_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a = HeadsDualEncoder(32, 24, "mlp", 16, seed=3)
    assert torch.rand(1) == before  # init used its own generator state
    b = HeadsDualEncoder(32, 24, "mlp", 16, seed=3)
    c = HeadsDualEncoder(32, 24, "mlp", 16, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_feature_pairs_caption_choice_is_seeded():
    feats = torch.randn(4, 3)
    caps = [["a0", "a1", "a2"], [], ["c0"], ["d0", "d1"]]
    ds = FeaturePairs(feats, caps, "random", seed=5)
    assert len(ds) == 3  # the image without a caption is left out
    assert torch.equal(ds[1][0], feats[2])
    ds.set_epoch(3)
    first = [ds[i][1] for i in range(3)]
    ds.set_epoch(0)
    ds.set_epoch(3)
    assert [ds[i][1] for i in range(3)] == first
    assert [FeaturePairs(feats, caps, "first")[i][1] for i in range(3)] == ["a0", "c0", "d0"]
    with pytest.raises(ValueError, match="nothing to train"):
        FeaturePairs(feats[:1], [[]])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_training_beats_untrained_and_chance(problem, kind):
    train, test = problem
    untrained = HeadsDualEncoder(train.image_dim, train.text_dim, kind, 16, seed=0)
    model, hist = train_head(train, kind, seed=0, config=FAST, embed_dim=16)
    r0 = recall_at_k(similarity(*head_embeddings(untrained, test)), test.text_to_image)
    r1 = recall_at_k(similarity(*head_embeddings(model, test)), test.text_to_image)
    chance = recall_chance(test.text_to_image, test.n_images)
    assert r1["t2i_R@1"] > max(3 * chance["t2i_R@1"], r0["t2i_R@1"] + 15), (r0, r1)
    assert r1["i2t_R@5"] > r0["i2t_R@5"] + 15
    losses = hist.epochs_df["train_loss"]
    assert losses.iloc[-1] < losses.iloc[0]
    assert not model.training


def test_training_is_reproducible_per_seed(problem):
    train, _ = problem
    cfg = {**FAST, "epochs": 2}
    a, ha = train_head(train, "linear", seed=1, config=cfg, embed_dim=8)
    b, hb = train_head(train, "linear", seed=1, config=cfg, embed_dim=8)
    c, _ = train_head(train, "linear", seed=2, config=cfg, embed_dim=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["image_head.weight"], sc["image_head.weight"])
    assert ha.epochs_df["train_loss"].tolist() == hb.epochs_df["train_loss"].tolist()


# ----------------------------------------------------------------------------- alignment / uniformity
def test_alignment_and_uniformity_hand_cases():
    x = F.normalize(torch.randn(6, 4), dim=1)
    assert alignment(x, x) == 0.0
    assert alignment(x, -x) == pytest.approx(4.0)
    assert alignment(x, -x, alpha=1) == pytest.approx(2.0)
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(e) == pytest.approx(-8.0)  # one pair, ||x - y||^2 = 4, t = 2
    assert uniformity(torch.tensor([[0.0, 1.0]] * 5)) == pytest.approx(0.0)  # collapsed
    sq = torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0]])  # 4 neighbours at d^2 = 2, 2 opposite at 4
    assert uniformity(sq) == pytest.approx(math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6))
    spread = F.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    assert uniformity(spread) < uniformity(F.normalize(spread + 3.0, dim=1))
    with pytest.raises(ValueError):
        alignment(x, x[:3])
    g = geometry(x, x.repeat_interleave(2, 0), np.repeat(np.arange(6), 2))
    assert g["alignment"] == 0.0 and g["modality_gap"] == pytest.approx(0.0, abs=1e-6)


def test_paired_embeddings_pick_the_matching_query():
    img = F.normalize(torch.randn(3, 4, 8), dim=-1)
    t2i = np.array([0, 0, 2])
    txt = torch.stack([img[0, 1], img[0, 3], img[2, 2]])
    per_text, per_image = paired_embeddings(img, txt, t2i)
    assert torch.allclose(per_text, txt)
    assert torch.allclose(per_image[0], img[0, 1]) and torch.allclose(per_image[2], img[2, 2])
    assert torch.allclose(per_image[1].norm(), torch.tensor(1.0))  # no caption: normalised query mean
    assert torch.allclose(similarity(img, txt)[0, 0], torch.tensor(1.0))


# ----------------------------------------------------------------------------- BLIP-2 (tiny) frozen features
def _png(i: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


WORDS = ["man", "dog", "cat", "horse", "car", "bus", "tree", "water"]


def tiny_manifest(n: int, split: str, start: int = 0) -> pd.DataFrame:
    rec = [{"image_id": f"{split}{i}", "image": _png(start + i), "split": split, "labels": [],
            "captions": [f"a {WORDS[(start + i) % 8]} near a {WORDS[(start + 3 * i + k) % 8]}" for k in range(2)]}
           for i in range(n)]
    return make_manifest(rec, name="tiny")


@pytest.fixture(scope="module")
def blip2(tiny_blip2_dir):
    from vlnb.models import load_model

    return load_model(str(tiny_blip2_dir))


def test_blip2_frozen_features_are_the_inputs_of_the_itc_projections(blip2, tmp_path):
    man = tiny_manifest(5, "test")
    ex = FrozenFeatureExtractor(blip2, pool_queries=False)
    assert ex.image_dim == ex.text_dim == blip2.model.config.qformer_config.hidden_size
    feats = extract_frozen_features(ex, man, cache_dir=tmp_path, progress=False)
    assert feats.image.shape == (5, 32, ex.image_dim) and feats.text.shape == (10, ex.text_dim)
    assert not feats.from_cache
    again = extract_frozen_features(FrozenFeatureExtractor(blip2, pool_queries=False), man, cache_dir=tmp_path,
                                    progress=False)
    assert again.from_cache and torch.equal(again.image, feats.image)
    pooled = extract_frozen_features(blip2, man, cache_dir=tmp_path, progress=False)  # another cache entry
    assert not pooled.from_cache and torch.allclose(pooled.image, feats.image.mean(1), atol=1e-5)
    # the pretrained ITC head applied to cached features == the adapter's own encode path
    img, txt = pretrained_embeddings(blip2, feats)
    with torch.no_grad():
        ref_img = blip2.encode_image(blip2.preprocess([Image.open(io.BytesIO(b)).convert("RGB") for b in man["image"]]))
        ref_txt = blip2.encode_text(**blip2.tokenize(feats.texts))
    assert torch.allclose(img, ref_img, atol=1e-5) and torch.allclose(txt, ref_txt, atol=1e-5)
    assert torch.allclose(similarity(img, txt), blip2.similarity(ref_img, ref_txt), atol=1e-5)
    with pytest.raises(ValueError, match="pool_queries=False"):
        pretrained_embeddings(blip2, pooled)


def test_frozen_features_reject_other_families():
    class Fake:
        family = "clip"

    with pytest.raises(ValueError, match="frozen features are defined"):
        FrozenFeatureExtractor(Fake())


def test_run_heads_full_path_on_tiny_blip2(blip2, tmp_path):
    """The full-profile code path (BLIP-2 features, ITC baseline, ITM re-ranking, heads, tables) end to end."""
    exp = run_heads(blip2, tiny_manifest(24, "train", 100), tiny_manifest(8, "test"), dataset="tiny",
                    model_name="tiny BLIP-2", seeds=[0, 1, 2], train_config={"epochs": 2, "batch_size": 16, "warmup_steps": 1},
                    embed_dim=8, k_rerank=3, n_boot=50, cache_dir=tmp_path, progress=False)
    methods = exp.methods()
    assert methods[:2] == ["pretrained head", "pretrained head + ITM re-rank (k=3)"]
    assert {"linear head", "MLP head", "untrained linear head", "untrained MLP head"} <= set(methods)
    per_seed = exp.recall_table()
    # re-ranking with k = 3: only R@1 is meaningful (R@K needs K <= k), the other rows are left out
    assert len(per_seed) == (1 + 4 * 3) * 6 + 2
    assert set(per_seed[per_seed["method"].str.contains("re-rank")]["k"]) == {1}
    rr = per_seed[per_seed["method"].str.contains("re-rank")]
    assert (rr["protocol"] != per_seed[per_seed["method"] == "pretrained head"]["protocol"].iloc[0]).all()
    assert per_seed["ci_lo"].le(per_seed["recall"] + 1e-9).all() and per_seed["ci_hi"].ge(per_seed["recall"] - 1e-9).all()
    summary = exp.summary_table()
    lin = summary[(summary["method"] == "linear head")]
    assert (lin["n_seeds"] == 3).all() and (lin["seed_min"] <= lin["recall"]).all()
    assert len(exp.compare("MLP head", "linear head")) == 6
    geo = exp.geometry_table()
    assert geo["method"].iloc[0] == "frozen features (no head)"  # Q-Former image and text share a space
    assert "pretrained head" in set(geo["method"])
    assert set(exp.history_table()["seed"]) == {0, 1, 2}
    assert exp.train.image.ndim == 2 and exp.test.image.ndim == 3
    # methods are Method members; their labels are what the tables show
    assert [r.kind for r in exp.runs[:2]] == [H.Method.PRETRAINED, H.Method.RERANK]
    assert exp.runs_of(H.Method.RERANK)[0].method == "pretrained head + ITM re-rank (k=3)"
    assert exp.compare(H.Method.MLP, H.Method.LINEAR).equals(exp.compare("MLP head", "linear head"))
    # the chapter's report tables
    feats = H.features_table([exp])
    assert feats.loc[0, ["train_images", "test_images", "test_captions"]].tolist() == [24, 8, 8 * 2]
    diffs = H.paired_differences([exp])
    assert len(diffs) == 3 * 6 and set(zip(diffs["a"], diffs["b"])) == {
        ("MLP head", "linear head"), ("linear head", "pretrained head"), ("MLP head", "pretrained head")}
    r1 = H.r1_table(summary)
    assert r1.loc[("tiny", "linear head"), ("recall", "t2i")] == round(lin.query("direction == 't2i' and k == 1")["recall"].iloc[0], 1)
    assert list(H.final_epochs(exp.history_table()).columns) == ["train_loss", "logit_scale"]
    prose = H.prose_numbers(exp, summary)
    rr1 = summary[(summary["method"] == exp.runs_of(H.Method.RERANK)[0].method) & (summary["direction"] == "t2i")]
    assert prose["main_rerank_t2i_r1"] == f"{rr1['recall'].iloc[0]:.1f} %"
    assert prose["main_rerank_t2i_r5"].startswith("not measured") and prose["main_chance_t2i_r1"] == f"{100 / 8:.1f} %"
    # figures: what they plot, not only that they exist
    import matplotlib

    matplotlib.use("Agg")
    fig = H.recall_bars(summary, per_seed)
    ax = fig.axes[0]  # tiny: text -> image
    trained = summary[summary["trained"] & (summary["direction"] == "t2i")]
    methods = H.method_order(trained["method"].unique())
    expect = [trained.query("method == @m and k == @k")["recall"].iloc[0] if ((trained["method"] == m)
              & (trained["k"] == k)).any() else np.nan for m in methods for k in (1, 5, 10)]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, expect)  # re-ranking: R@1 only, no bar at K > k
    assert ax.get_title() == "tiny: text → image" and len(fig.axes) == 2
    chance = [seg[0][1] for c in ax.collections for seg in c.get_segments()  # horizontal: not the error bars
              if len(seg) and seg[0][1] == seg[1][1] and seg[0][0] != seg[1][0] and not np.isnan(seg[0][1])]
    ch = trained.drop_duplicates("k").set_index("k")["chance"]
    assert set(np.round(chance, 6)) == set(np.round(ch, 6))  # the chance ticks (one definition, vlnb.eval.chance)
    assert [p.get_hatch() for p in ax.patches].count("//") == 3  # the re-ranked method's bars
    ps = per_seed[per_seed["seed"].notna() & (per_seed["direction"] == "t2i")
                  & per_seed["method"].isin(trained["method"])]
    dots = sorted(y for ln in ax.get_lines() if ln.get_marker() == "." for y in ln.get_ydata())
    np.testing.assert_allclose(dots, sorted(ps["recall"]))  # each seed's value
    fig = H.geometry_plot(geo)
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(geo)
    fig = H.pca_plot(exp)
    assert [a.get_title() for a in fig.axes] == ["frozen features (no head)", "untrained linear head", "linear head",
                                                 "untrained MLP head", "MLP head", "pretrained head"]
    fig = H.gallery_plot(exp, n_queries=2, k=3)
    assert len(fig.axes) == 2 * len(exp.methods(trained_only=True)) * (3 + 1)


# ----------------------------------------------------------------------------- the notebook
@pytest.mark.slow
def test_chapter3_offline_notebook(offline_book):
    """Chapter 3 as the session's offline book ran it (tests/conftest.py::offline_book), on the offline defaults."""
    stem = "03_blip2_heads"
    cfg = offline_book.config(stem)
    run = offline_book.run(stem)
    assert json.loads((run / "run.json").read_text())["status"] == "ok"
    summary = offline_book.results(stem, "recall_summary")
    assert set(summary["dataset"]) == set(cfg.datasets) == {"coco-mini", "world"}
    assert {"pretrained head", "linear head", "MLP head"} <= set(summary["method"])
    # the Q-Former over the 7x7 map runs where qformer_datasets says (offline default: coco-mini only)
    assert set(summary.loc[summary["method"] == "Q-Former (7x7 map)", "dataset"]) == set(cfg.qformer_datasets) \
        == {"coco-mini"}
    trained = summary[summary["method"].isin(["linear head", "MLP head"])]
    # heads trained on frozen tower features are far above chance on both data sets
    r10 = trained[(trained["k"] == 10) & (trained["direction"] == "t2i")]
    assert len(r10) == 2 * len(cfg.datasets) and (r10["recall"] > 2 * r10["chance"]).all(), r10
    # every trained head is trained once per seed
    per_seed = offline_book.results(stem, "recall_per_seed")
    for (ds, method), seeds in per_seed[per_seed["method"].isin(["linear head", "MLP head"])].groupby(
            ["dataset", "method"])["seed"]:
        assert sorted(seeds.unique()) == sorted(cfg.seeds), (ds, method)
    for name in ("recall_bars", "geometry", *(f"{f}_{ds}" for f in ("pca", "gallery") for ds in cfg.datasets)):
        assert offline_book.figure(stem, name).stat().st_size > 5000, name


@pytest.mark.slow
def test_chapter3_full_profile_with_tiny_blip2(tmp_path, tiny_blip2_dir):
    """The full profile's path (hub-style BLIP-2 checkpoint, Flickr30k loader, ITM re-ranking) with a tiny
    BLIP-2 standing in for Salesforce/blip2-itm-vit-g and a parquet Flickr30k stand-in of real COCO photos."""
    datasets = pytest.importorskip("datasets")
    from vlnb.paths import shared_data_dir
    from vlnb.runs import run_notebook

    jpgs = sorted((shared_data_dir(required=True) / "coco-mini" / "train2017").glob("*.jpg"))[:30]
    splits = ["train"] * 20 + ["test"] * 10
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": None} for p in jpgs],
         "caption": [[f"a photo of {WORDS[i % 8]} and {WORDS[(i + k) % 8]}" for k in range(5)] for i in range(30)],
         "split": splits, "img_id": [str(i) for i in range(30)], "filename": [p.name for p in jpgs]},
        features=datasets.Features({"image": datasets.Image(),
                                    "caption": (getattr(datasets, "List", None) or datasets.Sequence)(datasets.Value("string")),
                                    "split": datasets.Value("string"), "img_id": datasets.Value("string"),
                                    "filename": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "flickr.parquet"))
    params = {"models": {"BLIP-2 ITM (ViT-g)": str(tiny_blip2_dir)}, "flickr30k_source": str(tmp_path / "flickr.parquet"),
              "n_train_pairs": 16, "seeds": [0, 1, 2], "epochs": 2, "batch_size": 16, "warmup_steps": 1, "k_rerank": 4, "n_bootstrap": 50,
              "embed_dim": 16, "feature_batch_size": 8}
    run_notebook(REPO_ROOT / "notebooks" / "03_blip2_heads.ipynb", params, profile="full", out_dir=tmp_path / "run",
                 progress=False)
    summary = pd.read_csv(tmp_path / "run" / "results" / "recall_summary.csv")
    assert set(summary["dataset"]) == {"flickr30k"}
    assert "pretrained head + ITM re-rank (k=4)" in set(summary["method"])
    per_seed = pd.read_csv(tmp_path / "run" / "results" / "recall_per_seed.csv")
    assert set(per_seed[per_seed["method"] == "MLP head"]["seed"]) == {0, 1, 2}
    feats = pd.read_csv(tmp_path / "run" / "results" / "features.csv")
    assert feats["train_images"].iloc[0] == 16 and feats["test_images"].iloc[0] == 10
    assert "Q-Former" in feats["image_features"].iloc[0]


# ----------------------------------------------------------------------------- the Q-Former over a patch map
def test_qformer_shapes_on_a_fake_7x7_map():
    m = H.QFormerHeads(32, 24, n_patches=49, embed_dim=16, width=16, layers=1, n_queries=4, n_heads=4, seed=0)
    fmap = torch.randn(3, 32, 7, 7)  # (B, C, 7, 7) as EfficientNet's last stage, to the 49 tokens the cache holds
    e = m.encode_image(fmap.flatten(2).transpose(1, 2))
    assert e.shape == (3, 4, 16) and torch.allclose(e.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    assert m.query_outputs(torch.randn(3, 49, 32)).shape == (3, 4, 16)
    m.set_text_table(["a", "b"], torch.randn(2, 24))
    assert m.encode_text(**m.tokenize(["b"])).shape == (1, 16)
    assert not hasattr(m, "image_head") and m.adapter_config()["head"] == "qformer"
    with pytest.raises(ValueError, match=r"\(B, 49, 32\)"):
        m.encode_image(torch.randn(3, 32))
    with pytest.raises(ValueError, match="width % heads"):
        H.QFormerHeads(32, 24, width=18, n_heads=4)
    a, b = (H.QFormerHeads(32, 24, 49, 16, 16, 1, 4, seed=3).state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded initialisation


def test_qformer_itc_is_max_over_queries():
    img = F.normalize(torch.randn(3, 4, 8), dim=-1)
    txt = F.normalize(torch.randn(5, 8), dim=-1)
    want = torch.tensor([[max(float(img[i, q] @ txt[j]) for q in range(4)) for j in range(5)] for i in range(3)])
    torch.testing.assert_close(similarity(img, txt), want.to(img.dtype))
    from vlnb.train.loss import clip_logits, clip_loss

    torch.testing.assert_close(clip_logits(img, txt, math.log(10.0)), 10 * want, rtol=1e-5, atol=1e-5)
    # the training loss of multi-query images is the 2-D loss of their max-over-queries similarities
    pair_img, pair_txt = img, txt[:3]
    s = torch.einsum("nqd,md->nqm", pair_img, pair_txt).amax(dim=1)
    labels = torch.arange(3)
    ref = (F.cross_entropy(5 * s, labels) + F.cross_entropy(5 * s.T, labels)) / 2
    torch.testing.assert_close(clip_loss(pair_img, pair_txt, math.log(5.0)), ref)


def test_qformer_train_step_lowers_the_loss_on_a_separable_case():
    # 8 images whose patch maps each carry one distinct one-hot "concept" at a random position; captions = concept
    g = torch.Generator().manual_seed(0)
    n, p, d = 16, 9, 16
    patches = 0.1 * torch.randn(n, p, d, generator=g)
    for i in range(n):
        patches[i, int(torch.randint(p, (1,), generator=g)), i] += 3.0
    texts = [f"concept {i}" for i in range(n)]
    text = torch.eye(n, 20)
    man = pd.DataFrame({"image_id": [str(i) for i in range(n)], "captions": [[t] for t in texts]})
    feats = FrozenFeatures(patches, text, man, texts, np.arange(n))
    cfg = {"epochs": 30, "batch_size": n, "lr": 3e-3, "warmup_steps": 0, "weight_decay": 0.0, "device": "cpu"}
    m, hist = H.train_qformer(feats, seed=0, config=cfg, embed_dim=16, width=16, layers=1, n_queries=2)
    loss = hist.epochs_df["train_loss"].to_numpy()
    assert loss[-1] < 0.5 * loss[0], loss
    i, t = head_embeddings(m, feats)
    assert i.shape == (n, 2, 16)
    assert (similarity(i, t).argmax(dim=0) == torch.arange(n)).float().mean() >= 0.75


def test_verdict_reads_the_interval_of_a_difference():
    from vlnb.heads.report import verdict

    assert verdict(-5.0, -0.1) == "below" and verdict(0.2, 3.0) == "above"
    assert verdict(-1.0, 1.0) == "not distinguishable from" and verdict(0.0, 2.0) == "not distinguishable from"
