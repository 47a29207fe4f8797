"""The full profile, right the first time on Colab (issue 13), exercised without a GPU or network: one device
resolver and precision choice, the published numbers beside the right checkpoints, ViLT's real input grid,
CIFAR-100's hub labels, no offline-only data in full-profile paths, Flickr30k's parquet conversion, the COCO
Karpathy 5k test in both split formats and the 2014 layout, and a resumable, checked COCO download."""

from __future__ import annotations

import http.server
import json
import shutil
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vlnb.paths import REPO_ROOT, shared_data_dir

COCO_MINI = shared_data_dir() / "coco-mini"


def _fake_gpu(monkeypatch, capability=(8, 0), n=1):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


# ---------------------------------------------------------------------------------------------- device
def test_resolve_device(monkeypatch):
    from vlnb.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="device"):
            resolve_device(bad)
    _fake_gpu(monkeypatch, n=1)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device("cuda:1")
    assert resolve_device("meta") == "meta"


@pytest.mark.parametrize("capability, dtype, name", [((7, 5), torch.float16, "fp16-autocast"),
                                                     ((8, 0), torch.bfloat16, "bf16-autocast"),
                                                     ((9, 0), torch.bfloat16, "bf16-autocast")])
def test_autocast_dtype_follows_compute_capability(monkeypatch, capability, dtype, name):
    from vlnb.device import autocast_dtype
    from vlnb.eval.features import compute_precision

    assert autocast_dtype("cpu") is None
    _fake_gpu(monkeypatch, capability)
    assert autocast_dtype("cuda") is dtype

    class OnGPU(torch.nn.Module):  # what the feature extractor sees of a float32 model on a GPU
        device = torch.device("cuda")
        dtype = torch.float32

    assert compute_precision(OnGPU()) == name  # part of the feature-cache key: a T4 never reuses A100 bf16 features


