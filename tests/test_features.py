"""Feature cache: hits, invalidation (manifest, weights, perturbation), corruption recovery, bad images."""

import hashlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlnb.data import make_manifest, open_rgb
from vlnb.data.images import encode_png
from vlnb.eval import FeatureSet, image_features, text_features

SIZE = 8


class FakePreprocess:
    """Follows the ImagePreprocess contract: __call__ == normalize(to_unit(images))."""

    def __init__(self):
        self.config = {"size": SIZE, "mean": 0.5, "std": 0.25}

    def to_unit(self, images):
        arrs = [np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32) / 255.0 for im in images]
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()

    def normalize(self, x):
        return (x - 0.5) / 0.25

    def __call__(self, images):
        return self.normalize(self.to_unit(images))


class FakeDual(torch.nn.Module):
    kind, family, embed_dim = "dual", "scratch", 4

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = torch.nn.Linear(3 * SIZE * SIZE, self.embed_dim)
        self.preprocess = FakePreprocess()
        self.images_encoded = 0
        self.text_calls = 0

    device = torch.device("cpu")
    dtype = torch.float32

    def fingerprint(self):
        h = hashlib.sha256()
        for name, p in self.state_dict().items():
            h.update(name.encode() + p.detach().numpy().tobytes())
        return h.hexdigest()[:16]

    def encode_image(self, pixel_values):
        self.images_encoded += len(pixel_values)
        return F.normalize(self.proj(pixel_values.flatten(1)), dim=-1)

    def encode_texts(self, texts, batch_size=256, progress=False):
        self.text_calls += 1
        codes = [list(hashlib.sha256(t.encode()).digest()[: self.embed_dim]) for t in texts]
        return F.normalize(torch.tensor(codes, dtype=torch.float32), dim=-1)


class Invert:
    key = "invert"

    def __call__(self, x):
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0, "perturbations get [0, 1] pixels"
        return 1.0 - x


def _png(seed, h=12, w=10):
    return encode_png(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _manifest(tmp_path, n_good=5, first_seed=0):
    recs = [{"image_id": i, "image": _png(first_seed + i), "split": "test"} for i in range(n_good)]
    recs.insert(2, {"image_id": 100, "image": b"definitely not an image", "split": "test"})
    recs.append({"image_id": 101, "image": str(tmp_path / "missing.jpg"), "split": "test"})
    return make_manifest(recs, name="fake")


def _expected(model, manifest, ids, perturb=None):
    by_id = dict(zip(manifest["image_id"], manifest["image"]))
    x = model.preprocess.to_unit([open_rgb(by_id[i]) for i in ids])
    with torch.no_grad():
        return model.encode_image(model.preprocess.normalize(perturb(x) if perturb else x))


def test_bad_images_are_skipped_reported_and_rows_stay_aligned(tmp_path):
    model, df = FakeDual(), _manifest(tmp_path)
    fs = image_features(model, df, batch_size=2, cache_dir=tmp_path / "c", progress=False)
    assert isinstance(fs, FeatureSet) and not fs.from_cache
    assert fs.image_ids == [0, 1, 2, 3, 4]
    assert fs.embeddings.shape == (5, 4) and fs.embeddings.dtype == torch.float32
    assert list(fs.skipped.columns) == ["image_id", "path", "reason"]
    assert fs.skipped["image_id"].tolist() == [100, 101]
    assert "not an image" in fs.skipped["reason"].iloc[0] and "missing" in fs.skipped["reason"].iloc[1]
    torch.testing.assert_close(fs.embeddings, _expected(model, df, fs.image_ids))
    torch.testing.assert_close(fs.rows([3, 0]), fs.embeddings[[3, 0]])
    with pytest.raises(KeyError, match="100"):
        fs.rows([100])


def test_second_call_hits_the_cache(tmp_path):
    model, df = FakeDual(), _manifest(tmp_path)
    first = image_features(model, df, cache_dir=tmp_path, progress=False)
    n = model.images_encoded
    second = image_features(model, df, cache_dir=tmp_path, batch_size=3, progress=False)
    assert model.images_encoded == n == 5 and second.from_cache and second.key == first.key
    assert torch.equal(first.embeddings, second.embeddings) and second.image_ids == first.image_ids
    assert second.skipped.equals(first.skipped)


def test_changes_recompute(tmp_path):
    model, df = FakeDual(), _manifest(tmp_path)
    base = image_features(model, df, cache_dir=tmp_path, progress=False)

    other_df = _manifest(tmp_path, first_seed=1)  # different pixels, same ids
    changed = image_features(model, other_df, cache_dir=tmp_path, progress=False)
    assert not changed.from_cache and changed.key != base.key

    with torch.no_grad():
        model.proj.weight[0, 0] += 1e-3  # one weight changes -> fingerprint changes
    reweighted = image_features(model, df, cache_dir=tmp_path, progress=False)
    assert not reweighted.from_cache and reweighted.key not in (base.key, changed.key)

    perturbed = image_features(model, df, cache_dir=tmp_path, perturbation=Invert(), progress=False)
    assert not perturbed.from_cache and perturbed.key != reweighted.key
    torch.testing.assert_close(perturbed.embeddings, _expected(model, df, perturbed.image_ids, Invert()))
    assert not torch.allclose(perturbed.embeddings, reweighted.embeddings)
    again = image_features(model, df, cache_dir=tmp_path, perturbation=Invert(), progress=False)
    assert again.from_cache


@pytest.mark.parametrize("damage", ["truncate", "garbage", "checksum", "sidecar"])
def test_corrupt_cache_is_detected_and_recomputed(tmp_path, damage):
    model, df = FakeDual(), _manifest(tmp_path)
    good = image_features(model, df, cache_dir=tmp_path, progress=False)
    tfile, jfile = tmp_path / f"{good.key}.safetensors", tmp_path / f"{good.key}.json"
    if damage == "truncate":
        tfile.write_bytes(tfile.read_bytes()[:-7])
    elif damage == "garbage":
        tfile.write_bytes(b"\x00garbage" * 10)
    elif damage == "checksum":  # a valid file with the wrong numbers
        from safetensors.torch import save_file

        save_file({"embeddings": good.embeddings + 1}, str(tfile))
    else:
        jfile.write_text("{not json")
    n = model.images_encoded
    with pytest.warns(UserWarning, match="unusable"):
        fs = image_features(model, df, cache_dir=tmp_path, progress=False)
    assert not fs.from_cache and model.images_encoded == n + 5
    assert torch.equal(fs.embeddings, good.embeddings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: the next call is a clean hit
        assert image_features(model, df, cache_dir=tmp_path, progress=False).from_cache


def test_text_features_are_cached(tmp_path):
    model = FakeDual()
    texts = ["a photo of a cat.", "a dog", "a dog"]
    a = text_features(model, texts, cache_dir=tmp_path, progress=False)
    b = text_features(model, texts, cache_dir=tmp_path, progress=False)
    assert model.text_calls == 1 and torch.equal(a, b) and a.shape == (3, 4)
    torch.testing.assert_close(a, model.encode_texts(texts))
    text_features(model, texts[:2], cache_dir=tmp_path, progress=False)
    assert model.text_calls == 3  # (+1 for the direct call above) a different text list recomputes
    assert text_features(model, [], cache_dir=tmp_path, progress=False).shape == (0, 4)


def test_default_cache_dir_and_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "vc"))
    model, df = FakeDual(), _manifest(tmp_path, n_good=3)
    fs = image_features(model, df, batch_size=2, num_workers=2, progress=False)
    assert (tmp_path / "vc" / "features" / f"{fs.key}.safetensors").exists()
    torch.testing.assert_close(fs.embeddings, _expected(model, df, [0, 1, 2]))
    assert fs.skipped["image_id"].tolist() == [100, 101]


