"""Shared fixtures. Environment first: no telemetry, quiet TensorFlow, a throwaway Prefect home."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from medstack.console.quiet import ENVIRONMENT_DEFAULTS  # stdlib only: imports neither TensorFlow nor Prefect

for _key, _value in ENVIRONMENT_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
# Tests never touch the user's own registry (~/.local/share/medstack): one throwaway file per session, which the
# pytest-xdist workers inherit (a registry the caller set is left alone).
if not os.environ.get("MEDSTACK_REGISTRY"):
    os.environ["MEDSTACK_REGISTRY"] = str(Path(tempfile.mkdtemp(prefix="medstack-test-registry-")) / "registry.json")
# The pid of the pytest process that owns the session (workers inherit it): the session's Prefect test server stops
# when that process is gone.
os.environ.setdefault("MEDSTACK_TEST_SESSION_PID", str(os.getpid()))
# One throwaway Prefect home per test process. pytest-xdist workers inherit the controller's environment, so a
# worker replaces a home this file made in the controller (a home the caller set is left alone).
if "PREFECT_HOME" not in os.environ or os.environ.get("MEDSTACK_TEST_OWN_PREFECT_HOME") == "1":
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="medstack-prefect-home-")
    os.environ["MEDSTACK_TEST_OWN_PREFECT_HOME"] = "1"
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
# One TensorFlow thread per op in every test process and the processes it starts: the suite runs two pytest-xdist
# workers plus the training subprocesses, servers and Dask workers they start on 2 cores, and TensorFlow's own
# thread pools in each of them only oversubscribe the cores (the tiny CNNs here gain nothing from a second thread).
# Every process of a run gets the same setting, so the bitwise comparisons between processes still hold.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import logging

import numpy as np
from prefect import flow as _flow  # noqa: F401  set up Prefect logging now, not in a test whose captured stderr closes
import pytest
from smoke_run import PNEUMONIA_NPZ, smoke_env, start_smoke_run, yield_cores_to_the_smoke_run
from smoke_run import smoke_cache as smoke_cache_dir

# Many small models per process make tf.function retrace by design; the warning says nothing useful here.
logging.getLogger("tensorflow").setLevel(logging.ERROR)

REPO = Path(__file__).resolve().parents[1]
MLFLOW_INSTALLED = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not MLFLOW_INSTALLED,
                                  reason='MLflow is not installed: pip install -e ".[mlflow]" (CI installs it)')


@pytest.fixture(scope="session")
def pneumonia_npz() -> Path:
    if not PNEUMONIA_NPZ.is_file():
        pytest.skip(f"real dataset not found at {PNEUMONIA_NPZ} (it ships beside the repo in ../shared/data)")
    return PNEUMONIA_NPZ


def tiny_config(root: Path) -> dict:
    """A digits run small enough to train in seconds: 10 classes, 2 folds, 2 epochs, a 2-block CNN; cache and run
    folders under ``root``."""
    return {
        "name": "tiny",
        "seed": 3,
        "data": {"source": "digits", "name": "digits"},
        "split": {"folds": 2, "seed": 3},
        "model": {"filters": [4, 8], "convs_per_block": 1, "dense_units": 16, "batch_norm": False, "head": "gap"},
        "augmentation": {"rotation": 0.0, "zoom": 0.0, "shift": 0.0},  # no random layers, so XLA would compile: jit_compile off
        "training": {"epochs": 2, "jit_compile": False, "batch_size": 64, "min_steps": 0, "min_epoch_steps": 0, "stop_after_steps": 0, "patience_steps": 1},
        "strategies": {"ldam": {"drw_epoch": 1}, "class_weight": {}, "smote": {}, "custom_loss": {}},
        "ensemble": {"inner_folds": 3},
        "distill": {"enabled": False},  # the smoke run trains the one-network model; these runs keep to the members
        "report": {"bootstrap": 50},
        # Threads: no worker processes to start for trainings of seconds (tests/test_flow_e2e.py runs processes).
        "runtime": {"cache_dir": str(root / "cache"), "output_dir": str(root / "runs"), "task_runner": "threads"},
    }


@pytest.fixture(scope="session")
def make_tiny_config():
    """:func:`tiny_config` for module-scoped fixtures (which cannot use ``tmp_path``)."""
    return tiny_config


@pytest.fixture
def tiny_config_dict(tmp_path: Path) -> dict:
    return tiny_config(tmp_path)


@contextlib.contextmanager
def spy_on_training():
    """Within: every real CNN training (its strategy, in order, and the image arrays it fitted and validated on) and
    every function that opens the sealed test labels are recorded in the yielded ``{"trained": [...], "inputs":
    [(x_train, x_val), ...], "label_readers": [...]}``; the real methods still run."""
    from medstack import pipeline
    from medstack.models.training import CNNClassifier

    seen: dict[str, list] = {"trained": [], "inputs": [], "label_readers": []}
    real_fit, real_reveal = CNNClassifier.fit, pipeline.SealedLabels.reveal

    def counting_fit(self, *args, **kwargs):
        seen["trained"].append(self.strategy)
        seen["inputs"].append((args[0], args[2]))  # fit(x, y, x_val, y_val)
        return real_fit(self, *args, **kwargs)

    def spying_reveal(self):
        seen["label_readers"].append(sys._getframe(1).f_code.co_name)
        return real_reveal(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CNNClassifier, "fit", counting_fit)
        mp.setattr(pipeline.SealedLabels, "reveal", spying_reveal)
        yield seen


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# Starts Prefect's API server (as prefect.testing's harness does: uvicorn, no UI, its own SQLite file) and stops it
# when the pytest process that owns the session is gone, should that process die before stopping it.
_PREFECT_SERVER_LAUNCHER = """
import os, subprocess, sys, time
owner, command = int(sys.argv[1]), sys.argv[2:]
server = subprocess.Popen(command)
while server.poll() is None:
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        server.terminate()
        break
    time.sleep(2)
