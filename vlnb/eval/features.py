"""Image and text embeddings, computed once and cached on disk.

:func:`image_features` decodes a manifest's images (bad ones are skipped and reported, never fatal),
preprocesses them with the model's own :class:`ImagePreprocess` (once per manifest and geometry: the decoded
pixels are cached as uint8, :mod:`vlnb.data.pixels`), optionally applies a robustness
*perturbation*, and encodes them with ``model.encode_image`` (``torch.inference_mode``; autocast when a
float32 model runs on CUDA, bf16 or fp16 by the GPU's capability). :func:`text_features` does the same for a list of texts.

Cache layout (``vlnb.paths.cache_dir()/features/`` unless ``cache_dir`` is given): ``<key>.safetensors``
(the embeddings) + ``<key>.json`` (key, image ids, skipped-image report, SHA-256 of the tensor bytes).
The key is the SHA-256 of the model's weight fingerprint, its preprocessing config, the manifest's content
fingerprint (or the texts), the perturbation key and the compute precision, so any change recomputes.
A cache entry that cannot be read or fails its checksum is reported with a warning and recomputed.

Perturbations: an object with a ``key`` (str, part of the cache key) that is callable on a float batch
``(B, 3, H, W)`` in [0, 1] (resized/cropped, *not* normalised) and returns the same shape. This needs the
model's preprocess to offer ``to_unit(images)`` and ``normalize(x)`` (``__call__ == normalize∘to_unit``);
the perturbation runs on the model's device, after batching, so it should not depend on batch composition
(one with ``accepts_ids = True`` is called as ``perturbation(pixels, ids=batch_image_ids)`` so it can seed
per image, as :mod:`vlnb.robustness.perturbations` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..data.images import REPORT_COLUMNS, empty_report, try_open_rgb
from ..data.manifest import fingerprint as manifest_fingerprint
from ..data.manifest import image_fingerprint, subset
from ..data.pixels import cacheable, decoded_pixels
from ..device import autocast, precision_name
from ..paths import atomic_write, clean_stale_temp, load_sidecar_entry, sidecar_digest
from ..paths import cache_dir as default_cache_dir
from ..progress import tqdm
from ..timing import timed

FORMAT_VERSION = 2  # 2: the sidecar carries its own checksum (meta_sha256)


def model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _uses_autocast(model) -> bool:
    return model_device(model).type == "cuda" and getattr(model, "dtype", torch.float32) == torch.float32


def autocast_for(model):
    """Autocast when a float32 ``model`` runs on CUDA (bf16 on compute capability >= 8, fp16 on older GPUs such
    as the T4: :func:`vlnb.device.autocast_dtype`), else a no-op context."""

    return autocast(model_device(model)) if _uses_autocast(model) else contextlib.nullcontext()


def compute_precision(model) -> str:
    """The precision ``model`` computes in (the autocast dtype on a GPU, else its dtype): part of every cache key."""
    return precision_name(model_device(model)) if _uses_autocast(model) else str(getattr(model, "dtype", "float32"))


@dataclass
class FeatureSet:
    """Image embeddings with row ``r`` belonging to ``image_ids[r]``; ``skipped`` lists the images left out."""

    embeddings: torch.Tensor
    image_ids: list
    skipped: pd.DataFrame = field(default_factory=empty_report)
    key: str = ""
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows(self, image_ids: Sequence) -> torch.Tensor:
        """Embeddings of ``image_ids`` (in that order); raises KeyError naming ids that have no embedding."""
        pos = {iid: r for r, iid in enumerate(self.image_ids)}
        missing = [i for i in image_ids if i not in pos]
        if missing:
            raise KeyError(f"{len(missing)} image id(s) have no embedding (skipped or absent), e.g. {missing[:5]}")
        return self.embeddings[[pos[i] for i in image_ids]]


# --------------------------------------------------------------------------------------------- cache


def jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


def _cache_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _cache_paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"{key}.safetensors", directory / f"{key}.json"


def _load_cache(directory: Path, key: str) -> tuple[torch.Tensor, dict] | None:
    """The cached ``(embeddings, meta)`` for ``key``, or None (absent, or unreadable -> warning)."""
    def read(tpath: Path, meta: dict) -> torch.Tensor:
        emb = load_file(str(tpath))["embeddings"]
        if list(emb.shape) != meta["shape"] or _tensor_digest(emb) != meta["sha256"]:
            raise ValueError("tensor checksum/shape mismatch")
        return emb

    return load_sidecar_entry(*_cache_paths(directory, key), key, FORMAT_VERSION, read, "feature")


def _save_cache(directory: Path, key: str, emb: torch.Tensor, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tpath, jpath = _cache_paths(directory, key)
    emb = emb.contiguous()

    meta = {**meta, "key": key, "format": FORMAT_VERSION, "shape": list(emb.shape), "sha256": _tensor_digest(emb)}
    meta = json.loads(json.dumps(meta, default=jsonable))
    meta["meta_sha256"] = sidecar_digest(meta)  # the sidecar (image ids, skipped, ...) is covered too
    clean_stale_temp(directory)
    for path, write in ((tpath, lambda p: save_file({"embeddings": emb}, str(p))),
                        (jpath, lambda p: p.write_text(json.dumps(meta)))):
        atomic_write(path, write)  # unique temp name; the sidecar is written last: it commits the entry


def cached_tensor(kind: str, payload: dict, cache_dir, compute: Callable[[], tuple[torch.Tensor, dict]]):
    """``compute()`` unless a valid entry of ``kind`` and ``payload`` exists in ``cache_dir`` (default: vlnb's
    feature cache); returns ``(tensor, meta, key, hit)``. Entries are checksummed and written atomically."""
    key = _cache_key({"kind": kind, "format": FORMAT_VERSION, **payload})
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "features"
    hit = _load_cache(directory, key)
    if hit is not None:
        return hit[0], hit[1], key, True
    emb, meta = compute()
    _save_cache(directory, key, emb, meta)
    return emb, meta, key, False


# ---------------------------------------------------------------------------------------------- images


def _splits_uint8(pre) -> bool:
    """Whether ``pre`` offers the uint8 split (``to_uint8`` on the CPU, ``unit_from_uint8`` + ``normalize`` on the
    device, see :class:`vlnb.models.transforms.ImagePreprocess`)."""
    return all(callable(getattr(pre, a, None)) for a in ("to_uint8", "unit_from_uint8", "normalize"))


class ImageDataset(torch.utils.data.Dataset):
    """Decode + preprocess one manifest row; failures come back as a reason, not an exception.

    ``mode``: ``"uint8"`` (resized/cropped uint8 pixels; the model's device finishes the preprocessing),
    ``"unit"`` ([0, 1] float pixels) or ``"full"`` (the preprocess's normalised output)."""

    def __init__(self, sources: list, preprocess, mode: str):
        self.sources, self.preprocess, self.mode = sources, preprocess, mode

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        with timed("decode"):
            img, reason = try_open_rgb(self.sources[i])
            if img is None:
                return i, None, reason
            try:
                fn = {"uint8": getattr(self.preprocess, "to_uint8", None),
                      "unit": getattr(self.preprocess, "to_unit", None), "full": self.preprocess}[self.mode]
                x = fn([img])
                return i, x[0], None
            except Exception as e:  # noqa: BLE001 -- a failed image is reported, not fatal
                return i, None, f"preprocessing failed ({type(e).__name__}: {e})"


def _perturb(perturbation, pixels: torch.Tensor, batch_ids: list) -> torch.Tensor:
    """Apply ``perturbation``; one that sets ``accepts_ids`` also gets the batch's image ids (``ids=``), so
    random perturbations can seed per image and not depend on batch composition (vlnb.robustness)."""
    if getattr(perturbation, "accepts_ids", False):
        return perturbation(pixels, ids=[jsonable(i) for i in batch_ids])
    return perturbation(pixels)


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, r) for i, x, r in items if x is None]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], pixels, bad


