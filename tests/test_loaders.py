"""The data set loaders: COCO (real coco-mini, Karpathy selection, masks) and the HF-datasets loaders
(Flickr30k, Pokémon, CIFAR-100) through local save_to_disk / parquet stand-ins and the real partial
CIFAR-100 npz."""

from __future__ import annotations

import io
import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from vlnb.data import get_annotations, open_rgb
from vlnb.data.builder import build_manifest
from vlnb.data.coco import NOT_IN_ROOT, load_coco
from vlnb.paths import shared_data_dir

DATA = shared_data_dir()
COCO = DATA / "coco-mini"
CIFAR_NPZ = DATA / "cifar100-test-partial" / "cifar100_test_first916.npz"
needs_coco = pytest.mark.skipif(not COCO.is_dir(), reason="shared coco-mini data not available")
needs_cifar = pytest.mark.skipif(not CIFAR_NPZ.is_file(), reason="shared CIFAR-100 npz not available")


def raw_coco(split: str):
    """The official json files read directly (independently of pycocotools and of the loader)."""
    caps = json.loads((COCO / "annotations" / f"captions_{split}.json").read_text())
    inst = json.loads((COCO / "annotations" / f"instances_{split}.json").read_text())
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    captions, labels = defaultdict(list), defaultdict(set)
    for a in caps["annotations"]:
        captions[a["image_id"]].append(a["caption"].strip())
    for a in inst["annotations"]:
        labels[a["image_id"]].add(cats[a["category_id"]])
    return captions, labels


# ----------------------------------------------------------------------------- COCO


@pytest.fixture(scope="module")
def coco_val():
    return load_coco(COCO, "val2017")


@needs_coco
def test_coco_rows_are_the_captioned_images(coco_val):
    df, report = coco_val
    captions, labels = raw_coco("val2017")
    jpgs = {p.name for p in (COCO / "val2017").glob("*.jpg")}
    assert len(jpgs) == 159 and len(df) == len(captions) == 79 and len(report) == 0
    assert set(df["image_id"]) == set(captions)  # the 80 un-annotated JPEGs are ignored
    assert (
        all(isinstance(i, (int, np.integer)) for i in df["image_id"])
        and (df["image_id"] == df["coco_id"]).all()
    )
    assert (df["split"] == "val2017").all() and df.attrs["vlnb"]["split"] == "val2017"
    for row in df.itertuples():
        assert sorted(row.captions) == sorted(captions[row.image_id]) and len(row.captions) >= 5
        assert all(c == c.strip() and c for c in row.captions)
        assert row.labels == sorted(labels[row.image_id])
        assert (row.primary_category in row.labels) if row.n_instances else row.primary_category == ""
        assert set(row.supercategories) and row.n_instances >= len(row.labels)
    for row in df.head(5).itertuples():  # paths exist and width/height agree with the JPEG
        with Image.open(row.image) as im:
            assert im.size == (row.width, row.height)


@needs_coco
def test_coco_masks_boxes_and_categories(coco_val):
    df, _ = coco_val
    n_crowd = 0
    for row in df.itertuples():
        objs = get_annotations(df, row.image_id)
        assert len(objs) == row.n_instances
        assert sorted({o.category for o in objs}) == row.labels
        for o in objs:
            assert o.mask.shape == (row.height, row.width) and o.mask.dtype == bool and o.mask.any()
            x, y, w, h = o.bbox
            ys, xs = np.nonzero(o.mask)
            assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
            assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1
            assert o.attributes["supercategory"] in row.supercategories
            n_crowd += o.attributes["iscrowd"]
        if objs:
            assert max(objs, key=lambda o: o.area).category == row.primary_category
    assert n_crowd > 0  # RLE (crowd) masks were exercised too
    spec = df.attrs["vlnb"]["annotations"]
    assert spec["kind"] == "coco" and spec["instances"] == [
        str((COCO / "annotations" / "instances_val2017.json").resolve())
    ]
    with pytest.raises(KeyError, match="none of the COCO instance files"):
        get_annotations(df, 1)


@needs_coco
def test_coco_two_folders_and_builder():
    df, report = build_manifest("coco", root=COCO, split=("train2017", "val2017"), check_images=False)
    assert df["split"].value_counts().to_dict() == {"train2017": 80, "val2017": 79} and len(report) == 0
    assert df["image_id"].is_unique
    train_id = int(df.loc[df["split"] == "train2017", "image_id"].iloc[0])
    assert get_annotations(df, train_id)  # masks reachable for both folders


