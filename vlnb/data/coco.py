"""MS-COCO (2014/2017 layout) as a manifest, with boxes and masks reachable by ``image_id``.

``load_coco(root, split)`` reads ``root/annotations/captions_{split}.json`` and
``root/annotations/instances_{split}.json`` with :mod:`pycocotools` (exactly as for the full data set)
and returns ``(manifest, bad_image_report)``. One row per image *that has captions*: JPEGs in the
folder without annotations are ignored. With Karpathy's ``dataset_coco.json`` the rows are restricted
to one Karpathy subset (the 5k ``"test"`` split of the retrieval literature); since COCO 2017 train/val
hold the 2014 images under the same ids, pass ``split=("train2017", "val2017")`` to find all of them.

Objects (category, box, mask) come from the ``"coco"`` annotation provider registered here, reached
through :func:`vlnb.data.annotations.get_annotations`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from .annotations import ObjectAnnotation, register_provider
from .images import REPORT_COLUMNS, empty_report
from .manifest import drop_bad_images, make_manifest

NOT_IN_ROOT = "listed in Karpathy split but not found"


def _coco_api(path: str | os.PathLike):
    """``pycocotools.coco.COCO(path)`` without its chatter on stdout."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _as_list(x) -> list:
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)


def read_karpathy_split(
    path: str | os.PathLike, subset: str | Sequence[str] = "test"
) -> dict[int, tuple[str, str]]:
    """Karpathy's ``dataset_coco.json`` -> ``{cocoid: (karpathy split, "filepath/filename")}`` for ``subset``.

    ``subset`` is one split name or several (e.g. ``("train", "restval")``); order follows the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Karpathy split file not found: {path}")
    with open(path) as f:
        images = json.load(f).get("images")
    if not isinstance(images, list):
        raise ValueError(f"{path} is not a Karpathy split file: no top-level 'images' list")
    subsets = set(_as_list(subset))
    out = {
        int(im["cocoid"]): (
            str(im["split"]),
            f"{im.get('filepath', '')}/{im.get('filename', '')}".lstrip("/"),
        )
        for im in images
        if im.get("split") in subsets
    }
    if not out:
        found = sorted({str(im.get("split")) for im in images})
        raise ValueError(
            f"Karpathy split file {path} has no image in subset {sorted(subsets)}; its splits: {found}"
        )
    return out


def _annotation_files(root: Path, folder: str, require_captions: bool) -> tuple[Path | None, Path | None]:
    cap, inst = (root / "annotations" / f"{kind}_{folder}.json" for kind in ("captions", "instances"))
    if require_captions and not cap.is_file():
        raise FileNotFoundError(
            f"COCO captions file not found: {cap} (is root={root} and split={folder!r} right?)"
        )
    if not cap.is_file() and not inst.is_file():
        raise FileNotFoundError(
            f"neither {cap} nor {inst} exists (is root={root} and split={folder!r} right?)"
        )
    return (cap if cap.is_file() else None), (inst if inst.is_file() else None)


def _image_record(
    cid: int, info: dict, captions: list[str], anns: list[dict], cats: dict, folder_dir: Path
) -> dict:
    names = [cats[a["category_id"]]["name"] for a in anns]
    largest = max(anns, key=lambda a: float(a.get("area", 0.0)), default=None)
    return {
        "image_id": cid,
        "image": str(folder_dir / info["file_name"]),
        "captions": captions,
        "labels": sorted(set(names)),
        "width": int(info.get("width", 0)),
        "height": int(info.get("height", 0)),
        "coco_id": cid,
        "supercategories": sorted({cats[a["category_id"]]["supercategory"] for a in anns}),
        "primary_category": cats[largest["category_id"]]["name"] if largest else "",
        "n_instances": len(anns),
        "license": int(info.get("license", -1)),
        "folder": folder_dir.name,
    }


def load_coco(
    root: str | os.PathLike,
    split: str | Sequence[str] = "val2017",
    karpathy_split: str | os.PathLike | None = None,
    karpathy_subset: str | Sequence[str] = "test",
    check_images: bool = True,
    require_captions: bool = True,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """COCO images of ``root/<split>/`` (one folder or several) as ``(manifest, bad_image_report)``.

    Rows are the images with captions in ``captions_<split>.json`` (``require_captions=False`` also keeps
    images only listed in ``instances_<split>.json``, with no captions). ``labels`` are the sorted unique
    category names of the image's instances; metadata: ``width, height, coco_id, supercategories,
    primary_category`` (category of the largest-area instance, "" if none), ``n_instances, license, folder``.
    ``split`` column = the folder name, or with ``karpathy_split`` (path to Karpathy's ``dataset_coco.json``)
    the Karpathy split of the images kept (only those in ``karpathy_subset``); images listed there but
    absent from every folder are reported with reason ``"listed in Karpathy split but not found"``.
    ``image_id`` is the int COCO id. Captions are the official COCO ones, stripped, in annotation-id order.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"COCO root folder not found: {root}")
    folders = [str(f) for f in _as_list(split)]
    if not folders:
        raise ValueError("load_coco needs at least one split folder (e.g. 'val2017')")
    wanted = read_karpathy_split(karpathy_split, karpathy_subset) if karpathy_split is not None else None

    records: dict[int, dict] = {}
    instance_files: list[str] = []
    for folder in folders:
        cap_file, inst_file = _annotation_files(root, folder, require_captions)
        caps = _coco_api(cap_file) if cap_file else None
        inst = _coco_api(inst_file) if inst_file else None
        if inst_file:
            instance_files.append(str(inst_file.resolve()))
        ids: Iterable[int] = caps.imgs if caps else ()
        if caps and require_captions:
            ids = [i for i in caps.imgs if caps.imgToAnns.get(i)]
        if not require_captions and inst:
            ids = list(dict.fromkeys([*ids, *inst.imgs]))
        ids = [i for i in ids if i not in records and (wanted is None or i in wanted)]
        if progress:
            from tqdm.auto import tqdm

            ids = tqdm(ids, desc=f"COCO {folder}", leave=False)
        for i in ids:
            info = (caps.imgs.get(i) if caps else None) or inst.imgs[i]
            anns = inst.imgToAnns.get(i, []) if inst else []
            cap_anns = sorted(caps.imgToAnns.get(i, []), key=lambda a: a["id"]) if caps else []
            captions = [c["caption"].strip() for c in cap_anns if c["caption"].strip()]
            records[int(i)] = _image_record(
                int(i), info, captions, anns, inst.cats if inst else {}, root / folder
            )

    missing = empty_report()
    if wanted is not None:
        for cid, rec in records.items():
            rec["split"] = wanted[cid][0]
        order = [cid for cid in wanted if cid in records]  # Karpathy file order
        missing = pd.DataFrame(
            [
                {"image_id": cid, "path": rel, "reason": NOT_IN_ROOT}
                for cid, (_, rel) in wanted.items()
                if cid not in records
            ],
            columns=REPORT_COLUMNS,
        )
    else:
        for rec in records.values():
            rec["split"] = rec["folder"]
        order = list(records)
    meta = {
        "source": "coco",
        "annotations": {"kind": "coco", "instances": instance_files} if instance_files else None,
        "root": str(root.resolve()),
        "split": folders[0] if len(folders) == 1 else folders,
    }
    if wanted is not None:
        meta.update(
            karpathy_split=str(Path(karpathy_split).resolve()), karpathy_subset=_as_list(karpathy_subset)
        )
    df = make_manifest([records[c] for c in order], name="coco", meta=meta)
    report = empty_report()
    if check_images and len(df):
        df, report = drop_bad_images(df, progress=progress)
    if len(missing):
        report = pd.concat([r for r in (missing, report) if len(r)], ignore_index=True)
    return df, report[REPORT_COLUMNS].reset_index(drop=True)


