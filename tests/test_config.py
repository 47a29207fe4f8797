"""Parameter validation: unknown names and wrong types fail fast, naming the parameter."""

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

    for nb in list_notebooks():
        assert config.params_class(nb.stem).__name__, f"{nb.name} has no registered parameter config"


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
    # a name injected by papermill that the notebook does not know about
    ns["n_gird"] = 4
    with pytest.raises(ParameterError, match="'n_gird'"):
        run.params(ns)
