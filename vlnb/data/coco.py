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
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from pycocotools.coco import COCO

from ..errors import DataError
from ..progress import tqdm
from .annotations import ObjectAnnotation, register_provider
from .images import REPORT_COLUMNS, empty_report
from .manifest import drop_bad_images, make_manifest

NOT_IN_ROOT = "listed in Karpathy split but not found"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(section: str, i: int, e) -> str:
    ident = e.get("id") if isinstance(e, dict) else None
    return f"{section}[{i}]" + (f" (id {ident!r})" if ident is not None else "")


def read_coco_json(path: str | os.PathLike, kind: str = "captions") -> tuple[dict, list[dict]]:
    """Read and check a COCO annotation file (``kind`` "captions" or "instances").

    Returns ``(dataset, problems)``: ``dataset`` holds only usable entries; ``problems`` are report rows
    (``image_id, path, reason``) for data that is dropped: duplicate image ids (every entry with that id),
    caption annotations of images not in ``images``, blank captions. A file that cannot be used at all
    (not UTF-8, not JSON, not an object, an entry missing a field or with a wrong type, an unknown
    ``category_id``) raises :class:`vlnb.errors.DataError` naming the file, the entry and the field.
    """

    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    if not text.strip():
        raise DataError(path, None, "empty file (expected a COCO JSON object)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, None, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, f"top level must be a JSON object with 'images' and 'annotations', got a "
                                    f"{type(data).__name__}")
    for section in ("images", "annotations") + (("categories",) if kind == "instances" else ()):
        if not isinstance(data.get(section), list):
            got = "missing" if section not in data else f"a {type(data[section]).__name__}"
            raise DataError(path, section, f"must be a list, got {got}")

    def need(section, i, e, field, check, what):
        if not isinstance(e, dict):
            raise DataError(path, _entry(section, i, e), f"must be an object, got {type(e).__name__}")
        if field not in e:
            raise DataError(path, _entry(section, i, e), f"{field}: missing")
        if not check(e[field]):
            raise DataError(path, _entry(section, i, e), f"{field}: must be {what}, got {e[field]!r}")

    def nonempty_str(v) -> bool:
        return isinstance(v, str) and v.strip() != ""

    for i, im in enumerate(data["images"]):
        need("images", i, im, "id", _is_int, "an int")
        need("images", i, im, "file_name", nonempty_str, "a non-empty string")
    cats = {}
    if kind == "instances":
        for i, c in enumerate(data["categories"]):
            need("categories", i, c, "id", _is_int, "an int")
            need("categories", i, c, "name", nonempty_str, "a non-empty string")
            cats[c["id"]] = c
    for i, a in enumerate(data["annotations"]):
        need("annotations", i, a, "id", _is_int, "an int")
        need("annotations", i, a, "image_id", _is_int, "an int")
        if kind == "captions":
            need("annotations", i, a, "caption", lambda v: isinstance(v, str), "a string")
        else:
            need("annotations", i, a, "category_id", _is_int, "an int")
            if a["category_id"] not in cats:
                raise DataError(path, _entry("annotations", i, a),
                                f"category_id: unknown category_id {a['category_id']} (not in 'categories')")
            need("annotations", i, a, "bbox",
                 lambda v: isinstance(v, list) and len(v) == 4 and all(isinstance(x, (int, float)) for x in v),
                 "a list of 4 numbers")

    problems: list[dict] = []
    by_id: dict[int, list[dict]] = {}
    for im in data["images"]:
        by_id.setdefault(im["id"], []).append(im)
    dup = {i: ims for i, ims in by_id.items() if len(ims) > 1}
    for i, ims in dup.items():
        problems.append({"image_id": i, "path": str(path),
                         "reason": f"duplicate image id {i} in 'images' ({len(ims)} entries: "
                                   f"{', '.join(repr(im['file_name']) for im in ims)}); none used"})
    images = [im for im in data["images"] if im["id"] not in dup]
    listed = {im["id"] for im in images}
    anns, orphans, blank = [], {}, {}
    for a in data["annotations"]:
        if a["image_id"] in dup:
            continue
        if a["image_id"] not in listed:
            orphans.setdefault(a["image_id"], []).append(a["id"])
            continue
        if kind == "captions" and not a["caption"].strip():
            blank.setdefault(a["image_id"], []).append(a["id"])
            continue
        anns.append(a)
    for i, ids in orphans.items():
        problems.append({"image_id": i, "path": str(path),
                         "reason": f"{len(ids)} annotation(s) (ids {ids[:5]}) for image id {i}, which is not "
                                   "listed in 'images'; dropped"})
    kept = {a["image_id"] for a in anns}
    for i, ids in blank.items():
        reason = (f"{len(ids)} blank caption(s) (annotation ids {ids[:5]}) dropped" if i in kept else
                  f"all {len(ids)} caption(s) are blank (annotation ids {ids[:5]}); image not used")
        problems.append({"image_id": i, "path": str(path), "reason": reason})
    return {**data, "images": images, "annotations": anns}, problems