def test_trainer_amp_dtype_auto(monkeypatch):
    import warnings

    from vlnb.train.distributed import DistInfo
    from vlnb.train.trainer import TrainConfig, _Trainer

    assert TrainConfig().amp_dtype == "auto"
    _fake_gpu(monkeypatch, (7, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler notices that there is no real GPU
        tr = _Trainer(torch.nn.Linear(2, 2), TrainConfig(), DistInfo(), torch.device("cuda"))
    assert tr.amp_dtype is torch.float16 and tr.use_amp


def test_every_chapter_takes_a_validated_device():
    from vlnb.config import ParameterError, resolve

    stems = ["01_data_prep", "02_clip_training", "03_blip2_heads", "04_compare", "05_robustness",
             "06_interpretability", "07_fairness"]
    for stem in stems:
        for profile in ("offline", "full"):
            assert resolve(stem, profile).device == "auto", stem
        assert resolve(stem, device="cuda:1").device == "cuda:1"
        with pytest.raises(ParameterError, match="device"):
            resolve(stem, device="gpu")


def test_no_loader_defaults_to_cpu():
    import inspect

    from vlnb import heads, zoo
    from vlnb.models import ADAPTERS, load_model
    from vlnb.models.fusion import load_fusion
    from vlnb.models.scratch import ScratchDualEncoder
    from vlnb.models.towers import TowersDualEncoder

    funcs = [zoo.profile_models, zoo.reference_model, zoo.train_reference, load_model, heads.load_backbones, load_fusion,
             ScratchDualEncoder.load, TowersDualEncoder.load, *(a.from_pretrained for a in ADAPTERS.values())]
    for f in funcs:
        default = inspect.signature(f).parameters["device"].default
        assert default in ("auto", None), f"{f.__qualname__} defaults to device={default!r}"


def test_hub_models_go_to_the_gpu_when_there_is_one(monkeypatch, tiny_hub_models):
    """``vlnb.zoo.profile_models`` with its default device on a machine with a GPU (faked: ``.to`` records)."""
    from vlnb import zoo

    _fake_gpu(monkeypatch)
    moved = []
    real_to = torch.nn.Module.to

    def record(self, *args, **kwargs):
        dev = kwargs.get("device", args[0] if args else None)
        if isinstance(dev, (str, torch.device)):
            moved.append((type(self).__name__, str(dev)))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", record)
    models = zoo.profile_models("full", models=tiny_hub_models, progress=False)
    adapters = {(n, d) for n, d in moved if n.endswith("Adapter")}
    assert {n for n, _ in adapters} == {"CLIPAdapter", "BLIPAdapter", "BLIP2Adapter", "ViLTAdapter"}
    assert {d for _, d in adapters} == {"cuda"}, moved
    assert len(models) == 4


@pytest.mark.slow
def test_chapter4_full_profile_runs_its_models_on_the_requested_device(tmp_path, tiny_hub_models, monkeypatch):
    """``vlnb run notebooks/04_compare.ipynb --profile full -p device cuda`` with tiny checkpoints: the kernel
    (started with a sitecustomize that fakes one sm75 GPU and records every ``Module.to``) moves every model
    to ``cuda``."""
    from vlnb.runs import run_notebook

    site = tmp_path / "site"
    site.mkdir()
    log = tmp_path / "moved.jsonl"
    (site / "sitecustomize.py").write_text(f'''
import importlib.machinery, json, sys

def _patch(torch):  # runs right after the kernel imports torch (importing it here would slow every start)
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_capability = lambda device=None: (7, 5)
    to = torch.nn.Module.to
    def record(self, *args, **kwargs):
        dev = kwargs.get("device", args[0] if args else None)
        if isinstance(dev, (str, torch.device)) and str(dev).startswith("cuda"):
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps([type(self).__name__, str(dev)]) + "\\n")
            return self  # stays on the CPU: the fake GPU only records where vlnb sends the model
        return to(self, *args, **kwargs)
    torch.nn.Module.to = record

class _AfterTorch:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            _patch(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _AfterTorch())
''')
    monkeypatch.setenv("PYTHONPATH", f"{site}:{REPO_ROOT}")
    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    params = {"models": tiny_hub_models, "datasets": ["coco"], "max_images": 6, "rerank_k": 2,
              "coco_root": str(COCO_MINI), "coco_karpathy_split": "", "batch_size": 8, "n_gallery": 1,
              "t2i_dataset": "", "device": "cuda"}  # "": no baseline training (its tensors would go to the fake GPU)
    run_notebook(REPO_ROOT / "notebooks" / "04_compare.ipynb", params, profile="full", out_dir=tmp_path / "run",
                 progress=False)
    moved = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    adapters = {n for n, d in moved if n.endswith("Adapter") and d == "cuda"}
    assert adapters == {"CLIPAdapter", "BLIPAdapter", "BLIP2Adapter", "ViLTAdapter"}, moved
    ret = pd.read_csv(tmp_path / "run" / "results" / "retrieval.csv")
    assert "ViLT (COCO)" in set(ret["model"])


# ---------------------------------------------------------------------------------------------- published numbers
def test_published_rows_belong_to_their_checkpoints():
    from vlnb.eval.published import published_for, published_retrieval
    from vlnb.zoo import HUB_MODELS

    assert "Salesforce/blip2-itm-vit-g-coco" in HUB_MODELS.values()
    df = published_retrieval()
    assert not len(df[df["hub_id"] == "Salesforce/blip2-itm-vit-g"])  # pretrained: no retrieval number published

    def r1(hub, ds):
        rows = published_for(hub, ds).set_index(["direction", "k"])["recall"]
        return rows[("i2t", 1)], rows[("t2i", 1)]

    assert r1("Salesforce/blip2-itm-vit-g-coco", "coco") == (85.4, 68.3)
    assert r1("Salesforce/blip2-itm-vit-g-coco", "flickr30k") == (97.6, 89.7)
    assert r1("Salesforce/blip-itm-base-coco", "coco") == (82.0, 64.5)
    blip = published_for("Salesforce/blip-itm-base-coco", "coco").set_index(["direction", "k"])["recall"]
    assert list(blip.loc["i2t"]) == [82.0, 95.8, 98.1] and list(blip.loc["t2i"]) == [64.5, 86.0, 91.7]
    assert published_for("Salesforce/blip2-itm-vit-g-coco", "coco")["protocol"].str.contains("top-128").all()
    assert published_for("Salesforce/blip-itm-base-coco", "coco")["protocol"].str.contains("top-256").all()
    assert set(published_for("dandelin/vilt-b32-finetuned-coco", "coco")["stage"]) == {"itm"}


def test_lavis_rerank_depths():
    from vlnb.config import resolve
    from vlnb.eval.compare import rerank_depth

    assert resolve("04_compare", "full").rerank_k == "lavis"
    assert rerank_depth("lavis", "blip", "coco") == 256 and rerank_depth("lavis", "blip", "flickr30k") == 128
    assert rerank_depth("lavis", "blip2", "coco") == 128 and rerank_depth("lavis", "blip2", "flickr30k") == 128
    assert rerank_depth(16, "blip", "coco") == 16 and rerank_depth({"coco": 5}, "blip2", "coco") == 5


def test_published_markers_join_on_hub_id_and_stage():
    from vlnb.eval.published import published_retrieval
    from vlnb.plots import published_markers

    rows = []
    for model, hub, proto, stage in [("My CLIP", "openai/clip-vit-base-patch32", "ITC", "itc"),
                                     ("CLIP ViT-B/32", "/tmp/tiny-clip", "ITC", "itc"),  # right name, other weights
                                     ("BLIP-2", "Salesforce/blip2-itm-vit-g-coco", "ITC", "itc"),
                                     ("BLIP-2", "Salesforce/blip2-itm-vit-g-coco", "ITC top-128 → own ITM", "itm")]:
        for k in (1, 5, 10):
            rows.append({"model": model, "hub_id": hub, "protocol": proto, "stage": stage, "dataset": "coco",
                         "direction": "i2t", "k": k, "recall": 50.0})
    df = pd.DataFrame(rows)
    df["entry"] = df["model"] + "\n" + df["protocol"]
    entries = list(dict.fromkeys(df["entry"]))
    marks = published_markers(df, published_retrieval(), entries, [1, 5, 10])
    ys = sorted(y for _, _, y in marks)
    # CLIP's markers sit on the bar of the model loaded from its hub id (whatever its display name); BLIP-2's
    # published ITC→ITM numbers on its re-ranked bar, not on its ITC bar; the look-alike name gets none
    assert ys == sorted([50.1, 75.0, 83.5, 85.4, 97.0, 98.5])
    assert {e for e, _, _ in marks} == {"My CLIP\nITC", "BLIP-2\nITC top-128 → own ITM"}
    assert sorted(k for _, k, _ in marks) == [1, 1, 5, 5, 10, 10]


def test_vilt_rerank_row_is_its_itm_score_alone(tmp_path, tiny_clip_dir, tiny_vilt_dir):
    from vlnb.comparison import run_comparison
    from vlnb.data import build_manifest
    from vlnb.data.pixels import pixel_loader
    from vlnb.eval.rerank import rerank_similarity, reranked_recall
    from vlnb.models import load_model

    world, _ = build_manifest("world", n_train=0, n_test=6, image_size=32, seed=3)
    clip, vilt = load_model(str(tiny_clip_dir)), load_model(str(tiny_vilt_dir))
    _, _, runs, _ = run_comparison({"CLIP": clip, "ViLT": vilt}, {"world": world}, first_stage="CLIP", rerank_k=3,
                                     cache_dir=tmp_path, progress=False)
    row = next(r for r in runs[("CLIP", "world")].results if r["model"] == "ViLT")
    assert row["combine"] == "itm" and "ITM score alone" in row["protocol"] and row["hub_id"] == str(tiny_vilt_dir)
    run = runs[("CLIP", "world")]
    alone, _ = rerank_similarity(run.similarity, vilt, pixel_loader(vilt.preprocess, world, run.image_ids), run.texts, k=3,
                                 combine="itm", progress=False)
    want = reranked_recall(alone, run.text_to_image)
    assert all(row[k] == pytest.approx(v) for k, v in want.items())
    mixed, _ = rerank_similarity(run.similarity, vilt, pixel_loader(vilt.preprocess, world, run.image_ids), run.texts, k=3,
                                 combine="itm+itc", progress=False)
    assert not torch.equal(mixed["i2t"], alone["i2t"])  # the old row (ITM + CLIP's cosine) was another number


# ---------------------------------------------------------------------------------------------- ViLT input grid
REAL_VILT_PROCESSOR = {  # dandelin/vilt-b32-finetuned-coco's preprocessor_config.json
    "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViltFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3, "size": 384, "size_divisor": 32}


@pytest.fixture(scope="module")
def vilt_384(tmp_path_factory):
    """A tiny ViLT with the real checkpoint's geometry (patch 32, 12x12 position grid) and real processor."""
    from vlnb.models.tiny import make_tiny_vilt

    d = make_tiny_vilt(tmp_path_factory.mktemp("vilt384") / "vilt", image_size=384, patch_size=32)
    (d / "preprocessor_config.json").write_text(json.dumps(REAL_VILT_PROCESSOR))
    return d


def test_vilt_keeps_the_aspect_ratio_like_its_processor(vilt_384):
    from PIL import Image
    from transformers import ViltImageProcessorPil

    from vlnb.models import load_model
    from vlnb.models.vilt import pixel_mask_of

    jpgs = sorted((COCO_MINI / "val2017").glob("*.jpg"))[:4]
    images = [Image.open(p).convert("RGB") for p in jpgs]
    model = load_model(str(vilt_384))
    hf = ViltImageProcessorPil.from_pretrained(str(vilt_384))(images, return_tensors="pt")
    ours = model.preprocess(images)
    pixels, mask, sizes = pixel_mask_of(ours)
    assert pixels.shape == hf["pixel_values"].shape
    torch.testing.assert_close(pixels, hf["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(mask, hf["pixel_mask"].long())
    w, h = images[0].size
    if (w, h) == (640, 426):
        assert sizes[0] == (384, 576)  # 12 x 18 = 216 patches, not a 384x384 square
    texts = ["a man riding a horse", "a plate of food", "a dog on a bed", "two people on a street"]
    scores = model.score(ours, texts)
    with torch.no_grad():
        ref = model.model(**model.tokenize(texts), pixel_values=hf["pixel_values"],
                          pixel_mask=hf["pixel_mask"]).logits[:, 0]
    torch.testing.assert_close(scores.detach(), ref, atol=1e-5, rtol=1e-5)
    n_hf = (1 + hf["pixel_mask"][:, ::32, ::32].sum(dim=(1, 2))).tolist()
    assert model.last_image_tokens == n_hf or [model.last_image_tokens] * len(n_hf) == n_hf
    alone = torch.stack([model.score(model.preprocess([im]), [t])[0] for im, t in zip(images, texts)])
    torch.testing.assert_close(alone.detach(), scores.detach(), atol=1e-5, rtol=1e-5)  # padding changes nothing


# ---------------------------------------------------------------------------------------------- CIFAR-100 labels
COARSE = ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
          "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
          "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
          "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees", "vehicles_1",
          "vehicles_2"]  # uoft-cs/cifar100's coarse ClassLabel names (the official ones)


def _cifar_standin(n_per_class: int = 2, swap: bool = False):
    datasets = pytest.importorskip("datasets")
    from vlnb.data.classnames import CIFAR100_CLASSNAMES

    fine = [n.replace(" ", "_") for n in CIFAR100_CLASSNAMES]  # the official names, in label order
    fine[26] = "cra"  # uoft-cs/cifar100's spelling of class 26 (crab)
    if swap:
        fine[3], fine[4] = fine[4], fine[3]
    rng = np.random.default_rng(0)
    labels = [c for c in range(100) for _ in range(n_per_class)]
    feats = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=fine),
                               "coarse_label": datasets.ClassLabel(names=COARSE)})
    return datasets.Dataset.from_dict(
        {"img": [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in labels], "fine_label": labels,
         "coarse_label": [c % 20 for c in labels]}, features=feats)


def _serve_hub(monkeypatch, table: dict):
    """``datasets.load_dataset(hub_id, ...)`` answers from ``table`` (hub id -> Dataset); anything else fails."""
    import datasets

    real = datasets.load_dataset

    def load(path, *args, **kwargs):
        if path in table:
            return table[path]
        if path == "parquet" or Path(str(path)).exists():
            return real(path, *args, **kwargs)
        raise ConnectionError(f"no network in tests: {path}")

    monkeypatch.setattr(datasets, "load_dataset", load)


def test_cifar100_hub_labels_map_by_index(monkeypatch):
    from vlnb.data.hub import load_cifar100
    from vlnb.eval.compare import zeroshot_task

    _serve_hub(monkeypatch, {"uoft-cs/cifar100": _cifar_standin()})
    df, _ = load_cifar100("uoft-cs/cifar100", check_images=False)
    assert len(df) == 200 and (df["labels"].map(lambda v: v[0]) == "crab").sum() == 2
    task = zeroshot_task("cifar100", df)
    t = task.targets["label"]
    assert (t >= 0).all() and len(t) == 200 and (t == 26).sum() == 2 and task.class_names[26] == "crab"


def test_cifar100_unmatched_labels_are_errors(monkeypatch):
    from vlnb.data.hub import load_cifar100
    from vlnb.eval.compare import zeroshot_task

    _serve_hub(monkeypatch, {"uoft-cs/cifar100": _cifar_standin(1, swap=True)})
    with pytest.raises(ValueError, match="fine_label label 3 is named 'beaver'"):
        load_cifar100("uoft-cs/cifar100", check_images=False)
    manifest = pd.DataFrame({"image_id": [0, 1], "labels": [["crab"], ["unicorn"]], "captions": [[], []]})
    manifest.attrs = {"vlnb": {"source": "cifar100"}}
    with pytest.raises(ValueError, match="unicorn"):
        zeroshot_task("cifar100", manifest)


# ---------------------------------------------------------------------------------------------- no shared data
def test_full_profile_reads_nothing_from_the_shared_folder(tmp_path, monkeypatch):
    """Chapter 2's full profile (scratch-coco's CLIP tokenizer, paired CIFAR-100) on a machine without
    ../shared/data: the tokenizer comes from its hub id, CIFAR-100 from the hub (both stand-ins here)."""
    from transformers import CLIPTokenizerFast

    from vlnb import zoo
    from vlnb.config import resolve
    from vlnb.data.paired_cifar import build_paired_cifar
    from vlnb.models import scratch

    clip_copy = tmp_path / "clip-tokenizer"
    shutil.copytree(shared_data_dir(required=True) / "clip-vit-base-patch32", clip_copy)
    empty = tmp_path / "empty-shared"
    empty.mkdir()
    monkeypatch.setenv("VLNB_SHARED_DATA", str(empty))
    asked = []
    real_from = CLIPTokenizerFast.from_pretrained.__func__

    def from_pretrained(cls, name, *a, **kw):
        asked.append(str(name))
        return real_from(cls, str(clip_copy) if name == "openai/clip-vit-base-patch32" else name, *a, **kw)

    monkeypatch.setattr(CLIPTokenizerFast, "from_pretrained", classmethod(from_pretrained))
    _serve_hub(monkeypatch, {"uoft-cs/cifar100": _cifar_standin(4)})
    built = {}
    monkeypatch.setattr(scratch.ScratchDualEncoder, "create",
                        classmethod(lambda cls, config, **kw: built.update(config=config, **kw) or "model"))
    opened = []
    state = {"on": True}

    def audit(event, args):
        if state["on"] and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    try:
        cfg = resolve("02_clip_training", "full")
        train = pd.DataFrame({"captions": [["a dog"], ["a cat"]]})
        assert zoo.build_model(zoo.RECIPES["scratch-coco"], train) == "model"
        paired = build_paired_cifar(n_train=8, n_test=4, seed=0, source=cfg.paired_source)
    finally:
        state["on"] = False
    assert asked == ["openai/clip-vit-base-patch32"] and built["tokenizer"] is not None
    assert len(paired) == 12 and cfg.paired_source == "uoft-cs/cifar100"
    assert not [p for p in opened if p.startswith(str(empty))], opened


# ---------------------------------------------------------------------------------------------- Flickr30k
def test_flickr30k_loads_the_parquet_conversion(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    from vlnb.data.hub import load_flickr30k

    jpgs = sorted((COCO_MINI / "val2017").glob("*.jpg"))[:6]
    ds = datasets.Dataset.from_dict(  # nlphuji/flickr30k's schema: one hub split, the Karpathy split in a column
        {"image": [{"bytes": p.read_bytes(), "path": None} for p in jpgs],
         "caption": [[f"caption {i} {k}" for k in range(5)] for i in range(6)],
         "sentids": [[str(5 * i + k) for k in range(5)] for i in range(6)],
         "split": ["train", "train", "val", "test", "test", "test"], "img_id": [str(i) for i in range(6)],
         "filename": [p.name for p in jpgs]},
        features=datasets.Features({"image": datasets.Image(),
                                    "caption": (getattr(datasets, "List", None) or datasets.Sequence)(datasets.Value("string")),
                                    "sentids": (getattr(datasets, "List", None) or datasets.Sequence)(datasets.Value("string")),
                                    "split": datasets.Value("string"), "img_id": datasets.Value("string"),
                                    "filename": datasets.Value("string")}))
    conv = tmp_path / "hub" / "TEST" / "test"
    conv.mkdir(parents=True)
    ds.to_parquet(str(conv / "0000.parquet"))
    calls = []

    def list_repo_files(self, repo_id, repo_type=None, revision=None, **kw):
        calls.append(("list", repo_id, repo_type, revision))
        return ["README.md", "TEST/test/0000.parquet"]

    def hf_hub_download(repo_id, filename, repo_type=None, revision=None, **kw):
        calls.append(("get", repo_id, filename, revision))
        return str(tmp_path / "hub" / filename)

    def no_script(path, *a, **kw):  # what datasets < 4 says for a script repo (>= 4: "scripts are no longer ...")
        if path == "nlphuji/flickr30k":
            raise ValueError("The repository for nlphuji/flickr30k contains custom code which must be executed "
                             "to correctly load the dataset. Please pass the argument `trust_remote_code=True`")
        return real(path, *a, **kw)

    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", no_script)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    df, report = load_flickr30k("nlphuji/flickr30k", split="test")
    assert len(df) == 3 and set(df["split"]) == {"test"} and len(report) == 0
    assert ("list", "nlphuji/flickr30k", "dataset", "refs/convert/parquet") in calls
    assert ("get", "nlphuji/flickr30k", "TEST/test/0000.parquet", "refs/convert/parquet") in calls


# ---------------------------------------------------------------------------------------------- COCO Karpathy test
def _coco2014(root: Path, n: int = 3) -> list[int]:
    """A miniature COCO 2014 layout (val2014/COCO_val2014_<id>.jpg + annotations/*_val2014.json) from coco-mini."""
    caps = json.loads((COCO_MINI / "annotations" / "captions_val2017.json").read_text())
    inst = json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())
    images = [im for im in caps["images"] if (COCO_MINI / "val2017" / im["file_name"]).is_file()][:n]
    ids = [im["id"] for im in images]
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    renamed = [{**im, "file_name": f"COCO_val2014_{im['id']:012d}.jpg"} for im in images]
    for im, new in zip(images, renamed):
        shutil.copy(COCO_MINI / "val2017" / im["file_name"], root / "val2014" / new["file_name"])
    keep = lambda anns: [a for a in anns if a["image_id"] in ids]
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(
        {**caps, "images": renamed, "annotations": keep(caps["annotations"])}))
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(
        {**inst, "images": renamed, "annotations": keep(inst["annotations"])}))
    return ids


