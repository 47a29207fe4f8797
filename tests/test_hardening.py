"""Issue 12: what vlnb refuses, and why. Each case is a bad input an adversarial user tried.

No code runs from a parameter, a manifest or a checkpoint; nothing a user owns is overwritten or deleted;
every bad input gets one line naming the file, the entry and the field.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlnb import cli, zoo
from vlnb.config import ParameterError
from vlnb.paths import REPO_ROOT, notebooks_dir

NB01 = notebooks_dir() / "01_data_prep.ipynb"


def _run_cli(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------ -p values
@pytest.fixture()
def fake_papermill(monkeypatch, tmp_path):
    """papermill.execute_notebook replaced by: render the injected parameters cell exactly as papermill
    does, and exec it in a fresh namespace (cwd = the run folder). Whatever the cell would run, runs."""
    import papermill
    from papermill.translators import translate_parameters

    calls = []

    def execute_notebook(input_path, output_path, parameters=None, cwd=None, **kw):
        code = translate_parameters("python3", "python", parameters or {}, "Parameters")
        ns: dict = {}
        here = os.getcwd()
        os.chdir(cwd or tmp_path)
        try:
            exec(compile(code, "<injected parameters>", "exec"), ns)  # noqa: S102 -- the point of the test
        finally:
            os.chdir(here)
        calls.append({"parameters": parameters, "code": code, "namespace": ns, "env": dict(os.environ)})
        shutil.copy(input_path, output_path)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


_EVIL = 'import os; os.system("touch MARKER")'
PAYLOADS = [
    "!!binary " + base64.b64encode(_EVIL.encode()).decode(),
    "!!set {a, b}",
    '!!python/object/apply:os.system ["touch MARKER"]',
    "!!python/name:os.system",
    "!!str " + _EVIL,
    "[1, !!binary " + base64.b64encode(_EVIL.encode()).decode() + "]",
    "&anchor " + _EVIL,
    "2020-01-01",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_cli_param_payloads_are_refused_and_never_run(payload, tmp_path, monkeypatch, capsys, fake_papermill):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run_cli(["run", NB01, "-p", "coco_root", payload, "--out", tmp_path / "run"], capsys)
    assert rc == 2 and err.startswith("error: parameter 'coco_root'") and err.count("\n") == 1, err
    assert not fake_papermill, "the notebook must not start"
    assert not list(tmp_path.rglob("MARKER"))


def test_only_validated_json_values_are_injected(tmp_path, monkeypatch, fake_papermill):
    from vlnb.runs import run_notebook

    monkeypatch.chdir(tmp_path)
    sneaky = 'x"; import os; os.system("touch MARKER"); y = "'
    run_notebook(NB01, {"coco_root": sneaky, "n_grid": 3, "world_n_train": None}, out_dir=tmp_path / "run",
                 progress=False)
    (call,) = fake_papermill
    assert not list(tmp_path.rglob("MARKER"))
    assert call["namespace"]["coco_root"] == sneaky and call["namespace"]["n_grid"] == 3
    # every injected value is plain JSON, and a None ("profile default") arrives as the validated default
    assert json.loads(json.dumps(call["parameters"])) == call["parameters"]
    assert call["parameters"]["world_n_train"] == 2000


def test_injected_values_are_the_validated_ones():
    from vlnb.config import resolve
    from vlnb.runs import injectable

    cfg = resolve("05_robustness", severities=[5, 1, 1])
    assert injectable(cfg, {"severities": [5, 1, 1]}) == {"severities": [1, 5]}


# ------------------------------------------------------------------------------------- hub folders
@pytest.mark.parametrize("model_type", ["evil_custom", "clip"])
def test_folder_with_custom_code_is_refused_without_a_prompt(model_type, tmp_path, monkeypatch):
    from vlnb.models import load_model

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": model_type,
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    }))
    (d / "evil.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w').close()\n")

    def no_prompt(*a, **k):
        raise AssertionError("vlnb must not ask whether to trust remote code")

    monkeypatch.setattr("builtins.input", no_prompt)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # nothing to answer a prompt with
    with pytest.raises(ValueError, match="auto_map"):
        load_model(str(d), device="cpu")
    assert not (tmp_path / "MARKER").exists()


def _from_pretrained_calls():
    for f in sorted((REPO_ROOT / "vlnb").rglob("*.py")):
        text = f.read_text()
        for m in re.finditer(r"\b(\w+)\.from_pretrained\(", text):
            if m.group(1) in ("ADAPTERS", "cls") or text[m.start() - 2: m.start()] == "``":  # vlnb's own / docs
                continue
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            yield f"{f.relative_to(REPO_ROOT)}:{text[: m.start()].count(chr(10)) + 1}", text[m.start(): i]


@pytest.mark.parametrize("where,call", list(_from_pretrained_calls()))
def test_every_from_pretrained_passes_trust_remote_code_false(where, call):
    if "ADAPTERS[" in call:
        pytest.skip("vlnb adapter")
    assert "trust_remote_code=False" in call, f"{where}: {call}"


# ----------------------------------------------------------------------------------- manifests
def _png(path: Path, size=(8, 8), colour=(200, 10, 10)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _coco_root(tmp_path: Path, captions: dict | bytes, instances: dict | bytes | None = None) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val2017").mkdir(exist_ok=True)
    for n in (1, 2, 3, 4, 5):
        _png(root / "val2017" / f"{n}.png")
    for name, content in (("captions", captions), ("instances", instances)):
        if content is None:
            continue
        raw = content if isinstance(content, bytes) else json.dumps(content).encode()
        (root / "annotations" / f"{name}_val2017.json").write_bytes(raw)
    return root


def _caps(images, anns):
    return {"images": images, "annotations": anns}


def _img(i, fn=None):
    return {"id": i, "file_name": fn or f"{i}.png", "width": 8, "height": 8}


def test_file_names_outside_the_root_are_bad_images(tmp_path):
    from vlnb.data.coco import load_coco

    outside = tmp_path / "secret.png"
    _png(outside)
    root = _coco_root(tmp_path, _caps(
        [_img(1), _img(2, str(outside)), _img(3, "../../secret.png"), _img(4, "../val2017/4.png")],
        [{"id": k, "image_id": k, "caption": f"a red square {k}"} for k in (1, 2, 3, 4)]))
    df, report = load_coco(root, "val2017")
    assert sorted(df["image_id"]) == [1, 4]  # ../val2017/4.png stays inside the root
    bad = report.set_index("image_id")["reason"]
    assert set(bad.index) == {2, 3} and all("outside the data root" in r for r in bad)


def _big_png(path: Path, w: int, h: int) -> Path:
    """A valid w x h 1-bit all-zero PNG, written cheaply (18 MB of zero rows deflate to a few KB)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (w + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, from the header
def test_decompression_bomb_is_a_bad_image(tmp_path):
    from vlnb.data.images import BadImageError, open_rgb, scan_images

    bomb = _big_png(tmp_path / "bomb.png", 12000, 12000)  # 144 megapixels
    assert bomb.stat().st_size < 200_000
    with pytest.raises(BadImageError, match="too large: 12000x12000"):
        open_rgb(bomb)
    report = scan_images(["bomb", "ok"], [bomb, _png(tmp_path / "ok.png")])
    assert report["image_id"].tolist() == ["bomb"] and "VLNB_MAX_IMAGE_PIXELS" in report["reason"][0]


@pytest.mark.parametrize("env,ok", [("100", False), ("0", True), ("1_000", True), ("", True)])
def test_pixel_limit_is_configurable(env, ok, tmp_path, monkeypatch):
    from vlnb.data.images import try_open_rgb

    monkeypatch.setenv("VLNB_MAX_IMAGE_PIXELS", env)
    img, reason = try_open_rgb(_png(tmp_path / "a.png", size=(20, 20)))
    assert (img is not None) == ok, reason


def test_bad_pixel_limit_names_the_variable(tmp_path, monkeypatch):
    from vlnb.data.images import open_rgb

    monkeypatch.setenv("VLNB_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ParameterError, match="VLNB_MAX_IMAGE_PIXELS"):
        open_rgb(_png(tmp_path / "a.png"))


# ------------------------------------------------------------------------- nothing a user owns is lost
def test_book_refuses_a_build_dir_it_did_not_create(tmp_path):
    from vlnb.runs import BUILD_MARKER, OutDirError, build_book, claim_build_dir

    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "thesis.tex").write_text("years of work")
    (mine / "html").mkdir()
    with pytest.raises(OutDirError, match="not created by vlnb"):
        build_book(build_dir=mine, notebooks=[NB01])
    assert (mine / "src" / "thesis.tex").read_text() == "years of work" and (mine / "html").is_dir()
    fresh = claim_build_dir(tmp_path / "new")
    assert (fresh / BUILD_MARKER).is_file()
    assert claim_build_dir(fresh) == fresh  # vlnb's own folder is reused
    legacy = tmp_path / "legacy"  # a default _build from before the marker: only vlnb's entries
    (legacy / "src").mkdir(parents=True)
    (legacy / "src" / "_toc.yml").write_text("format: jb-book\n")
    (legacy / "timings.json").write_text("{}")
    assert (claim_build_dir(legacy, default=True) / BUILD_MARKER).is_file()
    with pytest.raises(OutDirError):
        claim_build_dir(mine, default=True)


def test_run_out_refuses_user_folders_and_the_notebooks_folder(tmp_path, monkeypatch, fake_papermill):
    from vlnb.runs import OutDirError, run_notebook

    monkeypatch.chdir(tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(OutDirError, match="not a vlnb run folder"):
            run_notebook(NB01, {}, out_dir=user, progress=False, force=force)
    assert (user / "notes.txt").read_text() == "mine"

    before = NB01.read_bytes()
    with pytest.raises(OutDirError, match="notebooks' own folder"):
        run_notebook(NB01, {}, out_dir=NB01.parent, progress=False, force=True)
    # a copy of the notebooks elsewhere: its own folder is refused too
    copy = tmp_path / "nbs"
    copy.mkdir()
    shutil.copy(NB01, copy / NB01.name)
    with pytest.raises(OutDirError, match="notebooks' own folder"):
        run_notebook(copy / NB01.name, {}, out_dir=copy, progress=False)
    assert NB01.read_bytes() == before and not fake_papermill

    run = tmp_path / "run"
    run_notebook(NB01, {}, out_dir=run, progress=False)
    (run / "results").mkdir()
    (run / "results" / "old.csv").write_text("x")
    with pytest.raises(OutDirError, match="--force"):
        run_notebook(NB01, {}, out_dir=run, progress=False)
    assert (run / "results" / "old.csv").exists()
    run_notebook(NB01, {}, out_dir=run, progress=False, force=True)
    assert not (run / "results" / "old.csv").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "ok"


def test_prepare_out_checked_before_any_work(tmp_path, monkeypatch, capsys):
    from vlnb import data

    def no_scan(*a, **k):
        raise AssertionError("the destination must be checked before scanning")

    monkeypatch.setattr(data, "build_manifest", no_scan)
    existing = tmp_path / "m.parquet"
    existing.write_bytes(b"the user's file")
    rc, _, err = _run_cli(["prepare", "world", "--out", existing], capsys)
    assert rc == 2 and "file exists; pass --force" in err and existing.read_bytes() == b"the user's file"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, _, err = _run_cli(["prepare", "world", "--out", blocker / "sub" / "m.parquet"], capsys)
    assert rc == 2 and err.startswith("error: --out") and err.count("\n") == 1, err
    rc, _, err = _run_cli(["prepare", "world", "--out", tmp_path], capsys)
    assert rc == 2 and "is a folder" in err


def test_prepare_force_replaces(tmp_path, capsys):
    out = tmp_path / "w.parquet"
    out.write_bytes(b"old")
    rc, _, err = _run_cli(["prepare", "world", "--n-train", 4, "--n-test", 2, "--out", out, "--force"], capsys)
    assert rc == 0, err
    from vlnb.data import load_manifest

    assert len(load_manifest(out)) == 6


def test_manifest_writes_use_unique_temp_names(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from vlnb.data import make_manifest, save_manifest

    seen = []
    real = pq.write_table

    def spy(table, where, *a, **k):
        seen.append(str(where))
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", spy)
    df = make_manifest([{"image_id": 1, "image": b"x", "captions": ["a"], "split": "test"}], name="t")
    save_manifest(df, tmp_path / "m.parquet")
    save_manifest(df, tmp_path / "m.parquet")
    assert len(set(seen)) == 2 and all(Path(s).parent == tmp_path for s in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_stale_checkpoint_temp_files_are_cleaned(tmp_path):
    import torch

    from vlnb.train.checkpoint import load_checkpoint, save_checkpoint

    stale = tmp_path / f".checkpoint.pt.tmp-{_dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".checkpoint.pt.tmp-{os.getpid()}-abcd1234"  # a writer of this process: kept
    live.write_bytes(b"in progress")
    save_checkpoint({"w": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"again")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["w"].shape == (2,)
    assert not stale.exists()


@pytest.fixture()
def tiny_recipe(make_tiny_recipe):
    return make_tiny_recipe(epochs=2)


def test_retrain_of_a_finished_model_trains_from_scratch(tiny_recipe):
    _, first = zoo.train_reference("tiny-world", progress=False)
    _, again = zoo.train_reference("tiny-world", progress=False)  # chapter 2 with retrain=True
    assert first.epochs_df["epoch"].tolist() == again.epochs_df["epoch"].tolist() == [1, 2]
    assert len(again.steps_df) == len(first.steps_df) == 4


# ------------------------------------------------------------------------------- damaged artifacts
def _garbage(p: Path):
    p.write_bytes(b"\x00garbage\xff" * 10)


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _json_garbage(p: Path):
    p.write_text("{not json")


DAMAGE = [
    ("model/model.safetensors", _truncate),
    ("model/model.safetensors", _garbage),
    ("model/config.json", _json_garbage),
    ("model/tokenizer.json", _json_garbage),
]


@pytest.mark.parametrize("rel,damage", DAMAGE, ids=[f"{r}-{d.__name__}" for r, d in DAMAGE])
def test_damaged_reference_model_names_the_file_and_retrains(rel, damage, tiny_recipe, recwarn):
    from vlnb.errors import ArtifactError
    from vlnb.models import load_model

    model, _ = zoo.train_reference("tiny-world", progress=False)
    folder = zoo.artifacts_dir() / "tiny-world"
    files = {p.name for p in (folder / "model").iterdir()}
    assert Path(rel).name in files, files
    damage(folder / rel)
    with pytest.raises(ArtifactError, match=re.escape(str(folder / rel))):
        load_model(str(folder / "model"), family="scratch", device="cpu")
    again = zoo.reference_model("tiny-world", progress=False, device="cpu")
    assert any(str(folder / rel) in str(w.message) for w in recwarn)
    assert again.fingerprint() == model.fingerprint()  # retrained with the same seed
    load_model(str(folder / "model"), family="scratch", device="cpu")  # the folder is whole again


def test_damaged_history_retrains_or_names_the_file(tiny_recipe):
    from vlnb.errors import ArtifactError

    zoo.train_reference("tiny-world", progress=False)
    hist = zoo.artifacts_dir() / "tiny-world" / "history.json"
    hist.write_text("[1, 2")
    assert not zoo.is_trained("tiny-world")  # chapter 2 retrains it
    with pytest.raises(ArtifactError, match=re.escape(str(hist))):
        zoo.reference_history("tiny-world")


def test_damaged_towers_heads_name_the_file(tmp_path):
    from vlnb.errors import ArtifactError
    from vlnb.models.towers import HEADS_FILE, TowersDualEncoder

    d = TowersDualEncoder(embed_dim=8, head="linear").save(tmp_path / "towers")
    _garbage(d / HEADS_FILE)
    with pytest.raises(ArtifactError, match=re.escape(str(d / HEADS_FILE))):
        TowersDualEncoder.load(d, device="cpu")


def test_feature_cache_sidecar_is_covered_by_its_checksum(tmp_path):
    import torch

    from vlnb.eval.features import _load_cache, _save_cache

    emb = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    _save_cache(tmp_path, "k", emb, {"image_ids": [10, 11, 12], "skipped": []})
    assert _load_cache(tmp_path, "k")[1]["image_ids"] == [10, 11, 12]
    side = tmp_path / "k.json"
    meta = json.loads(side.read_text())
    meta["image_ids"] = [12, 11, 10]  # the same ids, reordered: embeddings under the wrong ids
    side.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="sidecar checksum"):
        assert _load_cache(tmp_path, "k") is None
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_pixel_cache_sidecar_is_covered_by_its_checksum(tmp_path):
    from vlnb.data import make_manifest
    from vlnb.data.images import encode_png
    from vlnb.data.pixels import clear_memo, decoded_pixels
    from vlnb.models.transforms import ImagePreprocess

    rng = np.random.default_rng(0)
    df = make_manifest([{"image_id": i, "image": encode_png(rng.integers(0, 255, (9, 9, 3), dtype=np.uint8)),
                         "captions": ["x"], "split": "test"} for i in range(3)], name="t")
    pre = ImagePreprocess((8, 8))
    clear_memo()
    a = decoded_pixels(df, pre, cache_dir=tmp_path, progress=False)
    side = tmp_path / f"{a.key}.json"
    meta = json.loads(side.read_text())
    meta["image_ids"] = meta["image_ids"][::-1]  # pixels served under the wrong ids
    side.write_text(json.dumps(meta))
    clear_memo()
    with pytest.warns(UserWarning, match="sidecar checksum"):
        b = decoded_pixels(df, pre, cache_dir=tmp_path, progress=False)
    assert not b.from_cache and b.image_ids == [0, 1, 2]
    clear_memo()


# --------------------------------------------------------------------- every bad input: one line
GOOD_IMAGES = [_img(1), _img(2)]
GOOD_CAPS = [{"id": 1, "image_id": 1, "caption": "a red square"}, {"id": 2, "image_id": 2, "caption": "a dot"}]
GOOD_INST = {"images": GOOD_IMAGES, "categories": [{"id": 1, "name": "shape", "supercategory": "thing"}],
             "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16.0,
                              "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4]]}]}
BAD_FILES = [
    ("malformed JSON", b'{"images": [', None, "captions_val2017.json: not valid JSON"),
    ("empty file", b"", None, "captions_val2017.json: empty file"),
    ("list-shaped", b"[]", None, "top level must be a JSON object"),
    ("no images", {"annotations": []}, None, "images: must be a list, got missing"),
    ("missing file_name", _caps([{"id": 1}], GOOD_CAPS), None, "images[0] (id 1): file_name: missing"),
    ("missing image id", _caps([{"file_name": "1.png"}], GOOD_CAPS), None, "images[0]: id: missing"),
    ("missing image_id", _caps(GOOD_IMAGES, [{"id": 5, "caption": "x"}]), None,
     "annotations[0] (id 5): image_id: missing"),
    ("missing caption", _caps(GOOD_IMAGES, [{"id": 5, "image_id": 1}]), None,
     "annotations[0] (id 5): caption: missing"),
    ("null caption", _caps(GOOD_IMAGES, [{"id": 5, "image_id": 1, "caption": None}]), None,
     "caption: must be a string, got None"),
    ("int caption", _caps(GOOD_IMAGES, [{"id": 5, "image_id": 1, "caption": 3}]), None,
     "caption: must be a string, got 3"),
    ("string image id", _caps([_img("1")], GOOD_CAPS), None, "id: must be an int, got '1'"),
    ("entry not an object", _caps(GOOD_IMAGES, ["a caption"]), None, "annotations[0]: must be an object"),
    ("non-UTF-8", b'{"images": [], "annotations": [], "info": "caf\xe9"}', None, "not UTF-8 text"),
    ("unknown category_id", _caps(GOOD_IMAGES, GOOD_CAPS),
     {**GOOD_INST, "annotations": [{**GOOD_INST["annotations"][0], "category_id": 999}]},
     "instances_val2017.json: annotations[0] (id 7): category_id: unknown category_id 999"),
    ("bad bbox", _caps(GOOD_IMAGES, GOOD_CAPS),
     {**GOOD_INST, "annotations": [{**GOOD_INST["annotations"][0], "bbox": "0 0 4 4"}]}, "bbox: must be a list"),
]


@pytest.mark.parametrize("case,captions,instances,expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_prepare_bad_annotation_file_is_one_line(case, captions, instances, expected, tmp_path, capsys):
    root = _coco_root(tmp_path, captions, instances)
    rc, _, err = _run_cli(["prepare", "coco", "--root", root, "--split", "val2017", "--out", tmp_path / "m.parquet"],
                          capsys)
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert str(root / "annotations") in err
    assert not (tmp_path / "m.parquet").exists()


def test_good_coco_with_instances_still_loads(tmp_path):
    from vlnb.data.coco import load_coco

    df, report = load_coco(_coco_root(tmp_path, _caps(GOOD_IMAGES, GOOD_CAPS), GOOD_INST), "val2017")
    assert sorted(df["image_id"]) == [1, 2] and len(report) == 0
    assert df.set_index("image_id").loc[1, "labels"] == ["shape"]


def test_bad_data_is_reported_never_merged_silently(tmp_path):
    from vlnb.data.coco import load_coco

    caps = _caps(
        [_img(1), _img(2), _img(2, "3.png"), _img(4), _img(5)],
        [
            {"id": 1, "image_id": 1, "caption": "a red square"},
            {"id": 2, "image_id": 1, "caption": "   "},  # blank: dropped, reported
            {"id": 3, "image_id": 2, "caption": "which file am I?"},  # duplicate image id 2
            {"id": 4, "image_id": 99, "caption": "an image nobody listed"},
            {"id": 5, "image_id": 4, "caption": ""},  # image 4: every caption blank
            {"id": 6, "image_id": 4, "caption": " \t"},
            {"id": 7, "image_id": 5, "caption": "a fine caption"},
        ],
    )
    df, report = load_coco(_coco_root(tmp_path, caps), "val2017")
    assert sorted(df["image_id"]) == [1, 5]
    assert df.set_index("image_id").loc[1, "captions"] == ["a red square"]
    reasons = report.groupby("image_id")["reason"].apply(" | ".join).to_dict()
    assert "duplicate image id 2" in reasons[2] and "'2.png'" in reasons[2] and "'3.png'" in reasons[2]
    assert "not listed in 'images'" in reasons[99]
    assert "1 blank caption(s)" in reasons[1]
    assert "all 2 caption(s) are blank" in reasons[4]


def test_prepare_writes_bad_data_into_the_report(tmp_path, capsys):
    caps = _caps([_img(1), _img(1, "2.png"), _img(3)],
                 [{"id": 1, "image_id": 3, "caption": "ok"}, {"id": 2, "image_id": 1, "caption": "dup"}])
    root = _coco_root(tmp_path, caps)
    out = tmp_path / "m.parquet"
    rc, stdout, err = _run_cli(["prepare", "coco", "--root", root, "--split", "val2017", "--out", out], capsys)
    assert rc == 0, err
    report = pd.read_csv(tmp_path / "m.bad_images.csv")
    assert report["image_id"].tolist() == [1] and "duplicate image id 1" in report["reason"][0]
    assert "skipped 1" in stdout


# ----------------------------------------------------------------------------------------- the CLI
def test_cli_expected_errors_are_one_line(tmp_path, capsys):
    rc, _, err = _run_cli(["run", tmp_path / "nope.ipynb"], capsys)
    assert rc == 2 and err.startswith("error: notebook not found") and err.count("\n") == 1
    rc, _, err = _run_cli(["run", NB01, "-p", "world_n_train", "true"], capsys)
    assert rc == 2 and "parameter 'world_n_train'" in err and err.count("\n") == 1
    rc, _, err = _run_cli(["prepare", "coco", "--root", tmp_path / "nowhere", "--out", tmp_path / "m.parquet"], capsys)
    assert rc == 2 and err.startswith("error: COCO root folder not found") and err.count("\n") == 1
    with pytest.raises(SystemExit) as ex:  # argparse: usage + one error line, exit 2
        cli.main(["prepare", "world", "--n-train", "-5", "--out", str(tmp_path / "w.parquet")])
    assert ex.value.code == 2 and "argument --n-train: must be >= 1, got -5" in capsys.readouterr().err


def test_cli_failed_notebook_is_one_line_plus_log(tmp_path, monkeypatch, capsys):
    from vlnb import runs

    def fail(*a, **k):
        raise runs.RunError("notebook 01_data_prep.ipynb failed (executed copy: x)\nCell 3: ZeroDivisionError")

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runs, "run_notebook", fail)
    rc, _, err = _run_cli(["run", NB01, "--out", tmp_path / "r"], capsys)
    assert rc == 2 and err.startswith("error: notebook 01_data_prep.ipynb failed")
    log = Path(re.search(r"details: (\S+)\)", err).group(1))
    assert "ZeroDivisionError" in log.read_text()


def test_cli_unexpected_error_is_short_with_a_log(tmp_path, monkeypatch, capsys):
    def boom(args):
        return 1 // 0

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_cmd_prepare", boom)
    rc, _, err = _run_cli(["prepare", "world", "--out", tmp_path / "m.parquet"], capsys)
    assert rc == 1 and "Traceback" not in err and "internal error: ZeroDivisionError" in err
    log = Path(re.search(r"traceback is in (\S+)", err).group(1))
    assert log.is_file() and "Traceback" in log.read_text() and "1 // 0" in log.read_text()


def test_readme_says_what_vlnb_refuses():
    text = (REPO_ROOT / "README.md").read_text()
    assert "## What vlnb refuses, and why" in text
    for word in ("parameters", "manifest", "checkpoint", "trust_remote_code", "VLNB_MAX_IMAGE_PIXELS", "--force"):
        assert word in text, word


def test_cli_value_errors_of_vlnb_checks_are_one_line_library_ones_are_bugs(tmp_path, monkeypatch, capsys):
    from vlnb import data

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "build_manifest", lambda *a, **k: zoo.recipe("no-such-recipe"))  # vlnb's check
    rc, _, err = _run_cli(["prepare", "world", "--out", tmp_path / "a.parquet"], capsys)
    assert rc == 2 and err.startswith("error: unknown reference model 'no-such-recipe'") and "details:" in err

    def library_bug(*a, **k):
        return int("not a number")  # a ValueError raised outside vlnb's own checks

    monkeypatch.setattr(data, "build_manifest", library_bug)
    rc, _, err = _run_cli(["prepare", "world", "--out", tmp_path / "b.parquet"], capsys)
    assert rc == 1 and err.startswith("internal error: ValueError") and "Traceback" not in err


def test_kernels_draw_figures_into_the_page_whatever_backend_the_caller_uses(tmp_path, monkeypatch, fake_papermill):
    """CI exports MPLBACKEND=Agg; a kernel that inherited it would save figures but show none in the book."""
    from vlnb.runs import KERNEL_MPL_BACKEND, run_notebook

    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_notebook(NB01, {}, out_dir=tmp_path / "run", progress=False)
    assert fake_papermill[0]["env"]["MPLBACKEND"] == KERNEL_MPL_BACKEND == "module://matplotlib_inline.backend_inline"
    assert os.environ["MPLBACKEND"] == "Agg"  # the caller's own environment is left as it was
