"""Decoded-pixel cache (vlnb.data.pixels) and the per-category timers (vlnb.timing)."""

import io
import json
import pickle
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vlnb import timing
from vlnb.data import make_manifest, open_rgb
from vlnb.data.images import BadImageError, encode_png
from vlnb.data.pixels import cacheable, clear_memo, decoded_pixels, pixel_key, pixel_loader
from vlnb.models.transforms import ImagePreprocess


def _png(seed, h=23, w=17):
    return encode_png(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _jpeg_rotated(seed):
    """A JPEG with EXIF orientation 6 (rotate 90): decoding must apply it."""
    im = Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(20, 31, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def _manifest(tmp_path, n=6, bad=True):
    recs = [{"image_id": i, "image": _png(i), "captions": [f"c{i}"], "split": "test"} for i in range(n)]
    recs.append({"image_id": 50, "image": _jpeg_rotated(7), "captions": ["r"], "split": "test"})
    f = tmp_path / "file.png"
    f.write_bytes(_png(99, 40, 30))
    recs.append({"image_id": 51, "image": str(f), "captions": ["f"], "split": "test"})
    if bad:
        recs.insert(2, {"image_id": 100, "image": b"definitely not an image", "captions": ["x"], "split": "test"})
        recs.append({"image_id": 101, "image": str(tmp_path / "missing.jpg"), "captions": ["y"], "split": "test"})
    return make_manifest(recs, name="pixels-test")


PRE = ImagePreprocess(16, crop=12, resample="bicubic")


@pytest.fixture(autouse=True)
def _fresh_memo():
    clear_memo()
    yield
    clear_memo()


def test_cached_pixels_equal_the_uncached_path_bit_for_bit(tmp_path):
    df = _manifest(tmp_path)
    px = decoded_pixels(df, PRE, cache_dir=tmp_path / "px", progress=False)
    assert not px.from_cache and px.array.dtype == np.uint8 and px.array.shape == (len(df), 3, 12, 12)
    assert px.skipped["image_id"].tolist() == [100, 101]
    ok = px.ok_rows
    assert [px.image_ids[r] for r in ok] == [0, 1, 2, 3, 4, 5, 50, 51]
    imgs = [open_rgb(df["image"].iloc[r]) for r in ok]
    assert torch.equal(px.normalized(ok), PRE(imgs))  # decode + EXIF + resize/crop + normalise: same bits
    assert torch.equal(px.unit(ok), PRE.to_unit(imgs))
    assert torch.equal(px.uint8(ok), PRE.to_uint8(imgs))
    with pytest.raises(BadImageError, match="image_id 100"):
        px.uint8([2])
    # a second process (no memo) reads the file: the same pixels, from the cache
    clear_memo()
    again = decoded_pixels(df, PRE, cache_dir=tmp_path / "px", progress=False)
    assert again.from_cache and np.array_equal(np.asarray(again.array), np.asarray(px.array))
    assert again.skipped.equals(px.skipped)
    # loaders by image id (re-rankers, cross encoders): positions index the given ids
    load = pixel_loader(PRE, df, image_ids=[51, 0], cache_dir=tmp_path / "px")
    assert torch.equal(load([1, 0]), PRE([imgs[0], imgs[-1]]))


def test_pixel_loader_without_a_fixed_size_decodes_each_time(tmp_path):
    pre = ImagePreprocess(16)  # shortest edge only: sizes differ with aspect ratio, nothing to cache
    assert not cacheable(pre) and cacheable(PRE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLNB_PIXEL_CACHE", "0")  # switched off: every use decodes again
        assert not cacheable(PRE)
    df = _manifest(tmp_path, bad=False)
    load = pixel_loader(pre, df, image_ids=[3])
    assert torch.equal(load([0]), pre([open_rgb(df["image"].iloc[3])]))
    with pytest.raises(TypeError, match="pixel cache"):
        decoded_pixels(df, pre, cache_dir=tmp_path)


def test_recomputed_when_manifest_or_geometry_changes_shared_across_normalisation(tmp_path):
    d = tmp_path / "px"
    df = _manifest(tmp_path, bad=False)
    a = decoded_pixels(df, PRE, cache_dir=d, progress=False)
    # another normalisation, same geometry: the same entry
    other_norm = ImagePreprocess(16, crop=12, resample="bicubic", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    clear_memo()
    assert decoded_pixels(df, other_norm, cache_dir=d, progress=False).from_cache
    # captions do not change pixels; an image's content does
    assert pixel_key(df.assign(captions=[["other"]] * len(df)), PRE) == a.key
    changed = df.copy()
    changed.at[0, "image"] = _png(1234)
    b = decoded_pixels(changed, PRE, cache_dir=d, progress=False)
    assert b.key != a.key and not b.from_cache
    assert not np.array_equal(np.asarray(b.array[0]), np.asarray(a.array[0]))
    assert np.array_equal(np.asarray(b.array[1:]), np.asarray(a.array[1:]))
    # a file rewritten in place (same path, new mtime/size) is a new entry
    f = tmp_path / "file.png"
    time.sleep(0.01)
    f.write_bytes(_png(98, 40, 30))
    assert pixel_key(df, PRE) != a.key
    # another geometry (resample, crop, size) is another entry
    for pre in (ImagePreprocess(16, crop=12, resample="bilinear"), ImagePreprocess(16, crop=10),
                ImagePreprocess((12, 12))):
        assert pixel_key(changed, pre) != b.key
        c = decoded_pixels(changed, pre, cache_dir=d, progress=False)
        assert not c.from_cache
        assert torch.equal(c.normalized(c.ok_rows), pre([open_rgb(s) for s in changed["image"]]))


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar", "garbage"])
def test_a_corrupt_entry_is_reported_and_recomputed(tmp_path, damage):
    d = tmp_path / "px"
    df = _manifest(tmp_path)
    a = decoded_pixels(df, PRE, cache_dir=d, progress=False)
    ref = np.array(a.array)
    npy, side = d / f"{a.key}.npy", d / f"{a.key}.json"
    del a
    clear_memo()
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(npy.read_bytes())
        raw[-5] ^= 0xFF
        npy.write_bytes(bytes(raw))
    elif damage == "sidecar":
        side.write_text("{not json")
    else:
        npy.write_bytes(b"\x00garbage")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = decoded_pixels(df, PRE, cache_dir=d, progress=False)
    assert not b.from_cache
    assert any("pixel cache entry" in str(x.message) and "recomputing" in str(x.message) for x in w)
    assert np.array_equal(np.asarray(b.array), ref)
    clear_memo()
    assert decoded_pixels(df, PRE, cache_dir=d, progress=False).from_cache  # repaired


def test_concurrent_writers_use_unique_temp_names_and_atomic_replace(tmp_path, monkeypatch):
    import os

    from vlnb.data import pixels as mod

    d = tmp_path / "px"
    df = _manifest(tmp_path)
    replaced, real_replace = [], os.replace

    def recording_replace(src, dst):
        replaced.append((str(src), str(dst)))
        time.sleep(0.02)  # widen the window in which the writers overlap
        return real_replace(src, dst)

    monkeypatch.setattr(mod.os, "replace", recording_replace)
    out, errors = [], []

    def write():
        try:
            out.append(mod._compute(df, PRE, d, pixel_key(df, PRE), 0, False))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 4
    temps = [s for s, _ in replaced]
    assert len(set(temps)) == len(temps) == 8  # an array and a sidecar per writer, every temp name unique
    assert all(dst.endswith((".npy", ".json")) and ".tmp" not in dst for _, dst in replaced)
    assert sorted(p.name for p in d.iterdir()) == sorted([f"{out[0].key}.npy", f"{out[0].key}.json"])  # no temps left
    clear_memo()
    final = decoded_pixels(df, PRE, cache_dir=d, progress=False)
    assert final.from_cache and all(np.array_equal(np.asarray(final.array), np.asarray(o.array)) for o in out)


def test_workers_reopen_the_memory_map_and_threads_give_the_same_pixels(tmp_path):
    df = _manifest(tmp_path)
    px = decoded_pixels(df, PRE, cache_dir=tmp_path / "a", progress=False)
    blob = pickle.dumps(px)
    assert len(blob) < px.array.nbytes  # the path travels, not the pixels
    back = pickle.loads(blob)
    assert torch.equal(back.normalized(back.ok_rows), px.normalized(px.ok_rows))
    threaded = decoded_pixels(df, PRE, cache_dir=tmp_path / "b", workers=3, progress=False)
    assert np.array_equal(np.asarray(threaded.array), np.asarray(px.array))
    assert threaded.skipped.equals(px.skipped)


def test_pair_dataset_reads_the_cache_with_the_same_tensors_and_errors(tmp_path, monkeypatch):
    from vlnb.train.trainer import PairDataset

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))

    class Legacy:  # the same preprocessing without the uint8 split: decoded on every access
        def __call__(self, images):
            return PRE(images)

    df = _manifest(tmp_path)
    cached, legacy = PairDataset(df, PRE, "first"), PairDataset(df, Legacy(), "first")
    assert cached._px is not None and legacy._px is None
    assert list((tmp_path / "cache" / "pixels").glob("*.npy"))
    for i in (0, 1, 5, 6, 7):
        x, c = cached[i]
        y, d = legacy[i]
        assert torch.equal(x, y) and c == d
    for ds in (cached, legacy):
        with pytest.raises(BadImageError, match=r"image_id \S*100\b.*not an image"):
            ds[2]


def test_timers_count_exclusive_time_per_category(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def sleep(s):
        now[0] += s

    timing.reset()
    with timing.timed("training"):
        sleep(5)
        with timing.timed("decode"):
            sleep(3)
            with timing.timed("decode"):
                sleep(2)
        sleep(1)

    @timing.timer("metrics")
    def f():
        sleep(4)
        return 7

    assert f() == 7
    t = timing.totals()
    assert t == {"training": 6.0, "decode": 5.0, "encoding": 0.0, "metrics": 4.0, "plotting": 0.0}  # nothing twice
    with pytest.raises(ValueError, match="unknown timing category"), timing.timed("nonsense"):
        pass
    timing.reset()
    assert sum(timing.totals().values()) == 0.0


def test_breakdown_splits_wall_time_into_categories_other_and_kernel(tmp_path):
    (tmp_path / "timings.json").write_text(json.dumps({"seconds": {"training": 3.0, "decode": 1.0, "plotting": 0.5}}))
    nb = {"cells": [{"metadata": {"papermill": {"duration": 4.0}}}, {"metadata": {"papermill": {"duration": 2.0}}},
                    {"metadata": {}}]}
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    b = timing.breakdown(tmp_path, tmp_path / "nb.ipynb", 10.0)
    assert b == {"training": 3.0, "decode": 1.0, "encoding": 0.0, "metrics": 0.0, "plotting": 0.5, "other": 1.5,
                 "kernel": 4.0}
    assert sum(b.values()) == pytest.approx(10.0)
    # no timings file, no notebook: everything is "other"/"kernel", still adding up
    empty = tmp_path / "empty"
    empty.mkdir()
    b2 = timing.breakdown(empty, None, 5.0)
    assert sum(b2.values()) == pytest.approx(5.0) and b2["kernel"] == 5.0
    table = timing.breakdown_table({"01": b, "02": b2})
    assert table.loc["all chapters", "total"] == pytest.approx(15.0)


def test_book_profile_reports_and_compares_builds(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_book_profile", Path(__file__).resolve().parents[1] / "benchmarks" / "book_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for build, scale in (("a", 1.0), ("b", 0.5)):
        d = tmp_path / build / "runs" / "05_robustness"
        d.mkdir(parents=True)
        wall = {"training": 0.0, "decode": 40 * scale, "encoding": 20.0, "metrics": 5.0, "plotting": 3.0,
                "other": 10.0, "kernel": 6.0}
        cpu = {"training": 0.0, "decode": 39 * scale, "encoding": 30.0, "metrics": 5.0, "plotting": 3.0,
               "other": 8.0, "total": 39 * scale + 46.0}
        (d / "run.json").write_text(json.dumps({"seconds": sum(wall.values()), "timing": wall, "timing_cpu": cpu}))
    mod.main(["--build-dir", str(tmp_path / "a"), "--compare", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "wall seconds per chapter and category" in out and "kernel CPU seconds" in out
    assert "84.0" in out and "64.0" in out  # wall totals before / after
    assert "0.76" in out  # after / before
    with pytest.raises(SystemExit, match="no chapter runs"):
        mod.main(["--build-dir", str(tmp_path / "empty")])


def test_notebook_hooks_dump_the_totals_after_every_cell(tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        assert timing.install_notebook_hooks(tmp_path)
        shell.run_cell("from vlnb.timing import timed\nwith timed('metrics'):\n    sum(range(10000))")
        shell.run_cell("x = 1")
        data = json.loads((tmp_path / timing.TIMINGS_FILE).read_text())
        assert len(data["cell_cpu_seconds"]) == 2 and data["counts"]["metrics"] == 1
        assert set(data["seconds"]) == set(timing.CATEGORIES) and data["process_cpu_seconds"] >= 0
    finally:
        InteractiveShell.clear_instance()
        timing.reset()
