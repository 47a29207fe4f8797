"""Parameter validation: unknown names and wrong types fail fast, naming the parameter."""

from pathlib import Path

import pytest

from vlnb import config
from vlnb.config import NotebookRun, ParameterError, coerce_cli_value, resolve


def test_profile_defaults_and_overrides():
    off = resolve("01_data_prep")
    full = resolve("01_data_prep", profile="full")
    assert off.profile == "offline" and off.coco_root is None
    assert full.coco_root == "data/coco" and full.flickr30k_source
    # None keeps the profile default, a value overrides it
    assert resolve("01_data_prep", profile="full", world_n_train=None).world_n_train == full.world_n_train
    assert resolve("01_data_prep", world_n_train=17).world_n_train == 17


def test_unknown_parameter_is_named():
    with pytest.raises(ParameterError, match="unknown parameter.*'world_n_trian'"):
        resolve("01_data_prep", world_n_trian=10)


def test_wrong_type_is_named():
    with pytest.raises(ParameterError, match="parameter 'world_n_train'"):
        resolve("01_data_prep", world_n_train="many")
    with pytest.raises(ParameterError, match="parameter 'profile'"):
        resolve("01_data_prep", profile="cloud")


def test_unknown_notebook():
    with pytest.raises(ParameterError, match="no parameter config"):
        resolve("99_nothing")


def test_every_notebook_has_a_config():
    from vlnb.runs import list_notebooks

    stems = [nb.stem for nb in list_notebooks()]
    assert stems == sorted(stems) and len(stems) >= 7
    for stem in stems:  # a typed config of its own, accepting its defaults and naming the notebook's profile
        cls = config.params_class(stem)
        assert issubclass(cls, config.NotebookParams) and cls is not config.NotebookParams, stem
        assert cls().profile == "offline", stem


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("null", None), ("abc", "abc"), ("[1, 2]", [1, 2])])
def test_cli_values_parse_like_papermill(text, value):
    assert coerce_cli_value(text) == value


def test_notebook_namespace_validation(tmp_path):
    ns = {"pd": object(), "In": [], "_i1": ""}
    run = NotebookRun.start("01_data_prep", ns)
    ns.update(profile="offline", out_dir=str(tmp_path), world_n_train=None, n_grid=4)
    cfg = run.params(ns)
    assert cfg.n_grid == 4 and cfg.world_n_train == resolve("01_data_prep").world_n_train
    assert run.out_dir == tmp_path.resolve()
    # the page's parameter table shows no absolute path of the building machine
    table = run.params_table()
    assert table.loc["n_grid", "value"] == 4 and table.loc["out_dir", "value"] == str(Path("…", *tmp_path.parts[-2:]))
    # a name injected by papermill that the notebook does not know about
    ns["n_gird"] = 4
    with pytest.raises(ParameterError, match="'n_gird'"):
        run.params(ns)


def test_parameter_table_shows_a_run_folder_below_the_working_directory_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {}
    run = NotebookRun.start("01_data_prep", ns)
    ns.update(profile="offline", out_dir=str(tmp_path / "runs" / "dp"))
    run.params(ns)
    assert run.params_table().loc["out_dir", "value"] == str(Path("runs", "dp"))
    monkeypatch.chdir(tmp_path / "runs" / "dp")  # a book build's kernel works in its run folder: not "."
    assert run.params_table().loc["out_dir", "value"] == str(Path("…", "runs", "dp"))


# -- issue 12: every field has its range / choices; absurd values fail at resolve(), naming the parameter
ABSURD = [
    ("01_data_prep", "world_n_train", -5),
    ("01_data_prep", "world_n_test", 0),
    ("01_data_prep", "world_image_size", 4),
    ("01_data_prep", "n_grid", -1),
    ("01_data_prep", "world_n_train", True),  # true is not an int
    ("01_data_prep", "seed", -1),
    ("02_clip_training", "recipes", ["no-such-recipe"]),
    ("02_clip_training", "variant_epochs", -3),
    ("02_clip_training", "paired_epochs", 0),
    ("02_clip_training", "variant_n_train", True),
    ("02_clip_training", "attention_variants", ["sideways"]),
    ("02_clip_training", "variant_image_size", 0),
    ("02_clip_training", "variant_image_size", 28),  # not a multiple of the 8-px patches
    ("03_blip2_heads", "batch_size", 0),
    ("03_blip2_heads", "epochs", -1),
    ("03_blip2_heads", "seeds", []),
    ("03_blip2_heads", "models", {"x": "no-such-recipe"}),
    ("04_compare", "t2i_test_fraction", 2.0),
    ("04_compare", "t2i_test_fraction", 0.0),
    ("04_compare", "rerank_k", -3),
    ("04_compare", "batch_size", 0),
    ("04_compare", "datasets", ["imagenet"]),
    ("04_compare", "t2i_dataset", "imagenet"),
    ("04_compare", "models", {"no-such-recipe": None}),
    ("04_compare", "coco_templates", "fancy"),
    ("04_compare", "max_images", 0),
    ("04_compare", "baseline_epochs", True),
    ("05_robustness", "datasets", {"towers-coco": ["nowhere"]}),
    ("05_robustness", "models", ["no-such-recipe"]),
    ("05_robustness", "reference_size", -224),
    ("05_robustness", "n_images", -1),
    ("06_interpretability", "tolerance", -2),
    ("06_interpretability", "n_images", 0),
    ("06_interpretability", "chefer_start_layer", -1),
    ("07_fairness", "max_images", -10),
    ("07_fairness", "rare_epochs", -1),
    ("07_fairness", "templates", "fancy"),
    ("07_fairness", "rare_image_size", 2),
    ("07_fairness", "datasets", ["nowhere"]),
    ("07_fairness", "rare_seeds", [-1]),
]


@pytest.mark.parametrize("stem,name,value", ABSURD, ids=[f"{s}-{n}-{v!r}" for s, n, v in ABSURD])
def test_absurd_values_are_refused(stem, name, value):
    with pytest.raises(ParameterError, match=f"'{name}"):
        resolve(stem, **{name: value})


def test_sane_values_still_pass():
    assert resolve("04_compare", t2i_test_fraction=0.5, rerank_k=0).rerank_k == 0
    assert resolve("03_blip2_heads", lr=1).lr == 1.0  # an int where a float is expected is fine
    assert resolve("05_robustness", datasets={"towers-coco": ["coco-mini"]}).datasets == {"towers-coco": ["coco-mini"]}
    assert resolve("02_clip_training", recipes=["towers-coco"]).recipes == ["towers-coco"]
    assert resolve("04_compare", profile="full", models={"Mine": "some/hub-id"}).models == {"Mine": "some/hub-id"}


@pytest.mark.parametrize("text", [
    "!!binary aW1wb3J0IG9z", "!!set {a, b}", '!!python/object/apply:os.system ["touch MARKER"]',
    "[1, !!binary aW1wb3J0IG9z]", "&a [1, 2]", "2020-01-01", ".nan",
])
def test_cli_values_reject_yaml_tags_and_non_json(text):
    with pytest.raises(ParameterError, match="parameter 'coco_root'"):
        coerce_cli_value(text, "coco_root")
