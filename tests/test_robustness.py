"""Robustness: perturbations (shape, dtype, range, determinism, severity ordering, identity at 0, reference
agreement with ``imagecorruptions``, a test dependency), on-object occlusion, the sweep's tidy table and
summaries, the chapter end to end (slow)."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlnb.robustness import perturbations as P
from vlnb.robustness.perturbations import CORRUPTIONS, ObjectMasks, Occlusion, corruption

torch.set_num_threads(1)

NEEDS_MASKS = {"occlusion_object"}


@pytest.fixture(scope="module")
def world():
    from vlnb.data import build_manifest

    df, _ = build_manifest("world", n_train=0, n_test=12, image_size=64, seed=3)
    return df


@pytest.fixture(scope="module")
def world_pre():
    from vlnb.models.transforms import HALF, ImagePreprocess

    return ImagePreprocess(64, crop=64, mean=HALF, std=HALF)


@pytest.fixture(scope="module")
def batch(world, world_pre):
    from vlnb.data import open_rgb

    x = world_pre.to_unit([open_rgb(s) for s in world["image"][:6]])
    return x, list(world["image_id"][:6])


@pytest.fixture(scope="module")
def masks(world, world_pre):
    return ObjectMasks(world, world_pre)


def _make(name, severity, masks, seed=0):
    return corruption(name, severity, seed=seed, masks=masks if name in NEEDS_MASKS else None)


# ---------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_range_and_no_mutation(name, batch, masks):
    x, ids = batch
    before = x.clone()
    for s in (1, 3, 5):
        y = _make(name, s, masks)(x, ids=ids)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.isfinite(y).all()
    assert torch.equal(x, before), "the input batch was modified in place"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_identity_at_severity_zero(name, batch, masks):
    x, ids = batch
    p = _make(name, 0, masks)
    y = p(x, ids=ids)
    assert torch.equal(y, x) and y is not x
    assert p.key != _make(name, 1, masks).key


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_and_batch_independent(name, batch, masks):
    x, ids = batch
    p = _make(name, 3, masks, seed=7)
    a, b = p(x, ids=ids), _make(name, 3, masks, seed=7)(x, ids=ids)
    assert torch.equal(a, b)
    # the same image gets the same output in another batch (per-image seeds from the ids)
    sub = p(x[2:5].flip(0), ids=ids[2:5][::-1]).flip(0)
    assert torch.allclose(sub, a[2:5], atol=1e-6)
    if name in P.RANDOM_FAMILIES:
        c = _make(name, 3, masks, seed=8)(x, ids=ids)
        assert not torch.equal(a, c), "a different seed should change a random corruption"
        assert _make(name, 3, masks, seed=7).key != _make(name, 3, masks, seed=8).key
    else:
        assert _make(name, 3, masks, seed=7).key == _make(name, 3, masks, seed=8).key


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_distance_from_clean_grows_with_severity(name, batch, masks):
    x, ids = batch
    d = [float((_make(name, s, masks)(x, ids=ids) - x).abs().mean()) for s in range(6)]
    assert d[0] == 0.0
    if name == "saturate":  # ImageNet-C: severities 1-2 desaturate (x0.3, x0.1), 3-5 oversaturate (x2, x5, x20)
        d = [d[0], d[1], d[2]], [d[0], d[3], d[4], d[5]]
    else:
        d = [d]
    for part in d:
        assert all(b > a for a, b in itertools.pairwise(part)), f"{name}: mean |y - x| by severity {np.round(part, 4)}"


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption("fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corruption("contrast", 6)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        corruption("contrast", 1)(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="float"):
        corruption("contrast", 1)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="masks"):
        corruption("occlusion_object", 2)
    with pytest.raises(ValueError, match="ids"):
        corruption("shot_noise", 1)(torch.rand(2, 3, 8, 8), ids=["a"])


def test_half_precision_and_device_agnostic_code_path():
    x = torch.rand(2, 3, 32, 32)
    for name in ("gaussian_noise", "defocus_blur", "jpeg_compression", "pixelate"):
        y = corruption(name, 2)(x.to(torch.bfloat16))
        assert y.dtype == torch.bfloat16 and y.shape == x.shape


# ---------------------------------------------------------------------------------------------- families
def test_parametric_seed_study_families(batch):
    x, ids = batch
    for std in (0.01, 0.05, 0.1):
        y = P.GaussianNoise(std)(x, ids=ids)
        inner = (x > 0.3) & (x < 0.7)  # away from clipping, the noise has the asked std
        assert abs(float((y - x)[inner].std()) - std) < 0.15 * std
    assert torch.equal(P.GaussianBlur(kernel_size=1)(x), x)
    k3, k5 = P.GaussianBlur(kernel_size=3)(x), P.GaussianBlur(kernel_size=5)(x)
    assert float((k5 - x).abs().mean()) > float((k3 - x).abs().mean()) > 0
    # blur keeps a constant image constant and (away from clipping) the mean
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(P.GaussianBlur(sigma=2.0)(flat), flat, atol=1e-6)
    o = Occlusion(32, mode="centre")(torch.ones(1, 3, 64, 64))
    assert float((o == 0.5).float().mean()) == pytest.approx(0.25)
    assert torch.equal(o[0, :, 16:48, 16:48], torch.full((3, 32, 32), 0.5))


def test_brightness_contrast_jpeg_pixelate_semantics():
    x = torch.rand(2, 3, 32, 32)
    v = x.amax(1)
    y = corruption("brightness", 2)(x)
    assert torch.allclose(y.amax(1), (v + 0.2).clamp(max=1), atol=1e-6)  # HSV value + 0.2
    c = corruption("contrast", 1)(x)
    assert torch.allclose(c.mean((2, 3)), x.mean((2, 3)), atol=1e-5)
    assert torch.allclose(c - c.mean((2, 3), keepdim=True), 0.4 * (x - x.mean((2, 3), keepdim=True)), atol=1e-5)
    px = corruption("pixelate", 5)(x)  # factor 0.25: 8x8 blocks of 4x4 equal pixels
    assert torch.equal(px[..., ::4, ::4].repeat_interleave(4, -1).repeat_interleave(4, -2), px)
    j = corruption("jpeg_compression", 1)(x)
    assert torch.equal(j, torch.round(j * 255) / 255)  # decoded 8-bit levels
    ql, qc = P.jpeg_quant_tables(50)
    assert ql[0, 0] == 16 and qc[0, 0] == 17  # quality 50 = the Annex K tables


def test_jpeg_close_to_pillow():
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (12, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 96x96 blocks
    img = np.asarray(Image.fromarray(base).resize((96, 96), Image.BILINEAR))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    for q in (25, 10):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q)
        ref = np.asarray(Image.open(buf)).astype(np.float32) / 255
        ours = P.JPEG(q)(x)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).mean() * 255 < 1.5, f"quality {q}: mean error {np.abs(ours - ref).mean() * 255:.2f}"


def test_pixelate_matches_pillow_box_nearest():
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3)).astype(np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    for c in (0.6, 0.3):
        im = Image.fromarray(img)
        ref = np.asarray(im.resize((int(70 * c), int(50 * c)), Image.BOX).resize((70, 50), Image.NEAREST)) / 255
        ours = P.Pixelate(c)(x)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() <= 1.01 / 255  # Pillow rounds its 8-bit intermediate


def test_defocus_kernel_and_scaling():
    k = P.defocus_kernel(3.0, 0.1)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-5) and torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    # a fractional radius is anti-aliased (it blurs), not snapped to the centre pixel
    assert float(P.defocus_kernel(0.86, 0.5).max()) < 0.9
    x = torch.rand(1, 3, 64, 64)
    small = corruption("defocus_blur", 1, reference_size=224)(x)
    raw = corruption("defocus_blur", 1, reference_size=None)(x)
    assert float((raw - x).abs().mean()) > float((small - x).abs().mean()) > 0


# ---------------------------------------------------------------------------------------------- occlusion
def test_object_occlusion_lands_inside_the_object(world, world_pre, batch, masks):
    x, ids = batch
    for sev in (1, 3, 5):
        p = corruption("occlusion_object", sev, masks=masks)
        y = p(x, ids=ids)
        m = masks(ids, x.shape[-2:])
        for b, (top, left, h, w) in enumerate(p.last_boxes):
            assert m[b].any()
            cy, cx = top + h // 2, left + w // 2
            assert m[b, cy, cx], f"image {ids[b]}: patch centre ({cy}, {cx}) is not on the object"
            patch = m[b, top : top + h, left : left + w]
            assert float(patch.float().mean()) > 0.5 or int(patch.sum()) == int(m[b].sum())
            assert torch.all(y[b, :, top : top + h, left : left + w] == 0.5)
    # the masks follow the pixels: world objects have one flat colour, so the masked pixels share it
    for b, iid in enumerate(ids):
        pix = x[b][:, masks.one(iid)]
        assert float(pix.std(dim=1).max()) < 0.08


def test_object_masks_follow_resize_and_crop(world):
    from vlnb.data import get_annotations
    from vlnb.models.transforms import ImagePreprocess

    pre = ImagePreprocess(128, crop=96)  # upsample 64 -> 128, centre crop 96
    iid = world["image_id"][0]
    obj = max(get_annotations(world, iid), key=lambda o: o.area)
    m = pre.resize_mask(obj.mask)
    assert m.shape == (96, 96) and m.dtype == bool
    assert abs(int(m.sum()) - int(obj.mask.sum()) * 4) <= 4 * obj.mask.sum() ** 0.5 + 64 or int(m.sum()) < 4 * obj.mask.sum()


def test_object_occlusion_falls_back_to_centre_without_objects(world, world_pre):
    class NoMasks:
        key = "none"

        def __call__(self, ids, size):
            return torch.zeros(len(ids), *size, dtype=torch.bool)

    p = Occlusion(0.25, mode="object", masks=NoMasks())
    p(torch.rand(2, 3, 64, 64), ids=["a", "b"])
    assert p.last_boxes == [(24, 24, 16, 16)] * 2


def test_feature_cache_key_includes_perturbation(tmp_path, world):
    from vlnb.eval import image_features
    from vlnb.models.scratch import ScratchDualEncoder

    m = ScratchDualEncoder.create("tiny", captions=["a red circle"], seed=0, width=32, layers=1, text_width=32,
                                  text_layers=1, embed_dim=16)
    df = world.iloc[:4].reset_index(drop=True)
    df.attrs = dict(world.attrs)
    clean = image_features(m, df, cache_dir=tmp_path, progress=False)
    a = image_features(m, df, cache_dir=tmp_path, progress=False, perturbation=corruption("shot_noise", 5))
    b = image_features(m, df, cache_dir=tmp_path, progress=False, perturbation=corruption("shot_noise", 5, seed=1))
    again = image_features(m, df, cache_dir=tmp_path, progress=False, perturbation=corruption("shot_noise", 5))
    assert len({clean.key, a.key, b.key}) == 3 and again.key == a.key and again.from_cache
    assert not torch.allclose(clean.embeddings, a.embeddings)
    # per-image seeding: batch size does not change the perturbed features
    small = image_features(m, df, batch_size=1, cache_dir=tmp_path / "other", progress=False,
                           perturbation=corruption("shot_noise", 5))
    assert torch.allclose(small.embeddings, a.embeddings, atol=1e-5)


# ---------------------------------------------------------------------------------------------- reference
def _imagecorruptions():
    """The reference package: a test dependency (the ``test`` extra, with ``setuptools<81`` beside it for
    the ``pkg_resources`` its 1.1.2 release imports), so these comparisons run on every push, never skip."""
    try:
        import imagecorruptions
    except ImportError as e:
        pytest.fail(f"imagecorruptions is a test dependency ({e}): pip install -e '.[test]'")
    return imagecorruptions


@pytest.fixture(scope="module")
def photos():
    from vlnb.paths import shared_data_dir

    root = shared_data_dir() / "coco-mini" / "val2017"
    files = sorted(root.glob("*.jpg"))[:2] if root.is_dir() else []
    if not files:
        rng = np.random.default_rng(0)
        return [np.asarray(Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).resize((224, 224)))] * 2
    return [np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC)) for f in files]


@pytest.mark.parametrize("name", ["defocus_blur", "brightness", "contrast", "pixelate", "saturate",
                                  "jpeg_compression"])
def test_matches_imagecorruptions_deterministic(name, photos):
    ic = _imagecorruptions()
    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255
    for s in (1, 3, 5):
        ref = np.stack([ic.corrupt(im, severity=s, corruption_name=name) for im in photos]).astype(np.float32) / 255
        ours = corruption(name, s)(x).permute(0, 2, 3, 1).numpy()
        d = np.abs(ours - ref) * 255  # in grey levels; the reference truncates to uint8
        if name == "jpeg_compression":  # integer vs float DCT: rare coefficient flips, about one level on average
            assert d.mean() < 1.0 and np.quantile(d, 0.99) < 12, (s, d.mean(), np.quantile(d, 0.99))
        else:
            assert d.max() <= 1.0 + 1e-3, (name, s, d.max())


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_noise_statistics_match_imagecorruptions(name, photos):
    ic = _imagecorruptions()
    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255
    xn = x.permute(0, 2, 3, 1).numpy()
    for s in (1, 5):
        np.random.seed(0)
        ref = np.stack([ic.corrupt(im, severity=s, corruption_name=name) for im in photos]).astype(np.float32) / 255
        ours = corruption(name, s)(x).permute(0, 2, 3, 1).numpy()
        rms = lambda a: float(np.sqrt(((a - xn) ** 2).mean()))
        assert rms(ours) == pytest.approx(rms(ref), rel=0.03), (name, s)
        assert float(ours.mean()) == pytest.approx(float(ref.mean()), abs=0.004)


def test_motion_blur_matches_imagecorruptions_for_the_same_angle(photos):
    ic = _imagecorruptions()
    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255
    for s in (1, 5):
        p = corruption("motion_blur", s, seed=3)
        angles = p.angles(P._generators(P.image_seeds(3, "motion_blur", None, len(photos)), "cpu"))
        radius, sigma = P.SEVERITY_CONSTANTS["motion_blur"][s - 1]
        ref = np.stack([np.clip(ic.corruptions._motion_blur(im.astype(np.float64), radius, sigma, a), 0, 255)
                        for im, a in zip(photos, angles)]) / 255
        assert np.abs(p(x).permute(0, 2, 3, 1).numpy() - ref).max() < 1e-3


def test_gaussian_blur_matches_scipy(photos):
    from scipy.ndimage import gaussian_filter

    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255
    for s in (1, 5):
        sigma = P.SEVERITY_CONSTANTS["gaussian_blur"][s - 1]
        ref = np.stack([gaussian_filter(im / 255.0, sigma=(sigma, sigma, 0), mode="nearest") for im in photos])
        assert np.abs(corruption("gaussian_blur", s)(x).permute(0, 2, 3, 1).numpy() - ref).max() < 1e-3


# ---------------------------------------------------------------------------------------------- sweep
@pytest.fixture(scope="module")
def tiny_scratch(world):
    from vlnb.models.scratch import ScratchDualEncoder

    caps = [c for cs in world["captions"] for c in cs]
    kw = {"width": 32, "layers": 1, "heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2, "embed_dim": 16}
    return (ScratchDualEncoder.create("tiny", captions=caps, seed=0, name="a", **kw),
            ScratchDualEncoder.create("tiny", captions=caps, seed=1, name="b", **kw))


def test_sweep_returns_the_tidy_table(tmp_path, world, tiny_scratch):
    from vlnb.robustness import RESULT_COLUMNS, run_sweep, summarize, world_task
    from vlnb.robustness.sweep import degradation_table, headline_metrics, monotonicity

    task = world_task(world, n_images=8)
    models = dict(zip("ab", tiny_scratch))
    cors, sevs = ["contrast", "shot_noise", "occlusion_object"], [1, 3]
    timings = []
    res = run_sweep(models, [task], cors, sevs, ks=(1, 5), cache_dir=tmp_path, progress=False, timings=timings)
    assert list(res.columns) == RESULT_COLUMNS
    metrics = {("zeroshot:shape", "top1"), ("zeroshot:colour", "top1")} | {
        ("retrieval", f"{d}_R@{k}") for d in ("i2t", "t2i") for k in (1, 5)}
    assert set(map(tuple, res[["task", "metric"]].drop_duplicates().to_numpy())) == metrics
    assert len(res) == len(models) * len(metrics) * len(cors) * (len(sevs) + 1)
    assert not res.duplicated(["model", "dataset", "task", "metric", "corruption", "severity"]).any()
    assert res["value"].between(0, 100).all() and (res["n_images"] == 8).all()
    s0 = res[res["severity"] == 0]
    assert (s0["value"] == s0["clean"]).all()
    cor = res[(res["severity"] > 0) & (res["clean"] > 0)]
    assert np.allclose(cor["relative"], cor["value"] / cor["clean"])
    # the one exact chance level (vlnb.eval.chance) of the 8 evaluated images, equal in every cell
    from vlnb.data.manifest import texts_and_targets
    from vlnb.eval.chance import recall_chance, zeroshot_chance
    from vlnb.robustness.sweep import chance_levels, chance_table

    exact = recall_chance(texts_and_targets(task.manifest)[1], 8, ks=(1, 5))
    ret = res[res["task"] == "retrieval"]
    assert (ret["chance"] == ret["metric"].map(exact)).all()
    shape = task.label_sets["shape"]
    zs = 100 * zeroshot_chance(shape.targets, len(shape.classes))["top1"]
    assert (res.loc[res["task"] == "zeroshot:shape", "chance"] == zs).all()
    assert chance_levels([task]).set_index("task").loc["zeroshot:shape", "chance_top1"] == zs
    assert len(chance_table(res)) == len(models) * len(metrics) and chance_table(res)["chance"].between(0, 100).all()
    assert len(timings) == len(models) * (1 + len(cors) * len(sevs))
    # text once, images per cell: a rerun reads every cell from the feature cache
    from vlnb.eval import image_features

    p = corruption("shot_noise", 3)
    assert image_features(models["a"], task.manifest, cache_dir=tmp_path, perturbation=p, progress=False).from_cache
    again = run_sweep(models, [task], cors, sevs, ks=(1, 5), cache_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again, res)
    # summaries
    summ = summarize(res, baseline="b")
    b = summ[summ["model"] == "b"]
    assert np.allclose(b["mCE"].dropna(), 1.0) and b["mCE"].notna().any()
    assert set(summ["model"]) == {"a", "b"}
    with pytest.raises(KeyError, match="baseline"):
        summarize(res, baseline="nope")
    head = headline_metrics(res)
    assert ("retrieval", "t2i_R@5") in head and ("zeroshot:shape", "top1") in head
    deg = degradation_table(res, head)
    assert (deg["severity"] == 3).all() and np.allclose(deg["drop"], deg["clean"] - deg["worst"])
    assert set(monotonicity(res)["monotone"].map(type)) == {bool}


def test_sweep_errors_are_named(world, tiny_scratch):
    from vlnb.robustness import run_sweep, world_task

    task = world_task(world, n_images=4)
    with pytest.raises(ValueError, match="unknown corruption"):
        run_sweep({"a": tiny_scratch[0]}, [task], ["fog"], progress=False)
    with pytest.raises(ValueError, match="severities"):
        run_sweep({"a": tiny_scratch[0]}, [task], ["contrast"], [7], progress=False)
    with pytest.raises(KeyError, match="no tasks"):
        run_sweep({"a": tiny_scratch[0]}, {"b": [task]}, ["contrast"], progress=False)


def test_sweep_cross_encoder_scores_every_pair(tmp_path, tiny_vilt_dir):
    """A cross encoder (tiny ViLT) goes through the pairwise path: zero-shot and retrieval from ITM scores."""
    from vlnb.data import build_manifest
    from vlnb.models import load_model
    from vlnb.robustness import caption_task, run_sweep

    coco, _ = build_manifest("coco", split="val2017")
    model = load_model(str(tiny_vilt_dir))
    res = run_sweep({"vilt": model}, [caption_task(coco, n_images=6, dataset="coco-mini")], ["pixelate"], [5],
                    ks=(1,), cache_dir=tmp_path, cross_max_images=3, batch_size=16, progress=False)
    assert set(res["task"]) == {"retrieval", "zeroshot:category"}
    assert (res["n_images"] == 3).all() and res["value"].between(0, 100).all()
    assert len(res) == 3 * 2  # (category top1, i2t R@1, t2i R@1) x severities 0 and 5


def test_per_image_hits_reproduce_every_metric(tmp_path, world, tiny_scratch):
    """The hits a sweep records per image give back every value of its table (100 * sum(hit) / sum(n))."""
    from vlnb.robustness import HITS_COLUMNS, run_sweep, world_task

    task = world_task(world, n_images=8)
    hits = []
    res = run_sweep({"a": tiny_scratch[0]}, [task], ["contrast", "occlusion_object"], [1, 5], ks=(1, 5),
                    cache_dir=tmp_path, progress=False, hits=hits)
    h = pd.concat(hits, ignore_index=True)
    assert list(h.columns) == HITS_COLUMNS and set(h["image_id"]) == set(task.manifest["image_id"])
    assert not h.duplicated(["model", "dataset", "task", "metric", "corruption", "severity", "image_id"]).any()
    cell = np.where(res["severity"] == 0, "clean", res["corruption"])
    for r, c in zip(res.itertuples(), cell):
        g = h[(h["task"] == r.task) & (h["metric"] == r.metric) & (h["corruption"] == c) & (h["severity"] == r.severity)]
        assert len(g) == 8 and 100 * g["hit"].sum() / g["n"].sum() == pytest.approx(r.value, abs=1e-9)
    t2i = h[(h["metric"] == "t2i_R@5") & (h["corruption"] == "clean")]
    assert (t2i["n"] == task.manifest["captions"].map(len).to_numpy()).all()  # weight: the image's captions
    # the page's CSV: one row per image and metric, one column per cell, the same numbers
    from vlnb.robustness.report import hits_wide

    wide = hits_wide(h).set_index(["task", "metric"])
    assert list(wide.columns[:5]) == ["model", "dataset", "image_id", "n", "clean"]
    assert len(wide) == 8 * len(res[["task", "metric"]].drop_duplicates())
    w = wide.loc[("retrieval", "t2i_R@5")]
    sel = (res["metric"] == "t2i_R@5") & (res["corruption"] == "contrast") & (res["severity"] == 5)
    assert 100 * w["contrast@5"].sum() / w["n"].sum() == pytest.approx(res.loc[sel, "value"].item())


def test_parallel_workers_count_their_time_once():
    """Worker threads of a parallel sweep record nothing themselves; the waiting thread's block counts once."""
    import threading
    import time

    from vlnb import timing

    before = timing.totals()["metrics"]

    def work():
        with timing.untimed(), timing.timed("metrics"):
            time.sleep(0.05)

    with timing.timed("metrics"):
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert 0.05 <= timing.totals()["metrics"] - before < 0.14  # once, not three times