def _lavis_test(ids: list[int]) -> list[dict]:
    return [{"image": f"val2014/COCO_val2014_{i:012d}.jpg", "caption": [f"caption {k}" for k in range(5)]}
            for i in ids]


def test_karpathy_test_in_lavis_format_and_2014_layout(tmp_path):
    from vlnb.data import build_manifest
    from vlnb.data.profiles import coco_source, evaluation_manifest

    root = tmp_path / "coco"
    ids = _coco2014(root)
    (root / "coco_karpathy_test.json").write_text(json.dumps(_lavis_test(ids[:2])))
    src = coco_source(str(root), str(root / "coco_karpathy_test.json"))
    assert src["split"] == ("val2014",)  # the 5k test lives in val2014: train2017 (18 GB) is not needed
    df, report = build_manifest("coco", **src)
    assert sorted(df["image_id"]) == sorted(ids[:2]) and set(df["split"]) == {"test"} and len(report) == 0
    assert all(Path(p).name.startswith("COCO_val2014_") for p in df["image"])

    class Cfg:
        coco_root, coco_karpathy_split = str(root), str(root / "coco_karpathy_test.json")

    df2, _ = evaluation_manifest("coco", Cfg())
    assert list(df2["image_id"]) == list(df["image_id"])
    # Karpathy's own dataset_coco.json format names the same images
    karpathy = {"images": [{"cocoid": i, "split": "test" if i in ids[:2] else "train", "filepath": "val2014",
                            "filename": f"COCO_val2014_{i:012d}.jpg"} for i in ids], "dataset": "coco"}
    (root / "dataset_coco.json").write_text(json.dumps(karpathy))
    df3, _ = build_manifest("coco", **coco_source(str(root), str(root / "dataset_coco.json")))
    assert sorted(df3["image_id"]) == sorted(ids[:2])


