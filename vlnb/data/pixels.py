"""Decoded pixels, computed once: THE loader of a model's preprocessed pixels for manifest rows.

Every image of a manifest is decoded (EXIF orientation applied, any mode to RGB: :func:`open_rgb`) and
resized / center-cropped by a model's :class:`~vlnb.models.transforms.ImagePreprocess` **once**, stored as
``(N, 3, H, W)`` uint8 in a memory-mapped ``.npy`` file, and normalised on the fly on the model's device
(:meth:`DecodedPixels.normalized` == ``preprocess([open_rgb(src)])`` bit for bit). Training epochs,
evaluations, re-ranking, robustness cells (perturbations act on :meth:`DecodedPixels.unit`, the ``[0, 1]``
pixels before the model's normalisation) and fairness groups all read the same file instead of decoding
the same JPEGs again.

Cache layout (``vlnb.paths.cache_dir()/pixels/`` unless ``cache_dir`` is given): ``<key>.npy`` (one row per
manifest row; rows of images that cannot be decoded stay zero) + ``<key>.json`` (key, format, shape, the ids
of the manifest rows, which rows are valid, the bad-image report, SHA-256 of the array). The key is the
SHA-256 of the manifest's content fingerprint (:func:`vlnb.data.manifest.fingerprint`), the preprocessing's
*geometry* (resize, crop, resample, crop offset; mean/std are applied later, so models that differ only in
normalisation share an entry) and the Pillow version. Files are written under unique temporary names and
moved into place atomically (the sidecar last), so concurrent writers never expose half a file; an entry
that cannot be read or fails its checksum is reported with a warning and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import torch

from ..paths import atomic_write, clean_stale_temp, load_sidecar_entry, sidecar_digest, temp_name
from ..paths import cache_dir as default_cache_dir
from ..progress import tqdm
from ..timing import timed
from .images import REPORT_COLUMNS, BadImageError, empty_report, open_rgb, try_open_rgb

FORMAT_VERSION = 2  # 2: the sidecar carries its own checksum (meta_sha256)
_memo: dict[tuple[str, str], DecodedPixels] = {}
_memo_lock = threading.Lock()


def cacheable(preprocess) -> bool:
    """Whether ``preprocess`` can go through the pixel cache: it splits into a uint8 CPU part and a device part
    (``to_uint8`` / ``unit_from_uint8`` / ``normalize``), has a ``config`` and a fixed output size.
    ``VLNB_PIXEL_CACHE=0`` turns the cache off (every use decodes again: for comparisons and debugging)."""
    if os.environ.get("VLNB_PIXEL_CACHE", "1").strip() == "0":
        return False
    return (
        all(callable(getattr(preprocess, a, None)) for a in ("to_uint8", "unit_from_uint8", "normalize"))
        and isinstance(getattr(preprocess, "config", None), dict)
        and getattr(preprocess, "output_size", None) is not None
    )


def geometry(preprocess) -> dict:
    """The part of a preprocessing config that defines the uint8 pixels (everything but mean/std)."""
    return {k: v for k, v in preprocess.config.items() if k not in ("mean", "std")}


def _pillow_version() -> str:
    return PIL.__version__


def images_fingerprint(manifest: pd.DataFrame) -> str:
    """A content hash of the manifest's images: ids and image bytes (or path + size + mtime), as
    :func:`vlnb.data.manifest.fingerprint` but without captions and labels, which do not change pixels."""
    h = hashlib.sha256()
    for iid, img in zip(manifest["image_id"], manifest["image"]):
        h.update(repr(iid).encode())
        if isinstance(img, (bytes, bytearray, memoryview)):
            h.update(hashlib.sha256(img).digest())
        else:
            p = Path(img)
            st = p.stat() if p.exists() else None
            h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
        h.update(b"\x1f")
    return h.hexdigest()


def pixel_key(manifest: pd.DataFrame, preprocess) -> str:
    payload = {"kind": "pixels", "format": FORMAT_VERSION, "images": images_fingerprint(manifest),
               "geometry": geometry(preprocess), "pillow": _pillow_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


def _describe(src) -> str:
    return f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def _digest(a: np.ndarray) -> str:
    h = hashlib.sha256()
    flat = a.reshape(len(a), -1) if len(a) else a
    for s in range(0, len(flat), 256):  # in chunks: a memory map is not read into memory at once
        h.update(np.ascontiguousarray(flat[s : s + 256]).tobytes())
    return h.hexdigest()


@dataclass
class DecodedPixels:
    """A manifest's images decoded and resized/cropped once (uint8), with the preprocess that finishes them.

    ``array[r]`` holds manifest row ``r`` (zeros where ``valid[r]`` is False); ``image_ids`` are the manifest's
    ids in row order, ``skipped`` the ``image_id, path, reason`` report of images that could not be used."""

    array: np.ndarray
    valid: np.ndarray
    image_ids: list
    preprocess: object
    skipped: pd.DataFrame = field(default_factory=empty_report)
    key: str = ""
    from_cache: bool = False
    path: Path | None = None
    reasons: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.array)

    def __reduce__(self):  # DataLoader workers reopen the memory map instead of receiving a pickled copy
        if self.path is None:
            return object.__reduce__(self)
        return (_reopen, (str(self.path), self.valid, self.image_ids, self.preprocess, self.skipped, self.key,
                          self.reasons))

    @property
    def ok_rows(self) -> np.ndarray:
        """Manifest rows whose image decoded (in manifest order)."""
        return np.flatnonzero(self.valid)

    def check(self, rows) -> None:
        """Raise :class:`BadImageError` naming the first row of ``rows`` whose image could not be decoded."""
        bad = [int(r) for r in np.asarray(rows, dtype=np.int64).reshape(-1) if not self.valid[int(r)]]
        if bad:
            r = bad[0]
            raise BadImageError(f"image_id {jsonable(self.image_ids[r])!r}: {self.reasons.get(r, 'not decodable')} "
                                "(drop bad images from the manifest first: vlnb.data.drop_bad_images)")

    def uint8(self, rows) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 pixels of manifest ``rows`` (a list / array of row positions)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.check(rows)
        return torch.from_numpy(np.ascontiguousarray(self.array[rows]))

    def unit(self, rows, device=None) -> torch.Tensor:
        """``[0, 1]`` float32 pixels (resized/cropped, not normalised) on ``device``: where perturbations act."""
        x = self.uint8(rows)
        return self.preprocess.unit_from_uint8(x.to(device) if device is not None else x)

    def normalized(self, rows, device=None) -> torch.Tensor:
        """The model's input: equal to ``preprocess([open_rgb(src) for src in rows])``, bit for bit."""
        return self.preprocess.normalize(self.unit(rows, device))

    def rows_of(self, image_ids: Sequence) -> np.ndarray:
        """Manifest rows of ``image_ids`` (first occurrence); KeyError names ids that are not in the manifest."""
        pos: dict = {}
        for r, iid in enumerate(self.image_ids):
            pos.setdefault(iid, r)
        missing = [i for i in image_ids if i not in pos]
        if missing:
            raise KeyError(f"{len(missing)} image id(s) are not in the manifest, e.g. {list(missing)[:5]}")
        return np.asarray([pos[i] for i in image_ids], dtype=np.int64)

    def loader(self, image_ids: Sequence | None = None, device=None) -> Callable[[list[int]], torch.Tensor]:
        """``load(positions) -> (B, 3, H, W)`` normalised pixels, positions indexing ``image_ids`` (default: the
        manifest's rows): what re-rankers and cross encoders take."""
        rows = np.arange(len(self)) if image_ids is None else self.rows_of(image_ids)
        return lambda idx: self.normalized(rows[np.asarray(idx, dtype=np.int64)], device)