def test_zeroshot_and_retrieval_hits_by_hand():
    from vlnb.eval import classification_metrics
    from vlnb.eval.retrieval import retrieval_ranks
    from vlnb.robustness.sweep import retrieval_hits, zeroshot_hits

    # 3 images x 3 classes; image 1 ties its label with another class (a miss: ties count against the model),
    # image 2 has no label (weight 0)
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.1]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    hit, n = zeroshot_hits(scores, targets)
    assert hit.tolist() == [1.0, 0.0, 0.0] and n.tolist() == [1.0, 1.0, 0.0]
    assert 100 * hit.sum() / n.sum() == 100 * classification_metrics(scores[:2], targets[:2], ks=(1,))["top1"]
    # 2 images; texts 0, 1 belong to image 0, text 2 to image 1
    sim = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])
    t2i = np.array([0, 0, 1])
    h = retrieval_hits(retrieval_ranks(sim, t2i), t2i, 2, ks=(1,))
    assert h["t2i_R@1"][0].tolist() == [1.0, 0.0] and h["t2i_R@1"][1].tolist() == [2.0, 1.0]  # text 1 -> image 1
    assert h["i2t_R@1"][0].tolist() == [1.0, 0.0] and h["i2t_R@1"][1].tolist() == [1.0, 1.0]  # image 1 -> text 1


