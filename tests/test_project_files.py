"""Files that cannot import medstack say what it does: prefect.yaml's and .ci/run's environment equals
ENVIRONMENT_DEFAULTS, and each deployment's description states its config's folds and epochs."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from medstack.config import load_config
from medstack.console.quiet import ENVIRONMENT_DEFAULTS, quiet_environment

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_the_work_pool_environment_is_the_mapping():
    assert PREFECT_YAML["definitions"]["work_pool"]["job_variables"]["env"] == ENVIRONMENT_DEFAULTS


def test_ci_exports_the_mapping():
    exports = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("export ")]
    exported = dict(word.split("=", 1) for line in exports for word in shlex.split(line)[1:])
    assert {key: exported.get(key) for key in ENVIRONMENT_DEFAULTS} == ENVIRONMENT_DEFAULTS


def test_the_cli_sets_the_mapping_without_overriding_the_user(monkeypatch):
    for key in [*ENVIRONMENT_DEFAULTS, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]:
        monkeypatch.delenv(key, raising=False)  # restored after the test: quiet_environment writes os.environ
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # a user who wants TensorFlow's C++ logs keeps them
    quiet_environment()
    assert {key: os.environ[key] for key in ENVIRONMENT_DEFAULTS} == {**ENVIRONMENT_DEFAULTS, "TF_CPP_MIN_LOG_LEVEL": "0"}


def _described(deployment: dict) -> dict[str, int]:
    """The counts a description states, e.g. '5 folds x 4 strategies, 8 epochs' -> {folds: 5, strategies: 4, epochs: 8}."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (folds|strategies|epochs)\b", deployment["description"])}


@pytest.mark.parametrize("deployment", [d for d in PREFECT_YAML["deployments"] if "build" in d], ids=lambda d: d["name"])
def test_a_deployment_description_states_its_config(deployment):
    [step] = deployment["build"]
    [(_fqn, inputs)] = step.items()
    cfg = load_config(REPO / inputs["config"])
    actual = {"folds": cfg.split.folds, "strategies": len(cfg.strategies), "epochs": cfg.training.epochs}
    stated = _described(deployment)
    assert stated == {key: actual[key] for key in stated}


def test_the_training_deployments_state_folds_and_epochs():
    """Not vacuous: the two deployments that train a fixed recipe say how much they train."""
    stated = {d["name"]: set(_described(d)) for d in PREFECT_YAML["deployments"] if "build" in d}
    assert {"folds", "epochs"} <= stated["smoke"] and {"folds", "epochs"} <= stated["pneumoniamnist"]
