"""Deployment plumbing without a server: prefect.yaml, the config build step, run-time overrides, the CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medstack.cli import build_parser, _overrides
from medstack.config import ConfigError, RunConfig, apply_overrides, load_config
from medstack.deploy import config_parameters, resolve_paths

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = yaml.safe_load((REPO / "prefect.yaml").read_text())


def _build_step(deployment: dict) -> tuple[str, dict]:
    [step] = deployment["build"]
    [(fqn, inputs)] = step.items()
    return fqn, inputs


ENSEMBLE_DEPLOYMENTS = [d for d in PREFECT_YAML["deployments"] if d["entrypoint"] == "flows/ensemble.py:ensemble_flow"]


def test_every_config_has_a_deployment_on_the_work_pool():
    names = [(d["entrypoint"], d["name"]) for d in PREFECT_YAML["deployments"]]  # Prefect names are per flow
    assert len(names) == len(set(names))
    configs = {_build_step(d)[1]["config"] for d in ENSEMBLE_DEPLOYMENTS}
    assert configs == {f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    for deployment in ENSEMBLE_DEPLOYMENTS:
        fqn, inputs = _build_step(deployment)
        assert fqn == "medstack.deploy.config_parameters"
        assert deployment["parameters"] == {"config": f"{{{{ {inputs['id']}.config }}}}"}
        assert deployment["entrypoint"] == "flows/ensemble.py:ensemble_flow"
        assert deployment["work_pool"]["name"] == PREFECT_YAML["definitions"]["work_pool"]["name"]
        assert deployment["enforce_parameter_schema"] is True


def test_predict_deployments_name_a_registry_alias():
    predict = [d for d in PREFECT_YAML["deployments"] if d["entrypoint"] == "flows/predict.py:predict_flow"]
    assert {d["name"]: d["parameters"] for d in predict} == {
        "pneumoniamnist": {"model": "pneumoniamnist@champion"}, "smoke": {"model": "pneumoniamnist-smoke@champion"}}
    assert all(d["enforce_parameter_schema"] and "build" not in d for d in predict)


def test_weekly_deployment_schedule_is_a_cron_with_a_time_zone():
    [weekly] = [d for d in ENSEMBLE_DEPLOYMENTS if d.get("schedules")]
    [schedule] = weekly["schedules"]
    assert schedule == {"cron": "0 3 * * 1", "timezone": "Europe/Berlin", "active": True}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_config_parameters_validate_and_make_paths_absolute(config, tmp_path):
    params = config_parameters(f"configs/{config}", str(REPO))["config"]
    cfg = RunConfig.model_validate(params)  # what the server stores is a valid config again
    assert Path(cfg.runtime.output_dir).is_absolute() and Path(cfg.runtime.cache_dir).is_absolute()
    assert cfg.data.path is None or Path(cfg.data.path).is_absolute()
    original = load_config(REPO / "configs" / config)
    assert cfg.model_dump(exclude={"data": {"path"}, "runtime": {"output_dir", "cache_dir"}}) == original.model_dump(
        exclude={"data": {"path"}, "runtime": {"output_dir", "cache_dir"}}
    )


def test_resolve_paths_keeps_absolute_paths_and_resolves_relative_ones(tmp_path):
    cfg = RunConfig.model_validate({"data": {"path": "/data/x.npz"}, "runtime": {"output_dir": "out/runs"}})
    resolved = resolve_paths(cfg, tmp_path)
    assert resolved.data.path == "/data/x.npz"
    assert resolved.runtime.output_dir == str(tmp_path / "out" / "runs")
    assert resolved.runtime.cache_dir == str(tmp_path / ".medstack-cache")
    assert cfg.runtime.output_dir == "out/runs"  # the input is not mutated


def test_config_parameters_reject_an_invalid_config(tmp_path):
    (tmp_path / "bad.yaml").write_text("training: {epochs: 0}\n")
    with pytest.raises(ConfigError, match="training.epochs"):
        config_parameters("bad.yaml", str(tmp_path))


def test_overrides_change_only_the_named_fields():
    cfg = RunConfig()
    changed = apply_overrides(cfg, {"training.epochs": 2, "data.path": "/x.npz", "strategies": {"ldam": {}}})
    assert (changed.training.epochs, changed.data.path, list(changed.strategies)) == (2, "/x.npz", ["ldam"])
    assert changed.training.batch_size == cfg.training.batch_size and changed.model == cfg.model
    assert cfg.training.epochs == 30  # a new object; the deployment's config is untouched
    assert apply_overrides(cfg, None) is cfg and apply_overrides(cfg, {}) is cfg


@pytest.mark.parametrize("overrides, message", [
    ({"training.epochs": 0}, "training.epochs"),
    ({"training.epohcs": 3}, "epohcs"),
    ({"seed.value": 1}, "'seed' is not a section"),
    ({"strategies": {"xgboost": {}}}, "unknown strategy 'xgboost'"),
    (["training.epochs", 2], "must map dotted config keys"),
])
def test_bad_overrides_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), overrides)


def test_cli_set_and_path_flags_become_dotted_overrides():
    args = build_parser().parse_args([
        "run", "--config", "c.yaml", "--set", "training.epochs=3", "--set", "augmentation.flip=horizontal",
        "--set", "model.filters=[4, 8]", "--data", "d.npz", "--output-dir", "out",
    ])
    assert _overrides(args) == {  # --data is fitted to the config by medstack.console.datapath (tests/test_cli.py)
        "training.epochs": 3, "augmentation.flip": "horizontal", "model.filters": [4, 8], "runtime.output_dir": "out",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _overrides(build_parser().parse_args(["run", "--config", "c.yaml", "--set", "epochs"]))


def test_retries_are_for_io_failures_and_crashes_not_bad_input():
    """Loading data and training a fold retry what a second try may fix; bad input (exit code 2) fails at once."""
    from prefect.states import Failed

    from medstack.data import DataError
    from medstack.data.download import DownloadError
    from medstack.models.smote import SmoteError
    from medstack.tasks.data import load_dataset
    from medstack.tasks.retry import is_transient
    from medstack.tasks.training import train_fold

    assert load_dataset.retries == 2 and load_dataset.retry_condition_fn is is_transient
    assert train_fold.retries == 1 and train_fold.retry_condition_fn is is_transient
    assert is_transient(None, None, Failed(data=OSError("No space left on device")))
    assert is_transient(None, None, Failed(data=DownloadError("download of https://x failed: timed out")))
    assert not is_transient(None, None, Failed(data=DataError("x.npz: missing keys ['train_labels']")))
    assert not is_transient(None, None, Failed(data=SmoteError("SMOTE needs at least 2 rows of class 1")))