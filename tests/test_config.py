from pathlib import Path

import pytest
import yaml

from medstack.config import ConfigError, RunConfig, config_to_yaml, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FOLDER = {"source": "folder", "path": "x", "image_size": [8, 8]}


@pytest.mark.parametrize("name", ["smoke.yaml", "pneumoniamnist.yaml", "breakhis.yaml"])
def test_shipped_configs_validate_and_round_trip(name, tmp_path):
    cfg = load_config(CONFIGS / name)
    again = tmp_path / "resolved.yaml"
    again.write_text(config_to_yaml(cfg))
    assert load_config(again) == cfg


def _write(tmp_path, tree) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"trainig": {}}, "trainig"),
        ({"training": {"epochs": "many"}}, "training.epochs"),
        ({"split": {"folds": 1}}, "split.folds"),
        ({"split": {"fractions": [0.7, 0.2, 0.2]}}, "must sum to 1"),
        ({"strategies": {"focal": {}}}, "unknown strategy 'focal'"),
        ({"strategies": {"ldam": {"max_m": -1}}}, "strategies.ldam"),
        ({"strategies": {"smote": {"k": 3}}}, "strategies.smote"),
        ({"data": {"source": "folder"}}, "data.path is required"),
        ({"data": {"source": "folder", "path": "x"}}, "data.image_size is required"),
        ({"data": {**FOLDER, "group_by": {"kind": "filename_regex", "pattern": "(p[0-9+"}}}, "not a valid regex"),
        ({"data": {**FOLDER, "group_by": {"kind": "filename_regex", "pattern": r"(\d+)-(\d+)"}}},
         "exactly one capture group or a named group"),
        ({"data": {**FOLDER, "group_by": {"kind": "filename_regex", "pattern": "p-.*"}}}, "it has 0 capture groups"),
        ({"data": {**FOLDER, "group_by": {"kind": "patient"}}}, "does not match any of the expected tags"),
        ({"data": {**FOLDER, "group_by": {"kind": "csv"}}}, r"group_by.csv.path\n  Field required"),
        ({"data": {**FOLDER, "group_by": {"kind": "breakhis", "pattern": "x"}}}, "Extra inputs are not permitted"),
        ({"data": {"source": "npz", "group_by": {"kind": "breakhis"}}},
         "data.group_by kind 'breakhis' does not work with data.source 'npz'.*npz_key"),
        ({"data": {"source": "digits", "group_by": {"kind": "npz_key"}}}, "digits has no patients"),
        ({"data": {**FOLDER, "group_by": {"kind": "npz_key"}}}, "kind 'npz_key' does not work with data.source 'folder'"),
        ({"name": "../../evil"}, r"name\n.*'../../evil' is not a plain name"),
        ({"name": "a\\b"}, "is not a plain name"),
        ({"conformal": {"levels": [0.9, 1.0]}}, "strictly between 0 and 1"),
        ({"conformal": {"referral": {"level": 0.8}}}, r"conformal.referral.level 0.8 must be one of conformal.levels"),
        ({"conformal": {"calibration_share": 0.7}}, "conformal.calibration_share"),
        ({"conformal": {"referral": {"rule": "certainty", "max_referral": 1.0}}}, "max_referral"),
    ],
)
def test_bad_configs_fail_with_a_message_naming_the_key(tmp_path, tree, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, tree))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_use_dotted_keys(tmp_path):
    cfg = load_config(_write(tmp_path, {}), {"data.path": "x.npz", "runtime.output_dir": "out"})
    assert cfg.data.path == "x.npz" and cfg.runtime.output_dir == "out"


def test_strategy_defaults_are_filled_in():
    cfg = RunConfig(strategies={"ldam": {}})
    assert cfg.strategies["ldam"] == {"max_m": 0.5, "s": 30.0, "drw_epoch": 10, "beta": 0.9999}


@pytest.mark.parametrize("group_by, expected", [
    (None, None),
    ("none", None),
    ({"kind": "none"}, None),
    ({"kind": "breakhis"}, {"kind": "breakhis"}),
    ({"kind": "filename_regex", "pattern": r"^(?P<group>p\d+)_(\d+)"},
     {"kind": "filename_regex", "pattern": r"^(?P<group>p\d+)_(\d+)", "match": "name"}),
    ({"kind": "filename_regex", "pattern": r"^(p\d+)/", "match": "relative_path"},
     {"kind": "filename_regex", "pattern": r"^(p\d+)/", "match": "relative_path"}),
    ({"kind": "csv", "path": "groups.csv"},
     {"kind": "csv", "path": "groups.csv", "file_column": "file", "group_column": "group"}),
])
def test_group_by_variants_on_a_folder_dataset(group_by, expected):
    cfg = RunConfig(data={**FOLDER, "group_by": group_by})
    assert (cfg.data.group_by.model_dump() if cfg.data.group_by else None) == expected


def test_group_by_npz_key_on_an_npz_dataset_and_breakhis_by_default_in_its_config():
    assert RunConfig(data={"source": "npz", "group_by": {"kind": "npz_key"}}).data.group_by.key == "groups"
    assert load_config(CONFIGS / "breakhis.yaml").data.group_by.kind == "breakhis"
    assert load_config(CONFIGS / "smoke.yaml").data.group_by is None


def test_the_dask_runtime_section_is_validated():
    from medstack.config import ConfigError, RunConfig, apply_overrides

    cfg = apply_overrides(RunConfig(), {"runtime.task_runner": "dask", "runtime.dask.address": "tcp://10.0.0.5:8786",
                                        "runtime.dask.gpus_per_training": 1})
    assert (cfg.runtime.dask.address, cfg.runtime.dask.gpus_per_training) == ("tcp://10.0.0.5:8786", 1)
    assert RunConfig().runtime.dask.gpus_per_training == "auto"
    for bad in ({"runtime.dask.address": "10.0.0.5:8786"}, {"runtime.dask.gpus_per_training": -1},
                {"runtime.dask.n_workers": 0}, {"runtime.task_runner": "ray"}):
        with pytest.raises(ConfigError, match=next(iter(bad)).split(".")[-1]):
            apply_overrides(RunConfig(), bad)