def _reopen(path, valid, image_ids, preprocess, skipped, key, reasons) -> DecodedPixels:
    return DecodedPixels(np.load(path, mmap_mode="r"), valid, image_ids, preprocess, skipped, key, True, Path(path),
                         reasons)


def _paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"{key}.npy", directory / f"{key}.json"


def _load(directory: Path, key: str, preprocess) -> DecodedPixels | None:
    def read(apath: Path, meta: dict) -> DecodedPixels:
        arr = np.load(apath, mmap_mode="r", allow_pickle=False)
        if list(arr.shape) != meta["shape"] or arr.dtype != np.uint8:
            raise ValueError(f"array shape/dtype {arr.shape}/{arr.dtype} does not match the sidecar")
        if _digest(arr) != meta["sha256"]:
            raise ValueError("checksum mismatch")
        valid = np.asarray(meta["valid"], dtype=bool)
        if len(valid) != len(arr) or len(meta["image_ids"]) != len(arr):
            raise ValueError("sidecar rows do not match the array")
        return _assemble(arr, valid, meta["image_ids"], meta["skipped"], preprocess, key, True, apath)

    hit = load_sidecar_entry(*_paths(directory, key), key, FORMAT_VERSION, read, "pixel", stacklevel=3)
    return hit[0] if hit is not None else None


def _assemble(arr, valid, image_ids, skipped_rows, preprocess, key, hit, path) -> DecodedPixels:
    skipped = (pd.DataFrame([{k: s[k] for k in REPORT_COLUMNS} for s in skipped_rows], columns=REPORT_COLUMNS)
               if skipped_rows else empty_report())
    reasons = {int(s["row"]): s["reason"] for s in skipped_rows}
    return DecodedPixels(arr, valid, list(image_ids), preprocess, skipped, key, hit, path, reasons)


def _decode_one(src, preprocess):
    img, reason = try_open_rgb(src)
    if img is None:
        return None, reason
    try:
        return preprocess.to_uint8([img])[0].numpy(), None
    except Exception as e:  # noqa: BLE001 -- a failed image is reported, not fatal
        return None, f"preprocessing failed ({type(e).__name__}: {e})"


