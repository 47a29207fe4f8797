"""The one manifest format every data set is loaded into.

A manifest is a :class:`pandas.DataFrame` with one row per image and (at least) the columns

``image_id``  unique id (str or int)
``image``     a path (str) or encoded image bytes (in-memory sources such as the offline world)
``captions``  list of str (may be empty for classification-only sets)
``split``     "train" / "val" / "test" ...
``labels``    list of class names (empty where none)

plus free metadata columns (groups, sizes, attributes ...). Data-set level facts live in
``df.attrs["vlnb"]`` (name, source, how to reach per-image annotations such as masks and boxes)
and travel with the parquet file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..paths import atomic_write, clean_stale_temp
from .images import REPORT_COLUMNS, empty_report, scan_images

REQUIRED_COLUMNS = ("image_id", "image", "captions", "split", "labels")
_META_KEY = b"vlnb"


class ManifestError(ValueError):
    """A manifest that does not follow the format; the message names the column and rows."""


def _as_str_list(v, col: str, row) -> list[str]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    if isinstance(v, str):
        raise ManifestError(f"column '{col}' must hold a list of str per row, got a plain str at row {row!r}")
    try:
        out = [str(x) for x in list(v)]
    except TypeError:
        raise ManifestError(f"column '{col}' must hold a list of str per row, got {type(v).__name__} at row {row!r}")
    return out


def make_manifest(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame, *, name: str, meta: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Build and validate a manifest from records (dicts) or a DataFrame.

    ``name`` is the data set's name; ``meta`` goes into ``df.attrs["vlnb"]`` (e.g. the annotation source).
    """
    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    if len(df) == 0:
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in REQUIRED_COLUMNS})
    for col in ("captions", "labels"):
        if col not in df.columns:
            df[col] = [[] for _ in range(len(df))]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest '{name}' is missing required column(s): {', '.join(missing)}")
    for col in ("captions", "labels"):
        df[col] = [_as_str_list(v, col, iid) for v, iid in zip(df[col], df["image_id"])]
    df["split"] = df["split"].astype(str)
    cols = list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]
    df = df[cols].reset_index(drop=True)
    df.attrs["vlnb"] = {"name": name, **dict(meta or {})}
    validate_manifest(df)
    return df


def validate_manifest(df: pd.DataFrame) -> None:
    """Raise :class:`ManifestError` naming what is wrong, or return None."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest is missing required column(s): {', '.join(missing)}")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ManifestError(f"column 'image_id' has duplicates, e.g. {list(dup.unique()[:5])}")
    for i, v in zip(df["image_id"], df["image"]):
        if not isinstance(v, (str, bytes, bytearray, os.PathLike)):
            raise ManifestError(f"column 'image' must be a path or bytes, got {type(v).__name__} at image_id {i!r}")
    for col in ("captions", "labels"):
        for i, v in zip(df["image_id"], df[col]):
            if not isinstance(v, (list, tuple, np.ndarray)) or any(not isinstance(x, str) for x in v):
                raise ManifestError(f"column '{col}' must hold a list of str per row (image_id {i!r})")


def manifest_meta(df: pd.DataFrame) -> dict:
    return dict(df.attrs.get("vlnb", {}))


def save_manifest(df: pd.DataFrame, path: str | os.PathLike, report: pd.DataFrame | None = None) -> Path:
    """Write ``df`` as parquet (attrs in the schema metadata) and, if given, the bad-image report as CSV."""
    validate_manifest(df)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out.attrs = {}
    table = pa.Table.from_pandas(out, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps(manifest_meta(df), default=str).encode()
    table = table.replace_schema_metadata(meta)

    clean_stale_temp(path.parent, path.name)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))  # unique temp name: concurrent writers never collide
    if report is not None:
        save_report(report, report_path(path))
    return path


def save_report(report: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a bad-image report CSV atomically."""

    return atomic_write(path, lambda tmp: report.to_csv(tmp, index=False))


def report_path(manifest_path: str | os.PathLike) -> Path:
    p = Path(manifest_path)
    return p.with_name(p.stem + ".bad_images.csv")


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest file not found: {path}")
    table = pq.read_table(path)
    df = table.to_pandas()
    for col in ("captions", "labels"):
        df[col] = [list(v) if v is not None else [] for v in df[col]]
    raw = (table.schema.metadata or {}).get(_META_KEY)
    df.attrs["vlnb"] = json.loads(raw) if raw else {}
    validate_manifest(df)
    return df