def test_lavis_split_file_errors_name_the_entry(tmp_path):
    from vlnb.data.coco import read_karpathy_split
    from vlnb.errors import DataError

    f = tmp_path / "coco_karpathy_test.json"
    f.write_text(json.dumps([{"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ["a"]},
                             {"image": 7, "caption": ["b"]}]))
    with pytest.raises(DataError, match=r"\[1\]"):
        read_karpathy_split(f)
    g = tmp_path / "my_split.json"
    g.write_text(json.dumps([{"image": "val2014/COCO_val2014_000000000001.jpg"}]))
    with pytest.raises(DataError, match="coco_karpathy_"):
        read_karpathy_split(g)


# ---------------------------------------------------------------------------------------------- download
class _Server:
    """A bounded HTTP server on 127.0.0.1 serving a folder, with Range support and a one-shot connection drop;
    it shuts itself down after ``lifetime`` seconds whatever happens."""

    def __init__(self, folder: Path, lifetime: float = 60.0):
        self.folder, self.requests, self.drop_after = folder, [], {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _file(self):
                p = outer.folder / self.path.lstrip("/")
                return p if p.is_file() else None

            def do_HEAD(self):
                outer.requests.append(("HEAD", self.path, None))
                p = self._file()
                if p is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(p.stat().st_size))
                self.end_headers()

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append(("GET", self.path, rng))
                p = self._file()
                if p is None:
                    self.send_error(404)
                    return
                data = p.read_bytes()
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = outer.drop_after.pop(p.name, None)
                self.wfile.write(body[:cut] if cut is not None else body)
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime, self.httpd.shutdown)
        self.timer.daemon = True

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *a):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


