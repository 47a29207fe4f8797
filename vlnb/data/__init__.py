"""The data layer: one manifest format, robust images, loaders behind :func:`build_manifest`."""

from .annotations import ObjectAnnotation, get_annotations
from .builder import DATASETS, build_manifest
from .images import BadImageError, open_rgb, scan_images
from .manifest import (
    ManifestError,
    drop_bad_images,
    fingerprint,
    load_manifest,
    make_manifest,
    save_manifest,
    subset,
    subset_ids,
    summary,
    texts_and_targets,
    validate_manifest,
)

__all__ = [
    "DATASETS",
    "BadImageError",
    "ManifestError",
    "ObjectAnnotation",
    "build_manifest",
    "drop_bad_images",
    "fingerprint",
    "get_annotations",
    "load_manifest",
    "make_manifest",
    "open_rgb",
    "save_manifest",
    "scan_images",
    "subset",
    "subset_ids",
    "summary",
    "texts_and_targets",
    "validate_manifest",
]