sys.exit(server.wait())
"""


def _session_prefect_server(shared: Path) -> str:
    """The API URL of the session's one Prefect test server, started by the first process that asks for it (a file
    lock shared by the pytest-xdist workers); :func:`pytest_sessionfinish` of the owning process stops it."""
    import fcntl
    import json
    import signal
    import subprocess

    import prefect
    from server_helpers import free_port, wait_healthy

    record = shared / "prefect-server.json"
    with open(shared / "prefect-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.is_file():
            return json.loads(record.read_text())["api_url"]
        home = shared / "prefect-server"
        home.mkdir(exist_ok=True)  # a process before this one may have failed to start it
        port = free_port()
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}"}
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "error", "--lifespan", "on"]
        owner = os.environ["MEDSTACK_TEST_SESSION_PID"]
        with open(home / "server.log", "w") as log:  # the server writes to its own copy of the file handle
            proc = subprocess.Popen([sys.executable, "-c", _PREFECT_SERVER_LAUNCHER, owner, *command], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        api_url = f"http://127.0.0.1:{port}/api"
        try:
            wait_healthy(f"{api_url}/health", proc, home / "server.log", what="the Prefect test server")
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        _copy_sqlite(home / "prefect.db", shared / PREFECT_DATABASE_TEMPLATE)  # before any client knows the server
        record.write_text(json.dumps({"api_url": api_url, "pid": proc.pid}))
        return api_url


PREFECT_DATABASE_TEMPLATE = "prefect-template.db"


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of an SQLite database another process may be writing (SQLite's online backup)."""
    import sqlite3

    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@pytest.fixture(scope="session")
def prefect_home_with_database(prefect_harness, tmp_path_factory) -> Callable[[Path], Path]:
    """Makes a Prefect home that holds the database the session's test server created and migrated at its start
    (before any run): a Prefect server on that home, `prefect server start` or the temporary one `medstack run`
    starts, finds its tables as on any start after a user's first, instead of running every migration again
    (about 8 CPU-s a server here)."""
    template = _shared_dir(tmp_path_factory) / PREFECT_DATABASE_TEMPLATE

    def make(home: Path) -> Path:
        home.mkdir(parents=True, exist_ok=True)
        _copy_sqlite(template, home / "prefect.db")
        return home

    return make


def pytest_sessionfinish(session):
    """The process that owns the session (the pytest-xdist controller, after every worker finished) stops the
    session's Prefect test server, if one was started."""
    import json
    import signal

    factory = getattr(session.config, "_tmp_path_factory", None)
    if hasattr(session.config, "workerinput") or factory is None:
        return
    record = _shared_dir(factory) / "prefect-server.json"
    if record.is_file():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(json.loads(record.read_text())["pid"], signal.SIGTERM)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test server for the whole session, shared by every pytest-xdist worker and every module that runs
    a flow (each server cost about 14 CPU-s to start). Subprocesses reach it through :func:`prefect_api_env` instead
    of starting a temporary server each. This process's flows report to it as under ``prefect_test_harness``."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = _session_prefect_server(_shared_dir(tmp_path_factory))
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        # as prefect_test_harness: contexts copied before this point (threads started earlier) see the server too
        with prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
            yield