def _mirror(folder: Path, tmp: Path) -> None:
    """The three files of the karpathy-test split, in miniature, under their real names."""
    src = tmp / "src"
    ids = _coco2014(src)
    folder.mkdir(parents=True)
    (folder / "coco_karpathy_test.json").write_text(json.dumps(_lavis_test(ids)))
    for name, members in (("val2014.zip", sorted((src / "val2014").iterdir())),
                          ("annotations_trainval2014.zip", sorted((src / "annotations").iterdir()))):
        with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_STORED) as z:
            for m in members:
                z.write(m, f"{m.parent.name}/{m.name}")


def test_download_resumes_and_is_checked(tmp_path):
    from vlnb.data import build_manifest
    from vlnb.data.download import DownloadError, prepare_coco
    from vlnb.data.profiles import coco_source

    mirror = tmp_path / "mirror"
    _mirror(mirror, tmp_path)
    root = tmp_path / "data" / "coco"
    size = (mirror / "val2014.zip").stat().st_size
    messages = []
    with _Server(mirror) as srv:
        srv.drop_after["val2014.zip"] = size // 3
        log = lambda m: messages.append((m, [r[0] for r in srv.requests]))
        with pytest.raises(DownloadError, match="val2014.zip: interrupted"):
            prepare_coco(root, "karpathy-test", mirror=srv.url, progress=False, log=log)
        assert (root / "val2014.zip.part").stat().st_size == size // 3
        # the announcement came first, with the servers' sizes, before any byte was fetched
        first, seen = messages[0]
        assert "3 file(s)" in first and "to download" in first and set(seen) == {"HEAD"}
        got = prepare_coco(root, "karpathy-test", mirror=srv.url, progress=False, log=log)
        assert ("GET", "/val2014.zip", f"bytes={size // 3}-") in srv.requests  # resumed, not restarted
    assert not (root / "val2014.zip").exists() and not (root / "val2014.zip.part").exists()  # extracted, cleaned
    df, report = build_manifest("coco", **coco_source(got["root"], got["karpathy_split"]))
    assert len(df) == 3 and len(report) == 0 and got["folders"] == ["val2014"]


