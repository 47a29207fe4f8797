"""Robust image decoding (vlnb.data.images) and the manifest's bad-image handling / parquet round trip."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlnb.data.images import REPORT_COLUMNS, BadImageError, open_rgb, scan_images, try_open_rgb
from vlnb.data.manifest import (
    drop_bad_images,
    fingerprint,
    load_manifest,
    make_manifest,
    report_path,
    save_manifest,
)
from vlnb.paths import shared_data_dir

COCO_VAL = shared_data_dir() / "coco-mini" / "val2017"
needs_coco = pytest.mark.skipif(not COCO_VAL.is_dir(), reason="shared coco-mini data not available")


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_array(src) -> np.ndarray:
    im = open_rgb(src)
    a = np.asarray(im)
    assert im.mode == "RGB" and a.dtype == np.uint8 and a.shape == (im.height, im.width, 3)
    return a


# ----------------------------------------------------------------------------- decoding every mode


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    im.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    a = rgb_array(encode(im, "JPEG", exif=exif, quality=95))
    assert a.shape == (40, 20, 3)  # width and height swapped
    top, bottom = a[5, 10], a[35, 10]  # the left (red) half is now on top
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50
    # without the EXIF tag nothing is rotated
    assert rgb_array(encode(im, "JPEG", quality=95)).shape == (20, 40, 3)


@pytest.mark.parametrize(
    "mode, color, fmt, expected",
    [
        ("CMYK", (0, 255, 255, 0), "JPEG", (255, 0, 0)),  # CMYK red
        ("CMYK", (0, 0, 0, 255), "TIFF", (0, 0, 0)),  # pure black ink
        ("L", 100, "PNG", (100, 100, 100)),
        ("L", 200, "JPEG", (200, 200, 200)),
        ("1", 1, "PNG", (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), "PNG", (10, 20, 30)),  # opaque: colour kept
        ("RGBA", (10, 20, 30, 0), "PNG", (255, 255, 255)),  # transparent: white background
        ("RGBA", (0, 0, 0, 128), "PNG", (127, 127, 127)),  # half-transparent black on white
        ("LA", (0, 255), "PNG", (0, 0, 0)),
        ("LA", (0, 0), "PNG", (255, 255, 255)),
    ],
)
def test_modes_become_rgb_uint8(mode, color, fmt, expected):
    a = rgb_array(encode(Image.new(mode, (8, 6), color), fmt))
    assert a.shape == (6, 8, 3)
    np.testing.assert_allclose(a.reshape(-1, 3).mean(0), expected, atol=3)


def test_palette_with_and_without_transparency():
    pal = [255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6)  # index 0 red, 1 green
    im = Image.new("P", (4, 2), 0)
    im.putpalette(pal)
    im.putpixel((3, 1), 1)
    a = rgb_array(encode(im))
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[1, 3]) == (0, 255, 0)
    # index 0 transparent: composited on white, index 1 stays green
    b = rgb_array(encode(im, transparency=0))
    assert tuple(b[0, 0]) == (255, 255, 255) and tuple(b[1, 3]) == (0, 255, 0)


def test_16_bit_grayscale_is_rescaled():
    arr = np.array([[0, 65535, 32768, 1000]], dtype=np.uint16)
    png = encode(Image.fromarray(arr))
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    a = rgb_array(png)
    np.testing.assert_array_equal(a[0, :, 0], np.round(arr[0] / 65535 * 255).astype(np.uint8))
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


def test_path_and_bytes_decode_identically(tmp_path):
    png = encode(Image.new("RGB", (5, 3), (1, 2, 3)))
    p = tmp_path / "x.png"
    p.write_bytes(png)
    np.testing.assert_array_equal(rgb_array(p), rgb_array(png))
    np.testing.assert_array_equal(rgb_array(str(p)), rgb_array(bytearray(png)))


# ----------------------------------------------------------------------------- bad inputs


def bad_cases(tmp_path: Path) -> dict[str, tuple[object, str]]:
    """name -> (source, expected substring of the reason)."""
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    (tmp_path / "a_folder.jpg").mkdir()
    cases = {
        "zero-byte file": (tmp_path / "empty.jpg", "empty file"),
        "zero bytes": (b"", "empty image bytes"),
        "text file": (tmp_path / "notes.jpg", "not an image"),
        "text bytes": (b"not an image", "not an image"),
        "missing file": (tmp_path / "nope.jpg", "missing file"),
        "directory": (tmp_path / "a_folder.jpg", "directory"),
    }
    if COCO_VAL.is_dir():
        real = min(COCO_VAL.glob("*.jpg")).read_bytes()
        (tmp_path / "half.jpg").write_bytes(real[: len(real) // 2])
        cases["truncated jpeg"] = (tmp_path / "half.jpg", "truncated")
    return cases


def test_bad_inputs_raise_with_reason(tmp_path):
    for name, (src, reason) in bad_cases(tmp_path).items():
        with pytest.raises(BadImageError) as e:
            open_rgb(src)
        assert reason in e.value.reason, (name, e.value.reason)
        assert try_open_rgb(src) == (None, e.value.reason)


@needs_coco
def test_real_coco_jpeg_decodes_fully():
    p = min(COCO_VAL.glob("*.jpg"))
    a = rgb_array(p)
    with Image.open(p) as im:
        assert a.shape[:2] == (im.height, im.width)
    assert a.std() > 10  # real content, not a blank canvas


def test_drop_bad_images_keeps_good_rows_and_reports_each_bad_one(tmp_path):
    cases = bad_cases(tmp_path)
    good = encode(Image.new("RGB", (4, 4), (9, 9, 9)))
    good_path = tmp_path / "good.png"
    good_path.write_bytes(good)
    rows = [
        {"image_id": f"bad-{n}", "image": s if isinstance(s, bytes) else str(s), "split": "test"}
        for n, (s, _) in cases.items()
    ]
    rows += [
        {"image_id": "good-bytes", "image": good, "split": "test"},
        {"image_id": "good-path", "image": str(good_path), "split": "test"},
    ]
    df = make_manifest(rows, name="mixed", meta={"source": "unit"})
    kept, report = drop_bad_images(df, workers=2)
    assert list(kept["image_id"]) == ["good-bytes", "good-path"]
    assert kept.attrs["vlnb"] == df.attrs["vlnb"]
    assert list(report.columns) == REPORT_COLUMNS and len(report) == len(cases)
    by_id = report.set_index("image_id")
    for n, (src, reason) in cases.items():
        assert reason in by_id.loc[f"bad-{n}", "reason"]
        assert by_id.loc[f"bad-{n}", "path"] == (
            f"<{len(src)} bytes>" if isinstance(src, bytes) else str(src)
        )


def test_200_images_with_3_bad_files(tmp_path):
    rows = []
    for i in range(200):
        p = tmp_path / f"{i:03d}.png"
        p.write_bytes(encode(Image.new("RGB", (6, 6), (i, 255 - i, 7))))
        rows.append({"image_id": i, "image": str(p), "captions": [f"image {i}"], "split": "test"})
    (tmp_path / "017.png").write_bytes(b"")
    (tmp_path / "101.png").write_text("oops")
    (tmp_path / "150.png").unlink()
    df = make_manifest(rows, name="two-hundred")
    kept, report = drop_bad_images(df)
    assert len(kept) == 197 and len(report) == 3
    assert sorted(report["image_id"]) == [17, 101, 150]
    assert not set(kept["image_id"]) & {17, 101, 150}
    assert list(scan_images([0, 1], [rows[0]["image"], rows[1]["image"]]).columns) == REPORT_COLUMNS


# ----------------------------------------------------------------------------- parquet round trip


@pytest.mark.parametrize("kind", ["bytes", "path"])
def test_save_load_manifest_round_trip(tmp_path, kind):
    imgs = [encode(Image.new("RGB", (3, 3), (i, i, i))) for i in range(4)]
    if kind == "path":
        for i, b in enumerate(imgs):
            (tmp_path / f"{i}.png").write_bytes(b)
        imgs = [str(tmp_path / f"{i}.png") for i in range(4)]
    df = make_manifest(
        pd.DataFrame(
            {
                "image_id": [10, 11, 12, 13],
                "image": imgs,
                "captions": [["a cat", "a small cat"], [], ["dog"], ["x", "y", "z"]],
                "split": ["test"] * 4,
                "labels": [["cat"], [], ["dog"], []],
                "width": [3, 3, 3, 3],
                "group": ["g1", "g2", "g1", "g2"],
            }
        ),
        name="roundtrip",
        meta={"annotations": None, "root": "/somewhere", "split": ["a", "b"]},
    )
    report = pd.DataFrame([{"image_id": 99, "path": "/gone.jpg", "reason": "missing file"}])
    path = save_manifest(df, tmp_path / "m" / "manifest.parquet", report=report)
    back = load_manifest(path)
    assert back.attrs["vlnb"] == {
        "name": "roundtrip",
        "annotations": None,
        "root": "/somewhere",
        "split": ["a", "b"],
    }
    assert list(back.columns) == list(df.columns)
    assert list(back["image_id"]) == [10, 11, 12, 13]
    assert list(back["image"]) == list(df["image"])
    assert [list(c) for c in back["captions"]] == [["a cat", "a small cat"], [], ["dog"], ["x", "y", "z"]]
    assert [list(c) for c in back["labels"]] == [["cat"], [], ["dog"], []]
    assert list(back["group"]) == ["g1", "g2", "g1", "g2"]
    assert fingerprint(back) == fingerprint(df)
    rep = pd.read_csv(report_path(path))
    assert rep.to_dict("records") == [{"image_id": 99, "path": "/gone.jpg", "reason": "missing file"}]


def test_load_manifest_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest file not found"):
        load_manifest(tmp_path / "nothing.parquet")