def _coco_api(path: str | os.PathLike, kind: str = "instances"):
    """A checked ``pycocotools.coco.COCO`` of ``path`` (see :func:`read_coco_json`), without its chatter on
    stdout; ``api.vlnb_problems`` holds the report rows of dropped entries."""

    data, problems = read_coco_json(path, kind)
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = data
        api.createIndex()
    api.vlnb_problems = problems
    return api


def _inside(root: Path, file_name: str) -> Path | None:
    """``root/file_name`` when it stays inside ``root`` (no absolute path, no ``..`` out of it), else None."""
    if Path(file_name).is_absolute() or os.path.isabs(file_name):
        return None
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, file_name))
    return Path(full) if full.startswith(base + os.sep) else None


def _as_list(x) -> list:
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)


_LAVIS_FILE = re.compile(r"coco_karpathy_(train|val|test)\.json$")
_COCO_FILE_ID = re.compile(r"(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def _karpathy_entries(path: Path, data) -> list[tuple[int, str, str]]:
    """``[(cocoid, split, relative image path)]`` of either split format (see :func:`read_karpathy_split`)."""

    if isinstance(data, dict) and isinstance(data.get("images"), list):  # Karpathy's dataset_coco.json
        out = []
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not _is_int(im.get("cocoid")) or not isinstance(im.get("split"), str):
                raise DataError(path, f"images[{i}]", "needs an int 'cocoid' and a str 'split' (Karpathy format)")
            out.append((im["cocoid"], im["split"], f"{im.get('filepath', '')}/{im.get('filename', '')}".lstrip("/")))
        return out
    if isinstance(data, list):  # LAVIS's coco_karpathy_{train,val,test}.json: one split per file
        m = _LAVIS_FILE.search(path.name)
        if m is None:
            raise DataError(path, None, "a list of {image, caption} entries (LAVIS format) must be named "
                                        "coco_karpathy_{train,val,test}.json: the name says which split it holds")
        out, seen = [], set()
        for i, e in enumerate(data):
            image = e.get("image") if isinstance(e, dict) else None
            fid = _COCO_FILE_ID.search(image) if isinstance(image, str) else None
            if fid is None:
                raise DataError(path, f"[{i}]", f"image: must be a COCO image path such as "
                                                f"'val2014/COCO_val2014_000000391895.jpg', got {image!r}")
            cid = int(fid.group(1))
            if cid not in seen:  # the train file has one entry per caption
                seen.add(cid)
                out.append((cid, m.group(1), image))
        return out
    raise DataError(path, None, "not a Karpathy split file: expected Karpathy's dataset_coco.json (an object with "
                                "an 'images' list) or LAVIS's coco_karpathy_<split>.json (a list)")


def read_karpathy_split(
    path: str | os.PathLike, subset: str | Sequence[str] = "test"
) -> dict[int, tuple[str, str]]:
    """A Karpathy split file -> ``{cocoid: (karpathy split, "folder/file name")}`` for ``subset``.

    Two formats are read: Karpathy's ``dataset_coco.json`` (``{"images": [{"cocoid", "split", "filepath",
    "filename"}]}``, every split in one file) and LAVIS's ``coco_karpathy_<split>.json`` (a list of
    ``{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ...}``, one split per file, named by the
    file; the id is the number in the image's name). ``subset`` is one split name or several (e.g.
    ``("train", "restval")``: LAVIS's train file already holds both); order follows the file.
    """

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Karpathy split file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, None, f"not a JSON file ({e})") from None
    entries = _karpathy_entries(path, data)
    subsets = set(_as_list(subset))
    if isinstance(data, list) and "restval" in subsets:
        subsets.add("train")  # LAVIS's train file = Karpathy train + restval
    out = {cid: (split, rel) for cid, split, rel in entries if split in subsets}
    if not out:
        found = sorted({split for _, split, _ in entries})
        raise ValueError(
            f"Karpathy split file {path} has no image in subset {sorted(subsets)}; its splits: {found}"
        )
    return out