def test_corrupt_archive_is_an_error_naming_it(tmp_path):
    from vlnb.data.download import DownloadError, prepare_coco

    mirror = tmp_path / "mirror"
    _mirror(mirror, tmp_path)
    data = bytearray((mirror / "val2014.zip").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # damage a member's bytes: the CRC check must catch it
    (mirror / "val2014.zip").write_bytes(bytes(data))
    root = tmp_path / "coco"
    with _Server(mirror) as srv, pytest.raises(DownloadError, match="val2014.zip: corrupt archive"):
        prepare_coco(root, "karpathy-test", mirror=srv.url, progress=False, log=lambda m: None)
    assert (root / "val2014.zip.corrupt").exists() and not (root / "val2014").exists()
    assert (root / "annotations" / "captions_val2014.json").exists()  # the good archive was kept and extracted


def test_prepare_cli_download(tmp_path, capsys):
    from vlnb.cli import main

    mirror = tmp_path / "mirror"
    _mirror(mirror, tmp_path)
    out = tmp_path / "test5k.parquet"
    with _Server(mirror) as srv:
        rc = main(["prepare", "coco", "--download", "--root", str(tmp_path / "coco"), "--mirror", srv.url,
                   "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file() and "to download" in text and "3 images" in text


def test_recall_bars_legend_names_published_markers_only_when_drawn():
    import matplotlib.pyplot as plt

    from vlnb.eval.published import published_retrieval
    from vlnb.plots import recall_bars

    rows = [{"model": m, "hub_id": hub, "protocol": "ITC", "stage": "itc", "dataset": "coco", "direction": "i2t",
             "k": k, "recall": 50.0, "chance": 0.1} for m, hub in (("CLIP", "openai/clip-vit-base-patch32"),
                                                                   ("local", "/tmp/x")) for k in (1, 5, 10)]
    df = pd.DataFrame(rows)
    fig = recall_bars(df, published=published_retrieval(), title="R@K")
    assert fig.n_published == 3 and "red diamonds" in fig._suptitle.get_text()
    plt.close(fig)
    for published in (None, published_retrieval()):  # offline: none given; a local checkpoint: none joined
        fig = recall_bars(df[df["model"] == "local"], published=published, title="R@K")
        assert fig.n_published == 0 and "red diamonds" not in fig._suptitle.get_text()
        assert "black ticks: chance" in fig._suptitle.get_text()
        plt.close(fig)