def _hits(rows):
    """A hits table from ``(model, image, n, clean hits, worst hits)`` rows (data set "d", one metric, severity 5)."""
    out = []
    for model, image, n, h0, h5 in rows:
        for c, s, h in (("clean", 0, h0), ("blur", 5, h5)):
            out.append({"model": model, "dataset": "d", "task": "retrieval", "metric": "t2i_R@5", "corruption": c,
                        "severity": s, "image_id": image, "hit": float(h), "n": float(n)})
    return pd.DataFrame(out)


def _top(hits):
    from vlnb.robustness.intervals import HitTable

    t = HitTable(hits)
    rows = [{"model": m, "dataset": "d", "task": "retrieval", "metric": "t2i_R@5", "corruption": "blur", "severity": 5,
             "clean": t.value((m, "d", "retrieval", "t2i_R@5"), "clean"),
             "worst": t.value((m, "d", "retrieval", "t2i_R@5"), "blur@5"), "chance": 10.0}
            for m in dict.fromkeys(hits["model"])]
    top = pd.DataFrame(rows)
    return top.assign(drop=top["clean"] - top["worst"], informative=top["clean"] >= 2 * top["chance"])


def test_paired_drop_interval_by_hand():
    """Two images: A (1 caption) loses its hit, B (3 captions) keeps all three: the drop is 100 * 1 / 4 = 25
    points. A bootstrap draw of two images is AA (drop 100, probability 1/4), AB or BA (25, 1/2) or BB (0, 1/4),
    so the 40 % interval (quantiles 0.3 and 0.7) is [25, 25] and the 95 % interval [0, 100]."""
    from vlnb.robustness.intervals import drop_intervals

    hits = _hits([("m", "A", 1, 1, 0), ("m", "B", 3, 3, 3)])
    top = _top(hits)
    assert top["drop"].tolist() == [25.0]
    narrow = drop_intervals(hits, top, n_boot=4000, level=0.4, seed=1)
    assert (narrow["drop_lo"].item(), narrow["drop_hi"].item()) == (25.0, 25.0)
    wide = drop_intervals(hits, top, n_boot=4000, level=0.95, seed=1)
    assert (wide["drop_lo"].item(), wide["drop_hi"].item()) == (0.0, 100.0)
    # the same images clean and corrupted: a paired interval of no change has no width at all
    same = _hits([("m", "A", 1, 1, 1), ("m", "B", 3, 0, 0), ("m", "C", 2, 1, 1)])
    z = drop_intervals(same, _top(same), n_boot=500)
    assert (z["drop"].item(), z["drop_lo"].item(), z["drop_hi"].item()) == (0.0, 0.0, 0.0)
    bad = top.assign(drop=top["drop"] + 1)  # hits of another table: refused, not silently mixed
    with pytest.raises(ValueError, match="the hits give a drop"):
        drop_intervals(hits, bad, n_boot=100)