@pytest.fixture(scope="session")
def prefect_api_env(prefect_harness) -> dict[str, str]:
    """The environment a subprocess needs to report to the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


def _shared_dir(tmp_path_factory) -> Path:
    """The folder every pytest-xdist worker of this session shares (the session's base temp without xdist)."""
    return tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else \
        tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session", autouse=True)
def _smoke_run_in_background(request, tmp_path_factory):
    """The smoke run starts with the session when any selected test needs it, so it trains while other tests run
    instead of on the path of the first test that asks for it. It reports to the session's Prefect test server (no
    temporary server of its own: tests/test_cli.py runs one as a user gets it). The process that started the run
    waits for it at the end."""
    wanted = any("smoke_bundle" in getattr(item, "fixturenames", ()) for item in request.session.items)
    proc = None
    if wanted and PNEUMONIA_NPZ.is_file():
        proc = start_smoke_run(_shared_dir(tmp_path_factory), lambda: request.getfixturevalue("prefect_api_env"))
        yield_cores_to_the_smoke_run()
    yield
    if proc is not None:
        try:
            proc.wait(timeout=900)  # another pytest-xdist worker may still be waiting for it
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="session")
def smoke_bundle(pneumonia_npz, tmp_path_factory) -> Path:
    """One real run of configs/smoke.yaml (4 strategies x 2 folds), trained once per pytest run through the CLI
    with ``--output-dir`` and ``registry.promote=auto``, used as a model bundle by the prediction, export, registry,
    flow and serving tests. Its fold cache is :func:`smoke_cache`. ``MEDSTACK_TEST_CACHE_DIR`` (unset in CI)
    points the run at a fold cache kept between sessions, so iterating on these tests does not retrain."""
    import time

    # Under pytest-xdist every worker process asks for this fixture; one process of the session started the run
    # (normally at the session's start: _smoke_run_in_background) and all of them wait for its outcome here.
    shared = _shared_dir(tmp_path_factory)
    base = shared / "smoke-bundle"
    start_smoke_run(shared)
    deadline = time.monotonic() + 900
    while not (base / "exit-ok").is_file():
        if (base / "exit-failed").is_file():
            pytest.fail(f"the smoke run failed:\n{(base / 'stderr.txt').read_text()[-3000:]}")
        assert time.monotonic() < deadline, "the smoke run did not finish within 900 s"
        time.sleep(0.5)
    out = (base / "stdout.txt").read_text()
    run = Path(out.strip().splitlines()[-1].removeprefix("run folder: "))  # the CLI ends with that line
    assert (run / "model.json").is_file(), out[-2000:]
    return run


@pytest.fixture(scope="session")
def smoke_cache(smoke_bundle, tmp_path_factory) -> Path:
    """The fold cache the smoke run trained into: a run of configs/smoke.yaml on the same data that points its
    runtime.cache_dir here trains nothing (every fold is a cache hit). Read it; do not delete from it."""
    return smoke_cache_dir(_shared_dir(tmp_path_factory) / "smoke-bundle")


@pytest.fixture(scope="session")
def smoke_registry_env(smoke_bundle, tmp_path_factory) -> dict[str, str]:
    """An environment for subprocesses that see the registry the smoke run auto-promoted into, found by the
    default rule (XDG_DATA_HOME set, no MEDSTACK_REGISTRY)."""
    return smoke_env(_shared_dir(tmp_path_factory))


def tiny_reference_config(root: Path) -> dict:
    """:func:`tiny_config` as the fault and cluster tests run it: 2 strategies x 2 folds on 300 digits, 60 steps a
    fold, long enough for a run or a Dask worker to be killed mid-training."""
    tree = tiny_config(root)
    tree["data"]["subset"] = {"train": 300, "val": 60, "test": 60}
    tree["training"].update(epochs=6, min_steps=60)
    tree["strategies"] = {"class_weight": {}, "smote": {}}
    return tree


@pytest.fixture(scope="session")
def tiny_reference(prefect_harness, tmp_path_factory) -> Path:
    """The run folder of one clean run of :func:`tiny_reference_config` in a test process, threads runner, own cache,
    trained once per session for every pytest-xdist worker: tests/test_cluster.py (a Dask run that lost a worker) and
    tests/test_faults.py (a run killed and resumed) must each end bitwise equal to it. Its config is the run
    folder's config.yaml."""
    import fcntl

    from medstack.config import RunConfig
    from medstack.flows.ensemble import ensemble_flow

    shared = _shared_dir(tmp_path_factory)
    record = shared / "tiny-reference" / "run-folder.txt"
    with open(shared / "tiny-reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process trains it; the others wait here, then read where it is
        if not record.is_file():
            record.parent.mkdir(exist_ok=True)
            run = ensemble_flow(config=RunConfig.model_validate(tiny_reference_config(record.parent)))
            record.write_text(run)
    return Path(record.read_text())


# Modules that start servers, clusters or training subprocesses, long ones first: pytest-xdist hands whole files to
# workers in collection order (--dist loadfile; a worker gets the next file when its current one has two tests
# left), so these start first and the short unit tests fill in beside them. test_pipeline (no Prefect) is among the
# first three: for about 12 s the session's Prefect server migrates its new database and the other first files
# wait for it, which left one of the two cores idle.
_LONG_MODULES = ("test_deployments", "test_cluster", "test_pipeline", "test_faults", "test_cli", "test_flow_e2e",
                 "test_mlflow", "test_serving_auth", "test_serving", "test_explain", "test_predict", "test_bad_inputs")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts; ``--maxprocesses 4`` caps it): one pytest-xdist worker per core plus one. Much
    of the suite waits on servers, clusters and training subprocesses: with one worker per core the 2 cores of the
    reference machine sat idle for 107 of the suite's 529 s (at e3f4cc7), with one more for 16 of 458 s (at
    6328f1b)."""
    return len(os.sched_getaffinity(0)) + 1


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: test order inside a file is kept
