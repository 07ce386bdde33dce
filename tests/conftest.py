"""Shared fixtures. Environment first: no telemetry, quiet TensorFlow, a throwaway Prefect home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from medstack.console.quiet import ENVIRONMENT_DEFAULTS  # stdlib only: imports neither TensorFlow nor Prefect

for _key, _value in ENVIRONMENT_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
# Tests never touch the user's own registry (~/.local/share/medstack): one throwaway file per session, which the
# pytest-xdist workers inherit (a registry the caller set is left alone).
if not os.environ.get("MEDSTACK_REGISTRY"):
    os.environ["MEDSTACK_REGISTRY"] = str(Path(tempfile.mkdtemp(prefix="medstack-test-registry-")) / "registry.json")
# One throwaway Prefect home per test process. pytest-xdist workers inherit the controller's environment, so a
# worker replaces a home this file made in the controller (a home the caller set is left alone).
if "PREFECT_HOME" not in os.environ or os.environ.get("MEDSTACK_TEST_OWN_PREFECT_HOME") == "1":
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="medstack-prefect-home-")
    os.environ["MEDSTACK_TEST_OWN_PREFECT_HOME"] = "1"
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")

import logging

import numpy as np
from prefect import flow as _flow  # noqa: F401  set up Prefect logging now, not in a test whose captured stderr closes
import pytest

# Many small models per process make tf.function retrace by design; the warning says nothing useful here.
logging.getLogger("tensorflow").setLevel(logging.ERROR)

REPO = Path(__file__).resolve().parents[1]
PNEUMONIA_NPZ = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"


@pytest.fixture(scope="session")
def pneumonia_npz() -> Path:
    if not PNEUMONIA_NPZ.is_file():
        pytest.skip(f"real dataset not found at {PNEUMONIA_NPZ} (it ships beside the repo in ../shared/data)")
    return PNEUMONIA_NPZ


@pytest.fixture
def tiny_config_dict(tmp_path: Path) -> dict:
    """A digits run small enough to train in seconds: 3 classes, 2 folds, 2 epochs, a 2-block CNN."""
    return {
        "name": "tiny",
        "seed": 3,
        "data": {"source": "digits", "name": "digits"},
        "split": {"folds": 2, "seed": 3},
        "model": {"filters": [4, 8], "convs_per_block": 1, "dense_units": 16, "batch_norm": False, "head": "gap"},
        "augmentation": {"rotation": 0.0, "zoom": 0.0, "shift": 0.0},
        "training": {"epochs": 2, "batch_size": 64, "min_steps": 0, "min_epoch_steps": 0, "stop_after_steps": 0, "patience_steps": 1},
        "strategies": {"ldam": {"drw_epoch": 1}, "class_weight": {}, "smote": {}, "custom_loss": {}},
        "ensemble": {"inner_folds": 3},
        "report": {"bootstrap": 50},
        "runtime": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs")},
    }


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def smoke_bundle(pneumonia_npz, tmp_path_factory) -> Path:
    """One real run of configs/smoke.yaml (4 strategies x 2 folds), trained once per session through the CLI, used
    as a model bundle by the prediction, export, registry and flow tests. ``MEDSTACK_TEST_CACHE_DIR`` (unset in
    CI) points the run at a fold cache kept between sessions, so iterating on these tests does not retrain."""
    import fcntl
    import subprocess
    import sys

    # Under pytest-xdist every worker process asks for this fixture: the first trains the bundle in the folder all
    # workers of this session share, the others wait on the lock and use it.
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else \
        tmp_path_factory.getbasetemp()
    base, done_marker = shared / "smoke-bundle", shared / "smoke-bundle.done"
    with open(shared / "smoke-bundle.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done_marker.is_file():
            return Path(done_marker.read_text())
        base.mkdir(exist_ok=True)
        cache = os.environ.get("MEDSTACK_TEST_CACHE_DIR") or str(base / "cache")
        done = subprocess.run(
            [str(Path(sys.executable).with_name("medstack")), "run", "--config", str(REPO / "configs" / "smoke.yaml"),
             "--data", str(pneumonia_npz), "--output-dir", str(base / "runs"), "--cache-dir", cache],
            cwd=base, capture_output=True, text=True, timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        run = Path(done.stdout.strip().splitlines()[-1].removeprefix("run folder: "))  # the CLI ends with that line
        assert (run / "model.json").is_file(), done.stdout[-2000:]
        done_marker.write_text(str(run))
        return run