def drop_bad_images(df: pd.DataFrame, workers: int | None = None, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every image; return ``(usable manifest, report of skipped images)``."""
    report = scan_images(list(df["image_id"]), list(df["image"]), workers=workers, progress=progress)
    if len(report) == 0:
        return df, empty_report()
    good = subset(df, ~df["image_id"].isin(set(report["image_id"])).to_numpy())
    return good, report[REPORT_COLUMNS]


def _update_with_image(h, iid, img) -> None:
    h.update(repr(iid).encode())
    if isinstance(img, (bytes, bytearray)):
        h.update(hashlib.sha256(img).digest())
    else:
        p = Path(img)
        st = p.stat() if p.exists() else None
        h.update(f"{p}|{st.st_size if st else -1}|{int(st.st_mtime) if st else -1}".encode())


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of the manifest: ids, captions, labels and the image bytes (or path + size + mtime)."""
    h = hashlib.sha256()
    for iid, img, caps, labels in zip(df["image_id"], df["image"], df["captions"], df["labels"]):
        _update_with_image(h, iid, img)
        h.update("\x1f".join(caps).encode())
        h.update("\x1e".join(labels).encode())
    return h.hexdigest()[:16]


def image_fingerprint(df: pd.DataFrame) -> str:
    """A content hash of the manifest's images only, in row order: ids and image bytes (or path + size + mtime),
    as in :func:`fingerprint`; two manifests whose captions or labels differ but whose rows hold the same images
    get the same one."""
    h = hashlib.sha256(b"images")
    for iid, img in zip(df["image_id"], df["image"]):
        _update_with_image(h, iid, img)
    return h.hexdigest()[:16]


def subset(df: pd.DataFrame, rows) -> pd.DataFrame:
    """Some rows of a manifest as a manifest of their own: ``rows`` a slice, integer positions (in the order
    given) or a boolean mask of ``len(df)``; the index is reset and the attrs -- the provenance every later
    step reads (source, annotations, world config) -- are kept as a deep copy, so editing one never
    changes the other. The one way the package takes a subset, a split or the head of a manifest."""
    if isinstance(rows, slice):
        out = df.iloc[rows]
    else:
        r = np.asarray(rows)
        if r.dtype == bool:
            if r.shape != (len(df),):
                raise ValueError(f"a boolean row mask must have one entry per row ({len(df)}), got shape {r.shape}")
        elif r.size and not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"rows must be a slice, integer positions or a boolean mask, got dtype {r.dtype}")
        out = df.iloc[r.astype(np.int64) if r.dtype != bool else r]
    out = out.reset_index(drop=True)
    out.attrs = copy.deepcopy(df.attrs)
    return out


def subset_ids(df: pd.DataFrame, image_ids) -> pd.DataFrame:
    """:func:`subset` of the rows with these ``image_ids``, in that order (an unknown id is an error naming it)."""
    pos = {iid: i for i, iid in enumerate(df["image_id"])}
    missing = [i for i in image_ids if i not in pos]
    if missing:
        raise KeyError(f"{len(missing)} image id(s) are not in the manifest, e.g. {missing[0]!r}")
    return subset(df, np.asarray([pos[i] for i in image_ids], dtype=np.int64))


def texts_and_targets(df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Flatten all captions: ``texts[j]`` belongs to image row ``text_to_image[j]`` (the retrieval protocol)."""
    texts: list[str] = []
    t2i: list[int] = []
    for i, caps in enumerate(df["captions"]):
        texts.extend(caps)
        t2i.extend([i] * len(caps))
    return texts, np.asarray(t2i, dtype=np.int64)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """A tidy per-split summary: images, captions, captions/image, labelled images."""
    g = df.groupby("split", sort=True)
    out = pd.DataFrame(
        {
            "images": g.size(),
            "captions": g["captions"].apply(lambda s: int(sum(len(c) for c in s))),
            "labelled_images": g["labels"].apply(lambda s: int(sum(len(c) > 0 for c in s))),
        }
    )
    out["captions_per_image"] = (out["captions"] / out["images"]).round(2)
    return out.reset_index()
