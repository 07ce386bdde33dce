"""MLflow tracking and registry (medstack.tracking) against real MLflow stores: a SQLite file, and an `mlflow server`
process on 127.0.0.1 browsed in headless Chromium. Nothing trains here: the session's smoke run (conftest's
``smoke_bundle``) and its fold cache are logged through the function the flow's ``track_run`` calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import needs_mlflow
from medstack.run_folder import read_manifest, read_metrics, training_key
from server_helpers import chromium, free_port, stop_group, wait_healthy

NAME = "smoke-ensemble"


def _fold_results(run_dir: Path, cache: Path) -> list:
    """The run's fold results, histories included, as the flow holds them: from the fold cache it trained into."""
    from medstack.pipeline import FoldCache

    results = [FoldCache(cache).load(fold["cache_key"]) for fold in read_manifest(run_dir)["folds"].values()]
    assert all(r is not None for r in results)
    return results


def _log_and_register(run_dir: Path, results: list, uri: str, artifact_location: str | None) -> SimpleNamespace:
    from medstack.tracking.registry import promote_version, register_bundle
    from medstack.tracking.runs import log_run
    from medstack.tracking.store import MlflowTarget

    target = MlflowTarget(uri=uri, experiment="smoke", artifact_location=artifact_location)
    tracked = log_run(run_dir, results, target, tags={"prefect.flow_run_id": "flow-run-under-test"})
    version = register_bundle(tracked, run_dir, NAME)
    verdict = promote_version(uri, NAME, version, run_dir)
    return SimpleNamespace(uri=uri, tracked=tracked, version=version, verdict=verdict, results=results)


@pytest.fixture(scope="module")
def local_store(smoke_bundle, smoke_cache, tmp_path_factory) -> SimpleNamespace:
    """The smoke run logged, registered and promoted into a fresh SQLite store."""
    from medstack.tracking.store import artifacts_beside

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow-local') / 'mlflow.db'}"
    return _log_and_register(smoke_bundle, _fold_results(smoke_bundle, smoke_cache), uri, artifacts_beside(uri))


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ------------------------------------------------------------------------------------------ without the extra