def test_all_bad_and_unsupported_perturbation(tmp_path):
    model = FakeDual()
    df = make_manifest([{"image_id": "x", "image": b"", "split": "test"}], name="bad")
    fs = image_features(model, df, cache_dir=tmp_path, progress=False)
    assert fs.embeddings.shape == (0, 4) and fs.image_ids == [] and len(fs.skipped) == 1
    assert image_features(model, df, cache_dir=tmp_path, progress=False).from_cache

    class Plain:
        config: dict = {}  # noqa: RUF012

        def __call__(self, images):
            return torch.zeros(len(images), 3, SIZE, SIZE)

    model.preprocess = Plain()
    with pytest.raises(TypeError, match="to_unit"):
        image_features(model, df, cache_dir=tmp_path, perturbation=Invert(), progress=False)
    with pytest.raises(TypeError, match="key"):
        image_features(model, df, cache_dir=tmp_path, perturbation=lambda x: x, progress=False)


def test_real_preprocess_moves_uint8_and_finishes_on_the_device_bit_for_bit(tmp_path):
    """ImagePreprocess: workers ship uint8 pixels; the device's division + normalisation give the same bits."""
    from vlnb.models.transforms import ImagePreprocess

    pre = ImagePreprocess(8, crop=8, resample="bicubic")
    imgs = [open_rgb(_png(s, 13, 9 + s)) for s in range(3)]
    u8 = pre.to_uint8(imgs)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 3, 8, 8)
    assert torch.equal(pre.unit_from_uint8(u8), pre.to_unit(imgs))
    with pytest.raises(TypeError, match="uint8"):
        pre.unit_from_uint8(u8.float())
    class Legacy:  # the same preprocessing without the uint8 split: workers ship finished float pixels
        config = {**pre.config, "legacy": True}  # noqa: RUF012 -- another cache key
        to_unit, normalize = pre.to_unit, pre.normalize

        def __call__(self, images):
            return pre(images)

    model, df = FakeDual(), _manifest(tmp_path)
    for perturb in (None, Invert()):
        got = {}
        for name, p in (("split", pre), ("legacy", Legacy())):
            model.preprocess = p
            got[name] = image_features(model, df, batch_size=2, cache_dir=tmp_path, perturbation=perturb,
                                       num_workers=1, progress=False)
        assert not got["split"].from_cache and not got["legacy"].from_cache
        assert torch.equal(got["split"].embeddings, got["legacy"].embeddings)
        assert got["split"].image_ids == [0, 1, 2, 3, 4] and got["split"].skipped["image_id"].tolist() == [100, 101]
        torch.testing.assert_close(got["split"].embeddings, _expected(model, df, [0, 1, 2, 3, 4], perturb))