def test_reference_comparison_pairs_the_two_models_on_the_same_draws():
    """Model m as above (drop 25: AA 100, AB 25, BB 0); the reference r keeps A and loses B's three captions
    (drop 75: AA 0, AB 75, BB 100). Paired, m - r is 100 (AA, 1/4), -50 (AB, 1/2) or -100 (BB, 1/4): the 40 %
    interval is [-50, -50] (m loses less), the 95 % one [-100, 100] (cannot be told apart)."""
    from vlnb.robustness.intervals import reference_comparison

    hits = _hits([("m", "A", 1, 1, 0), ("m", "B", 3, 3, 3), ("r", "A", 1, 1, 1), ("r", "B", 3, 3, 0)])
    top = _top(hits)
    narrow = reference_comparison(hits, top, "r", n_boot=4000, level=0.4, seed=1)
    assert set(narrow["corruption"]) == {"blur", "mean"} and set(narrow["model"]) == {"m"}
    row = narrow[narrow["corruption"] == "mean"].iloc[0]
    assert (row["drop"], row["reference_drop"], row["diff"]) == (25.0, 75.0, -50.0)
    # every caption was a hit when clean, so the share of the clean hits lost is the drop itself here
    assert (row["rel_drop"], row["reference_rel_drop"], row["rel_verdict"]) == (25.0, 75.0, "less")
    assert (row["diff_lo"], row["diff_hi"], row["verdict"]) == (-50.0, -50.0, "less")
    wide = reference_comparison(hits, top, "r", n_boot=4000, level=0.95, seed=1)
    row = wide[wide["corruption"] == "mean"].iloc[0]
    assert (row["diff_lo"], row["diff_hi"], row["verdict"]) == (-100.0, 100.0, "same")
    # under twice chance: listed, never compared
    low = reference_comparison(hits, top.assign(chance=60.0, informative=False), "r", n_boot=100)
    assert set(low["verdict"]) == {"at chance"} and not low["compared"].any()
    from vlnb.robustness.report import comparison_glue

    glue = comparison_glue(wide)
    assert "cannot be told apart from r" in glue["comparison_md"] and "nan" not in glue["comparison_md"]
    assert glue["comparison_desc"].startswith("of the 1 comparison(s)") and "1 cannot be told apart" in glue[
        "comparison_desc"]


