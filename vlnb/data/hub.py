"""Hugging Face ``datasets`` sources as manifests: Flickr30k, the Pokémon BLIP captions, CIFAR-100.

Every loader takes a hub id, a local ``save_to_disk`` folder, or a local parquet file / folder (one
dispatcher, :func:`_open_hf`), so the same code runs on Colab (hub) and offline (local copies).
Images are stored in the manifest as their original encoded bytes (PNG re-encoding only when no
encoded bytes exist), and every image is decoded once by :func:`drop_bad_images`: bad ones are skipped
and listed in the returned report.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..progress import tqdm
from .classnames import CIFAR100_CLASSNAMES
from .images import empty_report, encode_png
from .manifest import drop_bad_images, make_manifest

_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _parquet_files(p: Path, split: str) -> list[str]:
    """Parquet files of ``p`` (a file or folder); in a folder prefer the files of ``split``
    (hub layout ``data/test-00000-of-00001.parquet`` or ``test/*.parquet``)."""
    if p.is_file():
        return [str(p)] if p.suffix == ".parquet" else []
    files = sorted(p.rglob("*.parquet"))
    of_split = [
        f
        for f in files
        if f.name.startswith(f"{split}-") or f.name == f"{split}.parquet" or f.parent.name == split
    ]
    return [str(f) for f in (of_split or files)]


def _open_hf(source: str | os.PathLike, split: str):
    """Open ``source`` as a :class:`datasets.Dataset`: a ``save_to_disk`` folder (``load_from_disk``; a
    ``DatasetDict`` gives its ``split``), a parquet file or folder (``load_dataset("parquet")``), else a
    hub id (``load_dataset(source, split=split)``)."""
    import datasets  # lazy: slow to import; only the hub loaders need it

    p = Path(source)
    if p.exists():
        if p.is_dir() and any((p / m).is_file() for m in _DISK_MARKERS):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise KeyError(f"{p} holds splits {sorted(ds)}, not the requested split {split!r}")
                ds = ds[split]
            return ds
        files = _parquet_files(p, split)
        if not files:
            raise ValueError(f"{p} is neither a datasets save_to_disk folder nor a parquet file/folder")
        return datasets.load_dataset("parquet", data_files=files, split="train")
    if p.is_absolute() or str(source).startswith(".") or p.suffix in (".parquet", ".npz", ".arrow"):
        raise FileNotFoundError(f"local data set not found: {p}")
    try:
        if str(source) in SCRIPT_DATASETS:
            return _parquet_conversion(str(source), split)
        try:
            return datasets.load_dataset(str(source), split=split)
        except Exception as e:
            if not _is_script_error(e):
                raise
            return _parquet_conversion(str(source), split)
    except Exception as e:  # offline, unknown id, missing split ...
        raise RuntimeError(
            f"could not load {str(source)!r} (split {split!r}) from the Hugging Face hub: "
            f"{type(e).__name__}: {e}. "
            "Without internet, pass a local save_to_disk folder or parquet file of the data set instead."
        ) from e


#: Hub data sets defined by a loading script. ``datasets`` >= 4 refuses scripts ("Dataset scripts are no longer
#: supported"), < 4 asks for ``trust_remote_code=True`` (which vlnb never passes): their parquet conversion
#: (branch :data:`PARQUET_REVISION`, made by the hub) is loaded directly instead, the same on every version.
SCRIPT_DATASETS = frozenset({"nlphuji/flickr30k"})
PARQUET_REVISION = "refs/convert/parquet"


def _is_script_error(e: Exception) -> bool:
    """The error ``datasets`` raises for a script-based repo: >= 4 no longer runs scripts, < 4 wants
    ``trust_remote_code``."""
    msg = str(e)
    return ("scripts are no longer supported" in msg or "trust_remote_code" in msg
            or "contains custom code" in msg)


def _parquet_conversion(repo_id: str, split: str):
    """Split ``split`` of the hub's parquet conversion of ``repo_id`` (``<config>/<split>/NNNN.parquet`` on the
    ``refs/convert/parquet`` branch), downloaded through the HF cache and opened with the parquet builder: no
    script runs."""
    import datasets  # lazy: slow to import; only the hub loaders need it
    from huggingface_hub import HfApi, hf_hub_download  # lazy: slow to import; only the hub loaders need it

    files = [f for f in HfApi().list_repo_files(repo_id, repo_type="dataset", revision=PARQUET_REVISION)
             if f.endswith(".parquet")]
    of_split = sorted(f for f in files if f.split("/")[-2:-1] == [split] or Path(f).name.startswith(f"{split}-"))
    if not of_split:
        found = sorted({f.rsplit("/", 1)[0] for f in files})
        raise ValueError(f"{repo_id}: its parquet conversion ({PARQUET_REVISION}) has no split {split!r}; "
                         f"it has folders {found}")
    local = [hf_hub_download(repo_id, f, repo_type="dataset", revision=PARQUET_REVISION) for f in of_split]
    return datasets.load_dataset("parquet", data_files=local, split="train")


def _encoded_bytes(v: Any) -> bytes:
    """Encoded image bytes from a datasets image cell: ``{"bytes", "path"}`` dict, raw bytes, PIL or array."""

    if isinstance(v, dict):
        if v.get("bytes"):
            return bytes(v["bytes"])
        path = v.get("path")
        return Path(path).read_bytes() if path and Path(path).is_file() else b""  # b"" is reported as empty
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, Image.Image):
        buf = io.BytesIO()
        (v if v.mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I") else v.convert("RGB")).save(
            buf, format="PNG"
        )
        return buf.getvalue()
    if isinstance(v, np.ndarray):
        return encode_png(v)
    raise TypeError(f"cannot turn a {type(v).__name__} into image bytes")


def _image_bytes(ds, column: str) -> list[bytes]:
    """The encoded bytes of every image of ``ds[column]``, without decoding them."""
    from datasets import Image  # lazy: slow to import; only the hub loaders need it

    if isinstance(ds.features.get(column), Image):
        ds = ds.cast_column(column, Image(decode=False))
    return [_encoded_bytes(v) for v in ds[column]]


def _column(ds, candidates: Sequence[str], what: str) -> str:
    for c in candidates:
        if c in ds.column_names:
            return c
    raise KeyError(
        f"no {what} column (looked for {', '.join(candidates)}); the data set has {ds.column_names}"
    )


def _caption_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):  # some exports store the caption list as a JSON string
            try:
                return [str(c).strip() for c in json.loads(s)]
            except json.JSONDecodeError:
                pass
        return [s] if s else []
    return [str(c).strip() for c in v if str(c).strip()]


def _finish(records: list[dict], name: str, meta: dict, check_images: bool, progress: bool):
    df = make_manifest(records, name=name, meta=meta)
    if check_images and len(df):
        return drop_bad_images(df, progress=progress)
    return df, empty_report()


def _progress(it, progress: bool, desc: str, total: int):
    if not progress:
        return it

    return tqdm(it, desc=desc, total=total, leave=False)


def load_flickr30k(
    source: str | os.PathLike = "nlphuji/flickr30k",
    split: str = "test",
    karpathy: bool = True,
    check_images: bool = True,
    progress: bool = False,
    hub_split: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flickr30k as ``(manifest, bad_image_report)``; ``image_id`` = file name, 5 captions per image.

    ``nlphuji/flickr30k`` ships one hub split ("test", ~31k rows) whose ``split`` column holds the
    Karpathy split; with ``karpathy=True`` the rows of ``hub_split`` (default ``"test"``) whose ``split``
    column equals ``split`` are kept (``"test"`` = the standard 1k retrieval test set). With
    ``karpathy=False`` the hub split ``hub_split`` (default ``split``) is loaded whole.
    """
    ds = _open_hf(source, hub_split or ("test" if karpathy else split))
    if karpathy:
        col = _column(ds, ("split",), "Karpathy split")
        splits = list(ds[col])
        keep = [i for i, s in enumerate(splits) if s == split]
        if not keep:
            raise ValueError(
                f"{source}: no row has split == {split!r}; the split column holds {sorted(set(splits))}"
            )
        ds = ds.select(keep)
    cap_col = _column(ds, ("caption", "captions", "alt_text", "sentences", "text"), "caption")
    id_col = next((c for c in ("filename", "img_id", "image_id") if c in ds.column_names), None)
    images = _image_bytes(ds, _column(ds, ("image", "img"), "image"))
    ids = [str(i) for i in ds[id_col]] if id_col else list(range(len(ds)))
    extra = [{"img_id": str(n)} for n in ds["img_id"]] if "img_id" in ds.column_names else [{}] * len(ds)
    records = [
        {"image_id": i, "image": b, "captions": _caption_list(c), "split": split, **e}
        for i, b, c, e in _progress(zip(ids, images, ds[cap_col], extra), progress, "Flickr30k", len(ds))
    ]
    meta = {"source": str(source), "split": split, "karpathy": karpathy, "annotations": None}
    return _finish(records, "flickr30k", meta, check_images, progress)


def load_pokemon(
    source: str | os.PathLike = "reach-vb/pokemon-blip-captions",
    split: str = "train",
    test_size: float | None = None,
    seed: int = 0,
    check_images: bool = True,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Pokémon BLIP captions (image + one BLIP caption) as ``(manifest, bad_image_report)``.

    ``image_id`` is the row index in the source split. With ``test_size`` (a fraction in (0, 1) or a
    count) a deterministic random subset (``seed``) gets ``split == "test"`` and the rest ``"train"``;
    otherwise every row has ``split == split``.
    """
    ds = _open_hf(source, split)
    images = _image_bytes(ds, _column(ds, ("image", "img"), "image"))
    texts = ds[_column(ds, ("text", "caption", "captions"), "caption")]
    splits = np.full(len(ds), split, dtype=object)
    if test_size is not None:
        n_test = (
            round(test_size * len(ds)) if isinstance(test_size, float) and test_size < 1 else int(test_size)
        )
        if not 0 < n_test < len(ds):
            raise ValueError(
                f"test_size={test_size!r} gives {n_test} test rows out of {len(ds)}; need 0 < n < {len(ds)}"
            )
        splits[:] = "train"
        splits[np.random.default_rng(seed).permutation(len(ds))[:n_test]] = "test"
    records = [
        {"image_id": i, "image": b, "captions": _caption_list(t), "split": s}
        for i, (b, t, s) in enumerate(_progress(zip(images, texts, splits), progress, "Pokémon", len(ds)))
    ]
    meta = {"source": str(source), "split": split, "test_size": test_size, "seed": seed, "annotations": None}
    return _finish(records, "pokemon", meta, check_images, progress)


def _is_npz(source) -> bool:
    return str(source).endswith(".npz")


def _npz(path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-100 npz file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        need = {"images", "fine_labels", "coarse_labels", "fine_label_names", "coarse_label_names"}
        if not need <= set(z.files):
            raise KeyError(f"{path} lacks array(s) {sorted(need - set(z.files))}; it has {z.files}")
        return {k: z[k] for k in z.files}


def _hf_label_names(ds, column: str) -> list[str]:
    names = getattr(ds.features.get(column), "names", None)
    if not names:
        raise ValueError(f"column {column!r} is not a ClassLabel with names: {ds.features.get(column)}")
    return list(names)


#: The official CIFAR-100 coarse (superclass) names, in label order (the data set's ``meta`` file).
CIFAR100_COARSE_NAMES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
#: Misspellings of copies in circulation -> the official name (``uoft-cs/cifar100`` spells class 26 "cra").
CIFAR100_ALIASES = {"cra": "crab"}


def cifar100_fine_names() -> list[str]:
    """The official 100 fine class names in label order (``aquarium_fish``...): OpenAI's prompt names of
    :data:`vlnb.data.classnames.CIFAR100_CLASSNAMES` with spaces back to underscores."""
    return [n.replace(" ", "_") for n in CIFAR100_CLASSNAMES]


def official_cifar100_names(names: Sequence[str], source, column: str = "fine_label") -> list[str]:
    """``names`` (a copy's label names, by index) checked against the official CIFAR-100 names and returned as
    those: label ``i`` *is* official class ``i``; a known misspelling (:data:`CIFAR100_ALIASES`) is accepted,
    anything else is a ValueError naming the source, the label index and both names (never a silent drop)."""
    coarse = column.startswith("coarse")
    official = list(CIFAR100_COARSE_NAMES) if coarse else cifar100_fine_names()
    names = [str(n) for n in names]
    if len(names) != len(official):
        raise ValueError(f"{source}: column {column!r} has {len(names)} label names; CIFAR-100 has {len(official)}")
    for i, (n, o) in enumerate(zip(names, official)):
        if CIFAR100_ALIASES.get(n, n).replace(" ", "_").lower() != o:
            raise ValueError(f"{source}: {column} label {i} is named {n!r}, but CIFAR-100's class {i} is {o!r}; "
                             "this copy's labels do not follow the official order")
    return official


def cifar100_class_names(source: str | os.PathLike = "uoft-cs/cifar100", split: str = "test") -> list[str]:
    """The 100 official fine class names (label order, e.g. ``"aquarium_fish"``), checked against an npz or HF
    source's own names (:func:`official_cifar100_names`)."""
    if _is_npz(source):
        return official_cifar100_names(_npz(source)["fine_label_names"], source)
    return official_cifar100_names(_hf_label_names(_open_hf(source, split), "fine_label"), source)


def load_cifar100(
    source: str | os.PathLike = "uoft-cs/cifar100",
    split: str = "test",
    check_images: bool = True,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CIFAR-100 as ``(manifest, bad_image_report)``: a classification set (``captions`` = []).

    ``source`` is a hub id / local HF copy (columns ``img, fine_label, coarse_label``) or an ``.npz``
    with ``images (N,32,32,3) uint8, fine_labels, coarse_labels, fine_label_names, coarse_label_names``
    (optionally ``filenames``). ``image_id`` = row index in the split (the official test order),
    ``image`` = PNG bytes, ``labels`` = [fine class name]; metadata ``fine_label_id``, ``coarse_label``
    (name), ``coarse_label_id`` and, from the npz, ``filename``.
    """
    if _is_npz(source):
        z = _npz(source)
        fine, coarse = z["fine_labels"].astype(int), z["coarse_labels"].astype(int)
        fine_names = official_cifar100_names(z["fine_label_names"], source, "fine_label")
        coarse_names = official_cifar100_names(z["coarse_label_names"], source, "coarse_label")
        images = (encode_png(a) for a in z["images"])
        extra = [{"filename": str(f)} for f in z["filenames"]] if "filenames" in z else [{}] * len(fine)
    else:
        ds = _open_hf(source, split)
        fine_col = _column(ds, ("fine_label", "label"), "fine label")
        fine, coarse = (
            np.asarray(ds[fine_col], dtype=int),
            np.asarray(ds[_column(ds, ("coarse_label",), "coarse label")], dtype=int),
        )
        # labels by index -> the official names (the hub's copy spells class 26 "cra": matched by name, every
        # crab would silently become "unknown" and leave the zero-shot test set)
        fine_names = official_cifar100_names(_hf_label_names(ds, fine_col), source, "fine_label")
        coarse_names = official_cifar100_names(_hf_label_names(ds, "coarse_label"), source, "coarse_label")
        images = _image_bytes(ds, _column(ds, ("img", "image"), "image"))
        extra = [{}] * len(fine)
    for col, ids, n in (("fine_label", fine, len(fine_names)), ("coarse_label", coarse, len(coarse_names))):
        bad = np.flatnonzero((ids < 0) | (ids >= n))
        if len(bad):
            raise ValueError(f"{source}: row {int(bad[0])} has {col} {int(ids[bad[0]])}, outside 0..{n - 1} "
                             f"({len(bad)} such rows)")
    records = [
        {
            "image_id": i,
            "image": b,
            "captions": [],
            "split": split,
            "labels": [fine_names[f]],
            "fine_label_id": int(f),
            "coarse_label": coarse_names[c],
            "coarse_label_id": int(c),
            **e,
        }
        for i, (b, f, c, e) in enumerate(
            _progress(zip(images, fine, coarse, extra), progress, "CIFAR-100", len(fine))
        )
    ]
    meta = {
        "source": str(source),
        "split": split,
        "class_names": fine_names,
        "coarse_class_names": coarse_names,
        "annotations": None,
    }
    return _finish(records, "cifar100", meta, check_images, progress)