def write_karpathy(tmp_path, entries):
    images = [
        {
            "filepath": f"{folder}2014",
            "filename": f"COCO_{folder}2014_{cid:012d}.jpg",
            "cocoid": cid,
            "split": split,
            "sentences": [{"raw": "a caption."}],
        }
        for cid, folder, split in entries
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


@needs_coco
def test_coco_karpathy_selection(tmp_path):
    val_ids = sorted(raw_coco("val2017")[0])
    train_ids = sorted(raw_coco("train2017")[0])
    test_ids = [val_ids[3], train_ids[0], val_ids[0], train_ids[5]]
    absent = 999_999_999
    entries = [
        (test_ids[0], "val", "test"),
        (test_ids[1], "train", "test"),
        (val_ids[1], "val", "val"),
        (test_ids[2], "val", "test"),
        (absent, "val", "test"),
        (train_ids[1], "train", "restval"),
        (test_ids[3], "train", "test"),
    ]
    ks = write_karpathy(tmp_path, entries)

    df, report = load_coco(COCO, split=("train2017", "val2017"), karpathy_split=ks)
    assert list(df["image_id"]) == test_ids  # Karpathy file order, from both folders
    assert (df["split"] == "test").all()
    assert sorted(df["folder"]) == ["train2017", "train2017", "val2017", "val2017"]
    assert report.to_dict("records") == [
        {"image_id": absent, "path": f"val2014/COCO_val2014_{absent:012d}.jpg", "reason": NOT_IN_ROOT}
    ]

    # one folder only: the train images of the test split are reported, not crashed on
    df1, report1 = load_coco(COCO, split="val2017", karpathy_split=ks)
    assert list(df1["image_id"]) == [test_ids[0], test_ids[2]]
    assert sorted(report1["image_id"]) == sorted([absent, test_ids[1], test_ids[3]])

    # several subsets; split column follows Karpathy
    df2, _ = load_coco(
        COCO, split=("train2017", "val2017"), karpathy_split=ks, karpathy_subset=("val", "restval")
    )
    assert dict(zip(df2["image_id"], df2["split"])) == {val_ids[1]: "val", train_ids[1]: "restval"}
    with pytest.raises(ValueError, match="no image in subset"):
        load_coco(COCO, karpathy_split=ks, karpathy_subset="nonsense")


def mini_coco_copy(tmp_path, with_captions=True):
    """A writable copy of coco-mini/val2017 (images symlinked) to plant bad files in."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    kinds = ["instances"] + (["captions"] if with_captions else [])
    for k in kinds:
        shutil.copy(COCO / "annotations" / f"{k}_val2017.json", root / "annotations")
    (root / "val2017").mkdir()
    for p in (COCO / "val2017").glob("*.jpg"):
        (root / "val2017" / p.name).symlink_to(p)
    return root


@needs_coco
def test_coco_bad_and_missing_images_are_reported(tmp_path):
    root = mini_coco_copy(tmp_path)
    captions, _ = raw_coco("val2017")
    bad, gone = sorted(captions)[:2]
    target = root / "val2017" / f"{bad:012d}.jpg"
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "val2017" / f"{gone:012d}.jpg").unlink()
    df, report = load_coco(root, "val2017")
    assert len(df) == 77 and not {bad, gone} & set(df["image_id"])
    reasons = dict(zip(report["image_id"], report["reason"]))
    assert "truncated" in reasons[bad] and reasons[gone] == "missing file"
    unchecked, none = load_coco(root, "val2017", check_images=False)
    assert len(unchecked) == 79 and len(none) == 0


@needs_coco
def test_coco_without_captions_file(tmp_path):
    root = mini_coco_copy(tmp_path, with_captions=False)
    with pytest.raises(FileNotFoundError, match="captions_val2017.json"):
        load_coco(root, "val2017")
    df, _ = load_coco(root, "val2017", require_captions=False, check_images=False)
    assert len(df) == 79 and all(len(c) == 0 for c in df["captions"]) and all(len(l) for l in df["labels"])
    with pytest.raises(FileNotFoundError, match="COCO root folder not found"):
        load_coco(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- HF stand-ins

datasets = pytest.importorskip("datasets")
from vlnb.data import hub
from vlnb.data.hub import cifar100_class_names, load_cifar100, load_flickr30k, load_pokemon

CORRUPT = b"not an image"
STRINGS = (getattr(datasets, "List", None) or datasets.Sequence)(datasets.Value("string"))


def img_bytes(i: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12 + i, 10), (20 * i % 256, 100, 200 - 10 * i)).save(buf, format=fmt)
    return buf.getvalue()


def as_sources(ds, tmp_path, name):
    """The same data set as a save_to_disk folder, a parquet file and a parquet folder."""
    ds.save_to_disk(str(tmp_path / f"{name}_disk"))
    ds.to_parquet(str(tmp_path / f"{name}.parquet"))
    (tmp_path / f"{name}_pq" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / f"{name}_pq" / "data" / "train-00000-of-00001.parquet"))
    return [tmp_path / f"{name}_disk", tmp_path / f"{name}.parquet", tmp_path / f"{name}_pq"]


@pytest.fixture(scope="module")
def flickr_standin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flickr")
    splits = ["test", "train", "test", "val", "test", "test"]
    images = [{"bytes": img_bytes(i, "JPEG" if i % 2 else "PNG"), "path": None} for i in range(6)]
    images[4] = {"bytes": CORRUPT, "path": None}
    ds = datasets.Dataset.from_dict(
        {
            "image": images,
            "caption": [[f"  caption {k} of image {i}. " for k in range(5)] for i in range(6)],
            "sentids": [[str(5 * i + k) for k in range(5)] for i in range(6)],
            "split": splits,
            "img_id": [str(i) for i in range(6)],
            "filename": [f"{1000 + i}.jpg" for i in range(6)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "caption": STRINGS,
                "sentids": STRINGS,
                "split": datasets.Value("string"),
                "img_id": datasets.Value("string"),
                "filename": datasets.Value("string"),
            }
        ),
    )
    return images, as_sources(ds, tmp, "flickr")


def test_flickr30k_karpathy_test_from_every_local_form(flickr_standin):
    images, sources = flickr_standin
    for src in sources:
        df, report = load_flickr30k(src, split="test")
        assert list(df["image_id"]) == ["1000.jpg", "1002.jpg", "1005.jpg"], src
        assert (df["split"] == "test").all() and list(df["img_id"]) == ["0", "2", "5"]
        assert df["captions"][1] == [f"caption {k} of image 2." for k in range(5)]
        # the original encoded bytes, not a re-encoding (JPEG and PNG alike)
        assert [bytes(b) for b in df["image"]] == [images[i]["bytes"] for i in (0, 2, 5)]
        assert np.asarray(open_rgb(df["image"][0])).shape == (10, 12, 3)
        assert report.to_dict("records") == [
            {
                "image_id": "1004.jpg",
                "path": f"<{len(CORRUPT)} bytes>",
                "reason": "not an image (unrecognised format)",
            }
        ]
    df_val, _ = load_flickr30k(sources[0], split="val")
    assert list(df_val["image_id"]) == ["1003.jpg"]
    with pytest.raises(ValueError, match="no row has split == 'dev'"):
        load_flickr30k(sources[0], split="dev")
    unchecked, empty = load_flickr30k(sources[1], check_images=False)
    assert len(unchecked) == 4 and len(empty) == 0


def test_flickr30k_datasetdict_without_karpathy(tmp_path):
    dd = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict(
                {
                    "image": [{"bytes": img_bytes(i, "PNG"), "path": None} for i in range(n)],
                    "caption": [[f"{s} {i}"] for i in range(n)],
                },
                features=datasets.Features({"image": datasets.Image(), "caption": STRINGS}),
            )
            for s, n in (("test", 2), ("validation", 3))
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    df, _ = load_flickr30k(tmp_path / "dd", split="validation", karpathy=False)
    assert list(df["image_id"]) == [0, 1, 2] and df["captions"][2] == ["validation 2"]
    with pytest.raises(KeyError, match="not the requested split 'train'"):
        load_flickr30k(tmp_path / "dd", split="train", karpathy=False)


def test_pokemon_and_deterministic_test_split(tmp_path):
    from PIL import Image as PILImage

    pil = [PILImage.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(9)]
    ds = datasets.Dataset.from_dict(
        {
            "image": pil + [{"bytes": CORRUPT, "path": None}],
            "text": [f"a drawing of pokemon {i} " for i in range(10)],
        },
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    for src in as_sources(ds, tmp_path, "poke")[:2]:
        df, report = load_pokemon(src)
        assert len(df) == 9 and list(report["image_id"]) == [9]
        assert df["captions"][3] == ["a drawing of pokemon 3"] and (df["split"] == "train").all()
        assert tuple(np.asarray(open_rgb(df["image"][3]))[0, 0]) == (60, 0, 0)
    a, _ = load_pokemon(tmp_path / "poke.parquet", test_size=0.3, seed=1, check_images=False)
    b, _ = load_pokemon(tmp_path / "poke_disk", test_size=3, seed=1, check_images=False)
    c, _ = load_pokemon(tmp_path / "poke_disk", test_size=3, seed=2, check_images=False)
    assert (a["split"] == "test").sum() == 3 and list(a["split"]) == list(b["split"])
    assert list(b["split"]) != list(c["split"])
    with pytest.raises(ValueError, match="test_size"):
        load_pokemon(tmp_path / "poke_disk", test_size=10)


def test_cifar100_from_hf_standin(tmp_path):
    from vlnb.data.hub import CIFAR100_COARSE_NAMES, cifar100_fine_names

    # the hub's schema: ClassLabel names of all 100 / 20 classes (labels are mapped by index to the official names)
    fine_names, coarse_names = cifar100_fine_names(), list(CIFAR100_COARSE_NAMES)
    arrays = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(4)]
    ds = datasets.Dataset.from_dict(
        {
            "img": [Image.fromarray(a) for a in arrays],
            "fine_label": [2, 0, 1, 2],
            "coarse_label": [14, 4, 1, 14],
        },
        features=datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=fine_names),
                "coarse_label": datasets.ClassLabel(names=coarse_names),
            }
        ),
    )
    for src in as_sources(ds, tmp_path, "cifar")[:2]:
        df, report = load_cifar100(src)
        assert len(report) == 0 and list(df["image_id"]) == [0, 1, 2, 3]
        assert [l for (l,) in df["labels"]] == ["baby", "apple", "aquarium_fish", "baby"]
        assert list(df["coarse_label"]) == ["people", "fruit_and_vegetables", "fish", "people"]
        assert list(df["fine_label_id"]) == [2, 0, 1, 2] and all(len(c) == 0 for c in df["captions"])
        np.testing.assert_array_equal(np.asarray(open_rgb(df["image"][3])), arrays[3])
        assert cifar100_class_names(src) == fine_names


@needs_cifar
def test_cifar100_real_npz():
    df, report = load_cifar100(CIFAR_NPZ)
    with np.load(CIFAR_NPZ, allow_pickle=False) as z:
        names, fine, imgs, files = list(z["fine_label_names"]), z["fine_labels"], z["images"], z["filenames"]
        coarse = [z["coarse_label_names"][c] for c in z["coarse_labels"]]
    assert len(df) == 916 and len(report) == 0 and len(names) == 100
    assert [l for (l,) in df["labels"]] == [names[f] for f in fine]
    assert list(df["coarse_label"]) == coarse and list(df["filename"]) == list(files)
    counts = df["labels"].map(lambda l: l[0]).value_counts()
    assert len(counts) == 100 and counts.min() >= 4 and counts.max() <= 15
    for i in (0, 457, 915):  # lossless PNG bytes
        np.testing.assert_array_equal(np.asarray(open_rgb(df["image"][i])), imgs[i])
    assert cifar100_class_names(CIFAR_NPZ) == names and df.attrs["vlnb"]["class_names"] == names


def test_open_hf_dispatch(tmp_path, monkeypatch, flickr_standin):
    calls = []

    def fake_load_dataset(path, *a, **kw):
        calls.append((path, kw))
        if path == "parquet":
            return real(path, *a, **kw)
        raise ConnectionError("Couldn't reach the Hub")

    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(RuntimeError, match="could not load 'someone/flickr'.*local save_to_disk folder"):
        load_flickr30k("someone/flickr")
    assert calls == [("someone/flickr", {"split": "test"})]
    # a script-based hub repo (datasets >= 4 or < 4 refusing it) is read from its parquet-conversion branch;
    # nlphuji/flickr30k is known to be one, so it goes there directly (tests/test_full_profile.py)
    standin = datasets.load_from_disk(str(flickr_standin[1][0]))
    converted = []
    monkeypatch.setattr(hub, "_parquet_conversion", lambda repo, split: converted.append((repo, split)) or standin)
    for err in (RuntimeError("Dataset scripts are no longer supported, but found flickr30k.py"),
                ValueError("Please pass the argument `trust_remote_code=True` to load nlphuji/flickr30k")):
        def scripted(path, *a, err=err, **kw):
            calls.append((path, kw))
            raise err

        monkeypatch.setattr(datasets, "load_dataset", scripted)
        df, _ = load_flickr30k("someone/scripted-flickr")
        assert len(df) == 3 and converted[-1] == ("someone/scripted-flickr", "test")
    df, _ = load_flickr30k()
    assert len(df) == 3 and converted[-1] == ("nlphuji/flickr30k", "test")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(FileNotFoundError, match="local data set not found"):
        load_pokemon(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="neither a datasets save_to_disk folder nor a parquet"):
        load_pokemon(tmp_path)
    with pytest.raises(FileNotFoundError, match="CIFAR-100 npz file not found"):
        load_cifar100(tmp_path / "cifar.npz")
    # a hub-layout parquet folder: the files of the requested split are chosen
    for split, n in (("train", 3), ("test", 2)):
        ds = datasets.Dataset.from_dict(
            {"image": [{"bytes": img_bytes(i, "PNG"), "path": None} for i in range(n)], "text": [split] * n},
            features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
        )
        (tmp_path / "hub" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    df, _ = load_pokemon(tmp_path / "hub", split="test")
    assert len(df) == 2 and df["captions"][0] == ["test"]
    assert hub._parquet_files(tmp_path / "hub", "validation") == sorted(
        str(p) for p in (tmp_path / "hub" / "data").glob("*.parquet")
    )