def test_mce_interval_of_the_baseline_is_one(tmp_path, world, tiny_scratch):
    from vlnb.robustness import run_sweep, summarize, world_task
    from vlnb.robustness.intervals import mce_intervals

    hits = []
    res = run_sweep(dict(zip("ab", tiny_scratch)), [world_task(world, n_images=8)], ["contrast", "shot_noise"], [3, 5],
                    ks=(1, 5), cache_dir=tmp_path, progress=False, hits=hits)
    summ = mce_intervals(pd.concat(hits), summarize(res, baseline="b"), "b", n_boot=200)
    b = summ[(summ["model"] == "b") & summ["mCE"].notna()]
    assert len(b) and np.allclose(b[["mCE_lo", "mCE_hi"]], 1.0)
    a = summ[(summ["model"] == "a") & summ["mCE"].notna()]
    assert ((a["mCE_lo"] <= a["mCE"] + 1e-9) & (a["mCE"] <= a["mCE_hi"] + 1e-9)).all()


@pytest.fixture(scope="module")
def tiny_fusion(world):
    """A tiny dual encoder and the three fusion architectures over it (untrained: the plumbing is checked)."""
    from vlnb.models.fusion import FusionConfig, create_fusion, qformer_config
    from vlnb.models.scratch import ScratchDualEncoder

    caps = [c for cs in world["captions"] for c in cs]
    dual = ScratchDualEncoder.create("tiny", captions=caps, seed=0, image_size=16, patch_size=8, width=16, layers=1,
                                     heads=2, embed_dim=8, text_width=16, text_layers=1, text_heads=2, context_length=24,
                                     name="dual")
    tiny = {"width": 16, "layers": 1, "text_layers": 1, "heads": 2, "embed_dim": 8, "image_size": 16,
            "patch_size": 8, "context_length": 24}
    return {"dual": dual.eval(),
            "vilt": create_fusion(FusionConfig(arch="vilt", **tiny), tokenizer=dual.tokenizer, seed=0).eval(),
            "blip": create_fusion(FusionConfig(arch="blip", **tiny), tokenizer=dual.tokenizer, seed=0).eval(),
            "qformer": create_fusion(qformer_config(dual.config, width=16, layers=1, heads=2, embed_dim=8,
                                                    n_queries=2), tokenizer=dual.tokenizer, seed=0,
                                     backbone=dual.visual).eval()}