@register_provider("coco")
def coco_provider(spec: dict):
    """Annotation provider: ``spec["instances"]`` (a path or list of paths) -> ``lookup(image_id)``.

    ``lookup`` returns the image's objects with category name, COCO ``bbox`` (x, y, w, h), a boolean
    ``(height, width)`` mask from ``COCO.annToMask`` (polygons and RLE alike), ``area`` and attributes
    ``supercategory``, ``iscrowd`` and ``annotation_id``.
    """
    apis = [_coco_api(p) for p in _as_list(spec.get("instances") or [])]
    if not apis:
        raise ValueError("coco annotation spec has no 'instances' file")

    def lookup(image_id) -> list[ObjectAnnotation]:
        iid = int(image_id)
        api = next((a for a in apis if iid in a.imgs), None)
        if api is None:
            raise KeyError(
                f"image_id {image_id!r} is in none of the COCO instance files {spec.get('instances')}"
            )
        out = []
        for a in sorted(api.imgToAnns.get(iid, []), key=lambda a: a["id"]):
            cat = api.cats[a["category_id"]]
            out.append(
                ObjectAnnotation(
                    category=cat["name"],
                    bbox=tuple(float(v) for v in a["bbox"]),
                    mask=api.annToMask(a).astype(bool),
                    area=float(a.get("area", 0.0)),
                    attributes={
                        "supercategory": cat["supercategory"],
                        "iscrowd": int(a.get("iscrowd", 0)),
                        "annotation_id": int(a["id"]),
                    },
                )
            )
        return out

    return lookup
