"""Robust image decoding: every image becomes an RGB ``PIL.Image`` or a clear, recorded reason why not.

A run over thousands of images never dies on one bad file: :func:`open_rgb` raises
:class:`BadImageError` (with a short reason), and :func:`scan_images` turns those into a report
table ``(image_id, path, reason)`` that manifest builders return and write.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ParameterError
from ..progress import tqdm

# Never silently accept half an image: a truncated file is a bad file.
ImageFile.LOAD_TRUNCATED_IMAGES = False

REPORT_COLUMNS = ["image_id", "path", "reason"]

#: Images with more pixels than this are refused (a 120 KB PNG can declare 144 megapixels and decode to
#: about 1 GB). Override with the environment variable ``VLNB_MAX_IMAGE_PIXELS`` (an int; ``0`` = no limit)
#: or the ``max_pixels`` argument of :func:`open_rgb` / :func:`scan_images`.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


def max_image_pixels() -> int:
    """The pixel limit in force: ``$VLNB_MAX_IMAGE_PIXELS`` or :data:`DEFAULT_MAX_IMAGE_PIXELS` (0 = none)."""
    raw = os.environ.get("VLNB_MAX_IMAGE_PIXELS")
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ParameterError(f"environment variable VLNB_MAX_IMAGE_PIXELS: must be an int >= 0 (0 = no limit), "
                             f"got {raw!r}")
    return value


class BadImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short human-readable cause."""

    def __init__(self, reason: str, source: str = ""):
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


def _describe(src) -> str:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return str(src)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on white, 16-bit/float rescaled)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 65535.0
        else:  # 32-bit int or float: stretch the observed range
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        g = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(g, mode="L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    # CMYK, L, 1, YCbCr, LAB, HSV ...
    return im.convert("RGB")


def open_rgb(src: str | os.PathLike | bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode ``src`` (a path or encoded bytes) to an RGB image with EXIF orientation applied.

    Raises :class:`BadImageError` for missing, empty, non-image, truncated or too large inputs (more than
    ``max_pixels``, default :func:`max_image_pixels`, checked from the header before anything is decoded).
    """
    desc = _describe(src)
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if len(data) == 0:
            raise BadImageError("empty image bytes (0 bytes)", desc)
        fh = io.BytesIO(data)
    else:
        p = Path(src)
        if not p.exists():
            raise BadImageError("missing file", desc)
        if p.is_dir():
            raise BadImageError("is a directory, not an image file", desc)
        if p.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)", desc)
        fh = p
    try:
        with Image.open(fh) as im:
            w, h = im.size
            if limit and w * h > limit:
                raise BadImageError(
                    f"image too large: {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                    f"{limit / 1e6:g} (set VLNB_MAX_IMAGE_PIXELS to change it)", desc)
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)", desc) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e)
        if "truncated" in msg.lower() or "premature end" in msg.lower() or "broken data stream" in msg.lower():
            raise BadImageError(f"truncated image data ({msg})", desc) from None
        raise BadImageError(f"cannot decode image ({type(e).__name__}: {msg})", desc) from None


def try_open_rgb(src, max_pixels: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Like :func:`open_rgb` but returns ``(image, None)`` or ``(None, reason)``."""
    try:
        return open_rgb(src, max_pixels), None
    except BadImageError as e:
        return None, e.reason


def empty_report() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})


def scan_images(
    image_ids: Sequence, sources: Sequence, workers: int | None = None, progress: bool = False,
    max_pixels: int | None = None,
) -> pd.DataFrame:
    """Fully decode every source; return the report of the ones that fail (empty when all are fine)."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    limit = max_image_pixels() if max_pixels is None else max_pixels

    def check(src):
        return try_open_rgb(src, limit)[1]

    it: Iterable = zip(image_ids, sources)
    rows = []
    with ThreadPoolExecutor(max_workers=workers) as ex:
        reasons = ex.map(check, list(sources))
        if progress:
            reasons = tqdm(reasons, total=len(sources), desc="checking images", leave=False)
        for (iid, src), reason in zip(it, reasons):
            if reason is not None:
                rows.append({"image_id": iid, "path": _describe(src), "reason": reason})
    return pd.DataFrame(rows, columns=REPORT_COLUMNS) if rows else empty_report()


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an HxWx3 uint8 array as PNG bytes (lossless, deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