def test_sweep_reranks_like_chapter_4(tmp_path, world, tiny_fusion):
    """Fusion models in the sweep: ITC on all images; on the re-rank subset ITC for every dual encoder and ITC
    top-k -> ITM re-ranking (own ITM + ITC for BLIP-like and Q-Former, the first stage's ITC top-k by ITM alone for
    ViLT-like); clean values equal chapter 4's functions on the same images; two workers give the same table."""
    from vlnb.data.manifest import subset
    from vlnb.eval.compare import add_rerank, evaluate_retrieval
    from vlnb.robustness import run_sweep, world_task
    from vlnb.robustness.sweep import RERANK_TASK, fusion_models, plan_sweep, protocol_table

    task = world_task(world, n_images=10)
    kw = {"rerank_k": 4, "first_stage": "dual", "cross_max_images": 6, "ks": (1, 3)}
    plan = plan_sweep(tiny_fusion, [task], kw["rerank_k"], kw["first_stage"], kw["cross_max_images"])
    proto = protocol_table(plan, 4, "dual").set_index(["model", "dataset", "task"])["protocol"]
    assert proto[("vilt", "world[:6]", RERANK_TASK)] == "dual ITC top-4 → ITM rerank (ITM score alone)"
    assert proto[("blip", "world[:6]", RERANK_TASK)] == "ITC top-4 → own ITM rerank (ITM + ITC)"
    assert ("vilt", "world", "retrieval") not in proto and ("dual", "world[:6]", RERANK_TASK) not in proto
    assert fusion_models(tiny_fusion) == ["vilt", "blip", "qformer"]
    hits = []
    res = run_sweep(tiny_fusion, [task], ["contrast"], [5], cache_dir=tmp_path, progress=False, hits=hits, **kw)
    got = set(map(tuple, res[["model", "dataset", "task"]].drop_duplicates().to_numpy()))
    assert got == {(m, "world", t) for m in ("dual", "blip", "qformer") for t in ("retrieval", "zeroshot:shape",
                                                                                  "zeroshot:colour")} | \
        {(m, "world[:6]", "retrieval") for m in ("dual", "blip", "qformer")} | \
        {(m, "world[:6]", RERANK_TASK) for m in ("blip", "qformer", "vilt")}
    assert (res.loc[res["dataset"] == "world[:6]", "n_images"] == 6).all()
    assert (res.loc[res["dataset"] == "world", "n_images"] == 10).all()
    clean = res[res["severity"] == 0].drop_duplicates(["model", "dataset", "task", "metric"]).set_index(
        ["model", "dataset", "task", "metric"])["value"]
    sub = subset(world, slice(0, 6))
    first = evaluate_retrieval(tiny_fusion["dual"], sub, "s", "dual", ks=(1, 3), cache_dir=tmp_path, progress=False)
    assert clean[("dual", "world[:6]", "retrieval", "t2i_R@3")] == pytest.approx(first.results[0]["t2i_R@3"])
    vilt = add_rerank(first, tiny_fusion["vilt"], sub, "vilt", "x", 4, (1, 3), False, combine="itm")
    for m in ("i2t_R@1", "t2i_R@3"):
        assert clean[("vilt", "world[:6]", RERANK_TASK, m)] == pytest.approx(vilt[m])
    for name in ("blip", "qformer"):
        run = evaluate_retrieval(tiny_fusion[name], sub, "s", name, ks=(1, 3), cache_dir=tmp_path, progress=False,
                                 cross_encoder=tiny_fusion[name].cross_encoder(), rerank_k=4)
        assert clean[(name, "world[:6]", RERANK_TASK, "t2i_R@3")] == pytest.approx(run.results[1]["t2i_R@3"])
    h = pd.concat(hits)
    assert set(h.loc[h["task"] == RERANK_TASK, "dataset"]) == {"world[:6]"}
    again = run_sweep(tiny_fusion, [task], ["contrast"], [5], cache_dir=tmp_path, progress=False, workers=2, **kw)
    pd.testing.assert_frame_equal(again, res)
    with pytest.raises(ValueError, match="first_stage"):
        plan_sweep(tiny_fusion, [task], 4, "vilt", 6)
    with pytest.raises(ValueError, match="ks <= rerank_k"):
        run_sweep(tiny_fusion, [task], ["contrast"], [5], progress=False, **{**kw, "ks": (1, 5)})