def _compute(manifest: pd.DataFrame, preprocess, directory: Path, key: str, workers: int, progress: bool):
    ids = [jsonable(i) for i in manifest["image_id"]]
    sources = list(manifest["image"])
    h, w = preprocess.output_size
    directory.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(directory)  # what a killed writer left behind
    apath, jpath = _paths(directory, key)
    valid = np.zeros(len(sources), dtype=bool)
    skipped = []
    tmp = temp_name(apath)  # unique per writer: concurrent writers never share a file
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(sources), 3, h, w))
        with timed("decode"):
            if workers > 1:  # Pillow releases the GIL while decoding and resizing: threads scale
                ex = ThreadPoolExecutor(max_workers=workers)
                results = ex.map(lambda s: _decode_one(s, preprocess), sources)
            else:
                ex, results = None, (_decode_one(s, preprocess) for s in sources)
            if progress:
                results = tqdm(results, total=len(sources), desc="decoding images", leave=False)
            try:
                for r, (x, reason) in enumerate(results):
                    if x is None:
                        skipped.append({"row": r, "image_id": ids[r], "path": _describe(sources[r]), "reason": reason})
                    else:
                        arr[r] = x
                        valid[r] = True
            finally:
                if ex is not None:
                    ex.shutdown()
        arr.flush()
        digest = _digest(arr)
        del arr
        os.replace(tmp, apath)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"key": key, "format": FORMAT_VERSION, "shape": [len(sources), 3, h, w], "image_ids": ids,
            "valid": valid.tolist(), "skipped": skipped, "sha256": digest, "geometry": geometry(preprocess)}
    meta = json.loads(json.dumps(meta, default=jsonable))
    meta["meta_sha256"] = sidecar_digest(meta)  # image ids / valid rows are covered, not only the array
    atomic_write(jpath, lambda p: Path(p).write_text(json.dumps(meta)))  # commits the entry
    arr = np.load(apath, mmap_mode="r", allow_pickle=False)
    return _assemble(arr, valid, ids, skipped, preprocess, key, False, apath)


def decoded_pixels(
    manifest: pd.DataFrame,
    preprocess,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    progress: bool = True,
) -> DecodedPixels:
    """The decoded, resized/cropped uint8 pixels of every row of ``manifest`` under ``preprocess``.

    Computed once per (manifest content, preprocessing geometry) and kept in the cache (module docstring);
    within one process the opened entry is reused. ``workers > 1`` decodes with that many threads.
    Raises TypeError when ``preprocess`` cannot be cached (see :func:`cacheable`).
    """
    if not cacheable(preprocess):
        raise TypeError(f"{type(preprocess).__name__} cannot use the pixel cache: it needs to_uint8 / unit_from_uint8 "
                        "/ normalize, a config and a fixed output size (a crop or an (h, w) resize)")
    for col in ("image_id", "image"):
        if col not in manifest.columns:
            raise ValueError(f"the manifest has no column {col!r}")
    key = pixel_key(manifest, preprocess)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "pixels"
    memo_key = (str(directory.resolve()), key)
    with _memo_lock:
        hit = _memo.get(memo_key)
    if hit is not None and hit.path is not None and hit.path.exists():
        return DecodedPixels(hit.array, hit.valid, hit.image_ids, preprocess, hit.skipped, key, True, hit.path,
                             hit.reasons)
    out = _load(directory, key, preprocess)
    if out is None:
        out = _compute(manifest, preprocess, directory, key, int(workers), progress)
    with _memo_lock:
        _memo[memo_key] = out
    return out


def clear_memo() -> None:
    """Forget the entries opened in this process (the files stay)."""
    with _memo_lock:
        _memo.clear()


def pixel_loader(preprocess, manifest: pd.DataFrame, image_ids: Sequence | None = None, device=None,
                 cache_dir=None, progress: bool = False) -> Callable[[list[int]], torch.Tensor]:
    """``load(positions) -> (B, 3, H, W)`` of ``preprocess``'s normalised pixels, positions indexing
    ``image_ids`` (default: the manifest's rows). Through the pixel cache when ``preprocess`` allows it, else
    decoded on every call (a preprocess without a fixed output size, e.g. a custom callable)."""
    if cacheable(preprocess):
        return decoded_pixels(manifest, preprocess, cache_dir=cache_dir, progress=progress).loader(image_ids, device)
    src: dict = {}
    for iid, s in zip(manifest["image_id"], manifest["image"]):
        src.setdefault(iid, s)
    order = list(manifest["image"]) if image_ids is None else [src[i] for i in image_ids]

    def load(idx: list[int]) -> torch.Tensor:
        with timed("decode"):
            x = preprocess([open_rgb(order[r]) for r in idx])
        return x.to(device) if device is not None else x

    return load


__all__ = ["DecodedPixels", "cacheable", "clear_memo", "decoded_pixels", "geometry", "images_fingerprint", "pixel_key", "pixel_loader"]