def karpathy_folders(path: str | os.PathLike, subset: str | Sequence[str] = "test") -> list[str]:
    """The image folders (``val2014``, ``train2014``) the images of ``subset`` live in, by the split file."""
    folders = {rel.split("/", 1)[0] for _, rel in read_karpathy_split(path, subset).values() if "/" in rel}
    return sorted(folders)


def coco_split_folders(root: str | os.PathLike, karpathy_split: str | os.PathLike | None = None,
                       subset: str | Sequence[str] = "test", default: str | Sequence[str] = "val2017") -> tuple:
    """Which folders of ``root`` to read: with a Karpathy split file, the 2014 folders its images live in when
    ``root`` has their annotations (the 5k test needs val2014 only), else COCO 2017's train2017 + val2017 (the
    same images under the same ids); without one, ``default``."""
    if karpathy_split is None:
        return tuple(_as_list(default))
    root = Path(root)
    folders = karpathy_folders(karpathy_split, subset)
    if folders and all((root / "annotations" / f"captions_{f}.json").is_file() for f in folders):
        return tuple(folders)
    return ("train2017", "val2017")


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
    problems: list[dict] = []  # dropped annotation data and refused paths, for the bad-data report
    for folder in folders:
        cap_file, inst_file = _annotation_files(root, folder, require_captions)
        caps = _coco_api(cap_file, "captions") if cap_file else None
        inst = _coco_api(inst_file, "instances") if inst_file else None
        for api in (caps, inst):
            problems.extend(api.vlnb_problems if api is not None else [])
        if inst_file:
            instance_files.append(str(inst_file.resolve()))
        ids: Iterable[int] = caps.imgs if caps else ()
        if caps and require_captions:
            ids = [i for i in caps.imgs if caps.imgToAnns.get(i)]
        if not require_captions and inst:
            ids = list(dict.fromkeys([*ids, *inst.imgs]))
        ids = [i for i in ids if i not in records and (wanted is None or i in wanted)]
        if progress:
            ids = tqdm(ids, desc=f"COCO {folder}", leave=False)
        for i in ids:
            info = (caps.imgs.get(i) if caps else None) or inst.imgs[i]
            if _inside(root, os.path.join(folder, info["file_name"])) is None:
                problems.append({"image_id": int(i), "path": str(info["file_name"]),
                                 "reason": f"file_name points outside the data root {root} (absolute or '..'); "
                                           "refused"})
                continue
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
    bad_data = pd.DataFrame(problems, columns=REPORT_COLUMNS) if problems else empty_report()
    parts = [r for r in (missing, bad_data, report) if len(r)]
    if parts:
        report = pd.concat(parts, ignore_index=True)
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