def test_chapter_tasks_prompt_photos_like_chapter_4():
    from vlnb.config import resolve
    from vlnb.eval.templates import get_templates
    from vlnb.robustness.sweep import chapter_tasks

    cfg = resolve("05_robustness", n_images={"coco-mini": 4, "world": 4})
    tasks = chapter_tasks(cfg, ["scratch-world", "towers-coco"])
    coco = {t.dataset: t for ts in tasks.values() for t in ts}["coco-mini"].label_sets["category"]
    assert tuple(coco.templates) == get_templates(resolve("04_compare").coco_templates)
    assert coco.describe() == "80 classes, 7 prompts (openai_imagenet_7)"
    world = {t.dataset: t for ts in tasks.values() for t in ts}["world"].label_sets["shape"]
    assert world.describe().endswith("(chapter 4's world prompts)")


def test_params_validate_and_resolve_occlusion():
    from vlnb.config import ParameterError, resolve

    cfg = resolve("05_robustness", corruptions=["shot_noise", "occlusion"], occlusion="centre")
    assert cfg.resolved_corruptions() == ["shot_noise", "occlusion_centre"]
    offline = resolve("05_robustness")
    # the fusion models of chapter 2 on the world (their word tokenizers read no COCO), the dual encoders as before
    assert offline.datasets == {"scratch-world": ["world", "coco-mini"], "towers-coco": ["coco-mini"],
                                "blip-world": ["world"], "qformer-world": ["world"], "vilt-world": ["world"]}
    from vlnb.zoo import PROFILE_RECIPES

    assert set(offline.datasets) == set(PROFILE_RECIPES["offline"])  # every offline reference model is swept
    # chapter 4's protocol: ViLT-like re-ranks scratch-world's ITC top-k, at chapter 4's depth, with its prompts
    ch4 = resolve("04_compare")
    assert (offline.first_stage, offline.rerank_k, offline.coco_templates) == (ch4.first_stage, ch4.rerank_k,
                                                                              ch4.coco_templates)
    assert resolve("05_robustness", profile="full").coco_templates == resolve("04_compare", profile="full").coco_templates
    full = resolve("05_robustness", profile="full")
    assert full.severities == [1, 2, 3, 4, 5] and full.baseline == "CLIP ViT-B/32"
    with pytest.raises(ParameterError, match="corruptions"):
        resolve("05_robustness", corruptions=["fog"])
    with pytest.raises(ParameterError, match="severities"):
        resolve("05_robustness", severities=[0, 6])
    with pytest.raises(ParameterError, match="occlusion"):
        resolve("05_robustness", occlusion="everywhere")