def _describe(src) -> str:
    return f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def _embed_dim(model) -> tuple[int, ...]:
    d = getattr(model, "embed_dim", None)
    return (int(d),) if d else (0,)


def image_features(
    model,
    manifest: pd.DataFrame,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    perturbation=None,
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureSet:
    """Embeddings of every decodable image of ``manifest`` (a :mod:`vlnb.data.manifest` frame).

    Rows of ``.embeddings`` follow ``.image_ids`` (manifest order minus skipped images); ``.skipped`` is the
    ``image_id, path, reason`` report of images that could not be decoded or preprocessed. See the module
    docstring for the cache and for ``perturbation``. With an :class:`~vlnb.models.transforms.ImagePreprocess`
    (a fixed output size) the images come from the decoded-pixel cache (:mod:`vlnb.data.pixels`): decoded and
    resized/cropped once per manifest and geometry (``num_workers`` threads when that happens), stored as uint8,
    divided and normalised on the model's device, so every later model, perturbation and chapter skips the
    decoding; the values are those of ``preprocess(images)`` bit for bit. Other preprocess callables decode in
    ``num_workers`` DataLoader workers (0 = in this process) on every call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pre = model.preprocess
    if perturbation is not None:
        if not isinstance(getattr(perturbation, "key", None), str) or not callable(perturbation):
            raise TypeError("perturbation must be callable on a (B,3,H,W) [0,1] batch and have a str `.key`")
        if not (callable(getattr(pre, "to_unit", None)) and callable(getattr(pre, "normalize", None))):
            raise TypeError(
                f"{type(pre).__name__} lacks to_unit()/normalize(): perturbations need the unnormalised [0,1] "
                "pixels, which this model's preprocess does not expose"
            )
    payload = {
        "model": model.fingerprint(),
        "preprocess": getattr(pre, "config", None),
        "manifest": manifest_fingerprint(manifest),
        "perturbation": None if perturbation is None else perturbation.key,
        "precision": compute_precision(model),
    }
    ids = list(manifest["image_id"])
    sources = list(manifest["image"])

    def compute_from_pixels():
        # decoded once per (manifest, preprocessing geometry) in the pixel cache; normalised on the device

        px_dir = None if cache_dir is None else Path(cache_dir) / "pixels"
        px = decoded_pixels(manifest, pre, cache_dir=px_dir, workers=num_workers, progress=progress)
        device, ok = model_device(model), px.ok_rows
        # batches of manifest rows minus the bad ones, exactly as the decoding loader forms them (same bits)
        starts = range(0, len(ids), batch_size)
        if progress:
            starts = tqdm(starts, desc="encoding images", leave=False)
        chunks = []
        with timed("encoding"), torch.inference_mode(), autocast_for(model):
            for s in starts:
                rows = np.flatnonzero(px.valid[s : s + batch_size]) + s
                if len(rows) == 0:
                    continue
                pixels = px.unit(rows, device)
                if perturbation is not None:
                    pixels = _perturb(perturbation, pixels, [ids[i] for i in rows])
                chunks.append(model.encode_image(pre.normalize(pixels)).float().cpu())
        emb = torch.cat(chunks) if chunks else torch.empty((0, *_embed_dim(model)))
        skipped = [{c: jsonable(v) for c, v in r.items()} for r in px.skipped.to_dict("records")]
        return emb, {"image_ids": [jsonable(ids[i]) for i in ok], "skipped": skipped}

    def compute():
        if cacheable(pre):
            return compute_from_pixels()
        device = model_device(model)
        mode = "uint8" if _splits_uint8(pre) else ("unit" if perturbation is not None else "full")
        loader = torch.utils.data.DataLoader(
            ImageDataset(sources, pre, mode), batch_size=batch_size,
            num_workers=num_workers, collate_fn=_collate, shuffle=False, pin_memory=device.type == "cuda",
        )
        if progress:
            loader = tqdm(loader, desc="encoding images", leave=False)
        rows, chunks, skipped = [], [], []
        with timed("encoding"), torch.inference_mode(), autocast_for(model):
            for idx, pixels, bad in loader:
                skipped += [{"image_id": jsonable(ids[i]), "path": _describe(sources[i]), "reason": r} for i, r in bad]
                if pixels is None:
                    continue
                pixels = pixels.to(device, non_blocking=True)
                if mode == "uint8":
                    pixels = pre.unit_from_uint8(pixels)
                if mode != "full":
                    pixels = pre.normalize(_perturb(perturbation, pixels, [ids[i] for i in idx])
                                           if perturbation is not None else pixels)
                chunks.append(model.encode_image(pixels).float().cpu())
                rows += idx
        emb = torch.cat(chunks) if chunks else torch.empty((0, *_embed_dim(model)))
        return emb, {"image_ids": [jsonable(ids[i]) for i in rows], "skipped": skipped}

    emb, meta, key, hit = cached_tensor("image", payload, cache_dir, compute)
    skipped = pd.DataFrame(meta["skipped"], columns=REPORT_COLUMNS) if meta["skipped"] else empty_report()
    return FeatureSet(emb, list(meta["image_ids"]), skipped, key, hit)


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts, in order (part of a cache key)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\x1f")
    return h.hexdigest()


def pixels_key(preprocess, manifest: pd.DataFrame, image_ids: Sequence | None = None, perturbation=None) -> str:
    """What a batch of preprocessed pixels is, as a cache key: the images of ``manifest``'s rows of ``image_ids``
    (in that order; None: every row), the preprocessing config and the perturbation's key. Part of the key of
    re-ranked pair scores (:func:`vlnb.eval.rerank.rerank_similarity`); the images count, not the captions."""
    if image_ids is not None:
        pos = {iid: r for r, iid in enumerate(manifest["image_id"])}
        missing = [i for i in image_ids if i not in pos]
        if missing:
            raise KeyError(f"{len(missing)} image id(s) are not in the manifest, e.g. {list(missing)[:5]}")
        manifest = subset(manifest, [pos[i] for i in image_ids])
    payload = {"images": image_fingerprint(manifest), "preprocess": getattr(preprocess, "config", None),
               "perturbation": None if perturbation is None else perturbation.key}
    return _cache_key(payload)[:32]


def text_features(
    model,
    texts: Sequence[str],
    batch_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``(len(texts), D)`` float32 CPU text embeddings via ``model.encode_texts``, cached like images."""
    texts = list(texts)
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of str")
    payload = {"model": model.fingerprint(), "texts": texts_digest(texts), "n": len(texts), "precision": compute_precision(model)}

    def compute():
        if not texts:
            return torch.empty((0, *_embed_dim(model))), {}
        with timed("encoding"), torch.inference_mode(), autocast_for(model):
            emb = model.encode_texts(texts, batch_size=batch_size, progress=progress)
        return emb.float().cpu(), {}

    return cached_tensor("text", payload, cache_dir, compute)[0]
