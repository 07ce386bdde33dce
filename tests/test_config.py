from pathlib import Path

import pytest
import yaml

from medstack.config import ConfigError, RunConfig, config_to_yaml, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
        ({"name": "../../evil"}, r"name\n.*'../../evil' is not a plain name"),
        ({"name": "a\\b"}, "is not a plain name"),
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