def test_benchmark_script_runs(capsys):
    import importlib.util as iu

    from vlnb.paths import REPO_ROOT

    spec = iu.spec_from_file_location("bench_robustness_cost", REPO_ROOT / "benchmarks" / "robustness_cost.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = torch.get_num_threads()
    try:
        mod.main(["--model", "scratch", "--batch-size", "4", "--repeats", "1", "--corruptions", "contrast", "shot_noise"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert "contrast" in out and "shot_noise" in out and "perturbation share: median" in out


# ---------------------------------------------------------------------------------------------- chapter
NB = "05_robustness.ipynb"


def _nb():
    from vlnb.paths import REPO_ROOT

    return REPO_ROOT / "notebooks" / NB


@pytest.mark.slow
def test_chapter_offline_small(offline_book):
    """Chapter 5 as the session's offline book ran it (tests/conftest.py::offline_book), on the offline defaults:
    every default corruption at the default severities, features from a cold cache."""
    stem = NB.removesuffix(".ipynb")
    cfg = offline_book.config(stem)
    res = offline_book.results(stem, "robustness_results")
    assert set(res["corruption"]) == set(cfg.resolved_corruptions()) and "occlusion_object" in set(res["corruption"])
    assert set(res["severity"]) == {0, *cfg.severities}
    cells = {(m, d) for m, ds in cfg.datasets.items() for d in ds}
    assert {("scratch-world", "world"), ("scratch-world", "coco-mini"), ("towers-coco", "coco-mini")} <= cells
    # every model on its whole data sets, except a pure cross encoder (vilt-world), which only scores the re-rank
    # subset (chapter 4's protocol: the first cross_max_images images); every world model is on the subset too
    sub = f"world[:{cfg.cross_max_images}]"
    pairs = set(zip(res["model"], res["dataset"]))
    assert {p for p in pairs if p[1] != sub} == {c for c in cells if c[0] != "vilt-world"}
    assert {(m, sub) for m, d in cells if d == "world"} == {p for p in pairs if p[1] == sub}
    assert (res.loc[res["dataset"] == sub, "n_images"] == cfg.cross_max_images).all()
    # n_images {data set: n}: the first n test images of a data set in the mapping, all of one that is not
    for ds, n in cfg.n_images.items():
        assert (res.loc[res["dataset"] == ds, "n_images"] == n).all(), ds
    summ = offline_book.results(stem, "robustness_summary")
    assert (summ["baseline"] == cfg.baseline).all()
    base = summ[summ["model"] == cfg.baseline]
    assert len(base["mCE"].dropna()) and np.allclose(base["mCE"].dropna(), 1.0)  # the baseline's own mCE is 1
    for f in ("severity_curves", "relative_heatmap", *(f"examples_{ds}" for ds in ("world", "coco-mini"))):
        assert offline_book.figure(stem, f).is_file(), f


@pytest.mark.slow
def test_chapter_full_profile_with_tiny_checkpoints(tmp_path, monkeypatch, tiny_hub_models):
    from vlnb.paths import shared_data_dir
    from vlnb.runs import run_notebook

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    models = tiny_hub_models
    params = {"models": models, "datasets": ["coco"], "corruptions": ["jpeg_compression", "occlusion"],
              "severities": [3], "n_images": 6, "cross_max_images": 3, "batch_size": 8, "device": "cpu",
              "coco_root": str(shared_data_dir() / "coco-mini"), "coco_karpathy_split": ""}  # "": val2017, no Karpathy file
    run_notebook(_nb(), params, profile="full", out_dir=tmp_path / "run", progress=False)
    res = pd.read_csv(tmp_path / "run" / "results" / "robustness_results.csv")
    assert set(res["model"]) == set(models) and set(res["dataset"]) == {"coco"}
    assert set(res["corruption"]) == {"jpeg_compression", "occlusion_object"}
    assert (res.loc[res["model"] == "ViLT (COCO)", "n_images"] == 3).all()
    assert (res.loc[res["model"] != "ViLT (COCO)", "n_images"] == 6).all()
    summ = pd.read_csv(tmp_path / "run" / "results" / "robustness_summary.csv")
    assert (summ["baseline"] == "CLIP ViT-B/32").all()


def test_heatmap_names_the_severities_run_and_greys_out_rows_at_chance():
    import matplotlib.pyplot as plt
    import pandas as pd

    from vlnb.robustness.plots import _severity_label, relative_heatmap

    assert _severity_label([1, 3, 5]) == "1, 3 and 5" and _severity_label([1, 2, 3, 4, 5]) == "1–5"
    rows = [{"model": m, "dataset": "world", "task": "zero-shot", "metric": "top1", "corruption": c, "severity": s,
             "value": 50.0, "relative": 0.9 if m == "good" else 1.0}
            for m in ("good", "chance") for c in ("blur", "noise") for s in (0, 1, 3, 5)]
    results = pd.DataFrame(rows)
    informative = pd.DataFrame([{"model": "good", "dataset": "world", "task": "zero-shot", "metric": "top1",
                                 "informative": True},
                                {"model": "chance", "dataset": "world", "task": "zero-shot", "metric": "top1",
                                 "informative": False}])
    fig = relative_heatmap(results, metrics=[("zero-shot", "top1")], informative=informative)
    ax = fig.axes[0]
    assert "severities 1, 3 and 5" in ax.get_title()
    texts = [t.get_text() for t in ax.texts]
    assert "at chance: not informative" in texts and texts.count("0.90") == 2 and "1.00" not in texts
    plt.close(fig)


def test_summary_glue_never_prints_nan_and_leaves_out_models_at_chance():
    import math

    import pandas as pd

    from vlnb.robustness.report import summary_glue

    summary = pd.DataFrame([
        {"model": "base", "dataset": "d", "task": "t", "metric": "m", "mCE": 1.0, "relative_mCE": 1.0,
         "relative_robustness": 0.8},
        {"model": "a", "dataset": "d", "task": "t", "metric": "m", "mCE": 0.9, "relative_mCE": math.nan,
         "relative_robustness": 0.9},
        {"model": "b", "dataset": "d", "task": "t", "metric": "m", "mCE": 1.2, "relative_mCE": 0.1,
         "relative_robustness": 1.0}])
    informative = pd.DataFrame([{"model": m, "dataset": "d", "task": "t", "metric": "m", "informative": m != "b"}
                                for m in ("base", "a", "b")])
    _, glue = summary_glue(summary, [("t", "m")], "base", informative=informative)
    assert "nan" not in glue["mce_desc"] and "undefined" in glue["mce_desc"]
    assert "b on d" not in glue["mce_desc"] and "1 comparison(s) left out" in glue["mce_desc"]