def test_without_the_extra_nothing_imports_mlflow_and_a_tracking_config_is_one_clear_error(tmp_path):
    """mlflow blocked (sys.modules entry None: every import of it fails): the flow, the tasks and every tracking
    module still import, and a run whose config asks for MLflow stops in resolve_run with exit 2 naming the extra."""
    code = """
import io, sys
sys.modules["mlflow"] = None
import medstack.flows.ensemble, medstack.tracking.registry, medstack.tracking.runs, medstack.tracking.bundle_model
from medstack.config import RunConfig
from medstack.console.errors import report
from medstack.resolve import resolve_run
cfg = RunConfig.model_validate({"tracking": {"mlflow": {}}, "runtime": {"output_dir": sys.argv[1] + "/runs",
                                                                        "cache_dir": sys.argv[1] + "/cache"}})
try:
    resolve_run(cfg)
except Exception as exc:
    out = io.StringIO()
    print(report(exc, stream=out), out.getvalue().strip())
from medstack.inference.bundle import bundle_folder
try:
    bundle_folder("models:/smoke@champion")  # predict, evaluate, export, serve-model: the same error
except Exception as exc:
    print(report(exc, stream=io.StringIO()), type(exc).__name__)
"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    run, reference = done.stdout.strip().splitlines()
    code, line = run.split(" ", 1)
    assert code == "2"
    assert line.startswith("medstack: tracking.mlflow in the config needs MLflow") and '.[mlflow]' in line, line
    assert reference == "2 MlflowMissing"
    assert not (tmp_path / "runs").exists()  # stopped before anything was made


def test_where_a_run_is_tracked_is_one_rule_independent_of_the_working_directory(monkeypatch, tmp_path):
    from medstack.config import RunConfig
    from medstack.tracking.store import mlflow_target

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert mlflow_target(RunConfig()) is None  # nothing asks for MLflow
    monkeypatch.chdir(tmp_path)
    target = mlflow_target(RunConfig.model_validate({"name": "x", "tracking": {"mlflow": {}}}))
    store = tmp_path / "xdg" / "medstack" / "mlflow"
    assert target.uri == f"sqlite:///{store / 'mlflow.db'}" and target.experiment == "x"
    assert target.artifact_location == (store / "artifacts").as_uri()
    # the registry backend asks for it too; the environment's URI comes before the default store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    target = mlflow_target(RunConfig.model_validate({"registry": {"backend": "mlflow"}}))
    assert (target.uri, target.artifact_location) == ("http://127.0.0.1:5999", None)
    target = mlflow_target(RunConfig.model_validate({"tracking": {"mlflow": {"uri": "sqlite:///rel.db",
                                                                              "experiment": "e"}}}))
    assert target.artifact_location == (tmp_path / "artifacts").as_uri() and target.experiment == "e"
    with pytest.raises(ValueError, match="registry.path names a JSON registry file"):
        RunConfig.model_validate({"registry": {"backend": "mlflow", "path": "registry.json"}})


def test_metric_names_keep_test_figures_apart_and_params_are_dotted():
    from medstack.tracking.runs import flatten, run_metrics

    metrics = {"models": {"stacking": {
        "oof": {"roc_auc": 0.8, "confusion_matrix": [[1, 2], [3, 4]], "per_class": {"a b": {"recall": 0.5}},
                "brier": float("nan"), "flag": True},
        "test": {"roc_auc": 0.7}, "test_ci": {"roc_auc": [0.6, 0.75]}, "decision": {"threshold": 0.4}}}}
    assert run_metrics(metrics) == {"stacking.roc_auc": 0.8, "stacking.per_class.a b.recall": 0.5,
                                    "test.stacking.roc_auc": 0.7, "test.stacking.roc_auc.ci_low": 0.6,
                                    "test.stacking.roc_auc.ci_high": 0.75}
    assert flatten({"training": {"epochs": 4, "lr_schedule": {"kind": "cosine"}}, "split": {"fractions": [0.8, 0.2]},
                    "tracking": {"mlflow": None}, "name": "x"}) == {
        "training.epochs": "4", "training.lr_schedule.kind": "cosine", "split.fractions": "[0.8, 0.2]",
        "tracking.mlflow": "null", "name": "x"}


# ------------------------------------------------------------------------------------ a local SQLite store


@needs_mlflow
@pytest.mark.slow
def test_the_run_logs_config_metrics_and_tags(local_store, smoke_bundle):
    run = _client(local_store.uri).get_run(local_store.tracked.run_id)
    manifest, metrics = read_manifest(smoke_bundle), read_metrics(smoke_bundle)
    assert run.info.run_name == manifest["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == "4" and run.data.params["name"] == "pneumoniamnist-smoke"
    assert run.data.params["strategies.ldam.drw_epoch"] == "2"
    tags = run.data.tags
    assert tags["medstack.data_fingerprint"] == manifest["data_fingerprint"]
    assert tags["medstack.run_folder"] == str(smoke_bundle.resolve())
    assert tags.get("medstack.code_commit") == (manifest.get("git_commit") or None)  # none outside a git checkout
    assert tags["prefect.flow_run_id"] == "flow-run-under-test"
    for model, parts in metrics["models"].items():
        if "oof" in parts:  # the student has none
            assert run.data.metrics[f"{model}.roc_auc"] == pytest.approx(parts["oof"]["roc_auc"])
        assert run.data.metrics[f"test.{model}.roc_auc"] == pytest.approx(parts["test"]["roc_auc"])
        low, high = parts["test_ci"]["roc_auc"]
        assert run.data.metrics[f"test.{model}.roc_auc.ci_low"] == pytest.approx(low)
        assert run.data.metrics[f"test.{model}.roc_auc.ci_high"] == pytest.approx(high)
    assert run.data.metrics["test.student.ece"] == pytest.approx(metrics["student"]["ece"])
    assert tags["medstack.student_can_replace"] == str(metrics["student"]["can_replace"]).lower()
    # every test figure carries the prefix: an unprefixed metric is an out-of-fold one
    unprefixed = {k for k in run.data.metrics if not k.startswith("test.")}
    assert unprefixed and all(k.split(".")[0] in metrics["models"] for k in unprefixed)
    assert not any(k.endswith(".ci_low") for k in unprefixed)


@needs_mlflow
@pytest.mark.slow
def test_every_fold_training_is_a_child_run_with_its_curves(local_store):
    mlflow = _client(local_store.uri)
    children = mlflow.search_runs([local_store.tracked.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{local_store.tracked.run_id}'")
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {f"train[{training_key(r.strategy, r.fold)}]" for r in local_store.results}
    assert "train[student]" in by_name and by_name["train[student]"].data.tags["medstack.fold"] == "all"
    for result in local_store.results:
        child = by_name[f"train[{training_key(result.strategy, result.fold)}]"]
        assert child.data.tags["medstack.from_cache"] == "true"  # read back from the cache: logged all the same
        per_epoch = result.info["recipe"]["steps_per_epoch"]
        for key in ("loss", "val_auc"):
            history = sorted(mlflow.get_metric_history(child.info.run_id, key), key=lambda m: m.step)
            assert [m.value for m in history] == pytest.approx(result.history[key])
            assert [m.step for m in history] == [per_epoch * k for k in range(1, len(result.history[key]) + 1)]
        assert child.data.params["epochs_run"] == str(result.info["epochs_run"])


@needs_mlflow
@pytest.mark.slow
def test_report_plots_and_tables_are_artifacts_and_the_fold_models_are_not(local_store, smoke_bundle, tmp_path):
    mlflow = _client(local_store.uri)
    run_id = local_store.tracked.run_id
    top = {a.path for a in mlflow.list_artifacts(run_id)}
    assert {"report.md", "leaderboard.csv", "test_predictions.csv", "oof_predictions.csv", "metrics.json",
            "model.json", "plots", "model"} <= top
    assert "models" not in top  # the fold models live in the registered model, not twice
    assert {Path(a.path).name for a in mlflow.list_artifacts(run_id, "plots")} == \
        {p.name for p in (smoke_bundle / "plots").iterdir()}
    report = mlflow.download_artifacts(run_id, "report.md", str(tmp_path))
    assert Path(report).read_bytes() == (smoke_bundle / "report.md").read_bytes()


@needs_mlflow
@pytest.mark.slow
def test_registered_alias_loads_as_pyfunc_and_predicts_like_the_bundle(local_store, smoke_bundle, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    from medstack.config import load_config
    from medstack.data import read_dataset
    from medstack.inference.bundle import bundle_folder, load_bundle

    version = _client(local_store.uri).get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == local_store.version and version.tags["medstack.promotion.outcome"] == "promoted"
    assert version.tags["medstack.run_id"] == smoke_bundle.name
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_store.uri)
    # medstack's one resolver: what predict, evaluate, export and serve-model load
    folder = bundle_folder(f"models:/{NAME}@champion")
    assert read_manifest(folder)["run_id"] == smoke_bundle.name and folder != smoke_bundle.resolve()

    bundle = load_bundle(smoke_bundle)
    # 12 of the run's test images, and the run's own probabilities for them (test_predictions.csv)
    table = pd.read_csv(smoke_bundle / "test_predictions.csv").head(12)
    images = read_dataset(load_config(smoke_bundle / "config.yaml").data).images[table["row"].to_numpy()]
    frame = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(images)
    assert set(frame["model"]) == {bundle.recommended}
    got = frame[[f"p({name})" for name in bundle.classes]].to_numpy()
    expected = table[[f"{bundle.recommended}:p({name})" for name in bundle.classes]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert set(frame["predicted"]) <= set(bundle.classes)


@needs_mlflow
@pytest.mark.slow
def test_the_same_rule_keeps_the_champion_and_says_why_in_tags(local_store, smoke_bundle):
    """The same run registered again is a second version; the rule (the JSON registry's) keeps the champion."""
    from medstack.tracking.registry import promote_version, register_bundle

    second = register_bundle(local_store.tracked, smoke_bundle, NAME)
    verdict = promote_version(local_store.uri, NAME, second, smoke_bundle)
    mlflow = _client(local_store.uri)
    assert verdict["outcome"] == "kept" and second != local_store.version
    assert str(mlflow.get_model_version_by_alias(NAME, "champion").version) == local_store.version
    tags = mlflow.get_model_version(NAME, second).tags
    assert tags["medstack.promotion.reason"] == "the candidate already is the champion"
    assert tags["medstack.promotion.champion_version"] == local_store.version


# ------------------------------------------------------------------------- a real `mlflow server` and its UI


@pytest.fixture(scope="module")
def server(smoke_bundle, smoke_cache, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 over a fresh SQLite store, artifacts proxied through it (mlflow-artifacts:/),
    with the smoke run logged, registered and promoted through HTTP. Killed on teardown."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # No job runners: MLflow 3 starts 7 huey consumer processes for its GenAI jobs (3 CPU-s each to start here,
        # a third of this module's CPU), which medstack never submits.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", proc, root / "server.log", what="mlflow server")
        yield _log_and_register(smoke_bundle, _fold_results(smoke_bundle, smoke_cache), url, None)
    finally:
        stop_group(proc, grace=20)
        log.close()


@needs_mlflow
@pytest.mark.slow
def test_a_real_tracking_server_keeps_the_run_and_serves_the_model(server, smoke_bundle, tmp_path, monkeypatch):
    mlflow = _client(server.uri)
    run = mlflow.get_run(server.tracked.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploaded through the server
    assert run.data.metrics["test.stacking.roc_auc"] == pytest.approx(
        read_metrics(smoke_bundle)["models"]["stacking"]["test"]["roc_auc"])
    assert server.tracked.url == f"{server.uri}/#/experiments/{server.tracked.experiment_id}/runs/{run.info.run_id}"
    children = mlflow.search_runs([server.tracked.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(children) == len(server.results)

    from medstack.inference.bundle import bundle_folder, load_bundle

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = bundle_folder(f"models:/{NAME}@champion")
    assert folder.is_relative_to(tmp_path / "cache")  # not local files: downloaded once into the user cache
    bundle = load_bundle(f"models:/{NAME}@champion")  # sha256 of every fold model checked on load
    assert bundle.run_id == smoke_bundle.name and bundle.root == folder
    assert bundle_folder(f"models:/{NAME}/{server.version}") == folder


@needs_mlflow
@pytest.mark.slow
def test_the_mlflow_ui_shows_the_metrics_the_artifacts_and_the_registered_model(server, tmp_path_factory):
    shots = Path(os.environ.get("MEDSTACK_SCREENSHOT_DIR") or tmp_path_factory.mktemp("mlflow-screenshots"))
    run_page = f"{server.uri}/#/experiments/{server.tracked.experiment_id}/runs/{server.tracked.run_id}"
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(run_page, wait_until="load")  # the UI polls: the network never idles
        page.get_by_text("test.stacking.roc_auc").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "mlflow-run.png"))
        page.goto(f"{run_page}/artifacts", wait_until="load")
        page.get_by_text("report.md").first.wait_for(timeout=60_000)
        page.get_by_text("leaderboard.csv").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "mlflow-artifacts.png"))
        page.goto(f"{server.uri}/#/models/{NAME}", wait_until="load")
        page.get_by_text("champion").first.wait_for(timeout=60_000)
        assert page.get_by_text(NAME).count() > 0
        page.screenshot(path=str(shots / "mlflow-model.png"))
    print(f"screenshots in {shots}: mlflow-run.png, mlflow-artifacts.png, mlflow-model.png")
