"""The whole Prefect flow on configs/smoke.yaml with the real PneumoniaMNIST file (skipped if it is absent)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import MLFLOW_INSTALLED, needs_mlflow, spy_on_training
from medstack.config import load_config
from medstack.pipeline import train as pipeline_train

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RUN_FILES = [
    "metrics.json", "report.md", "leaderboard.csv", "oof_predictions.csv", "test_predictions.csv",
    "calibration_predictions.csv", "config.yaml", "manifest.json", "models/meta_model.joblib",
    "plots/roc.png", "plots/pr.png", "plots/confusion_test.png", "plots/calibration.png", "plots/risk_coverage.png",
]
MODELS = {"ldam", "class_weight", "smote", "custom_loss", "soft_voting", "stacking", "student"}
METRIC_KEYS = {"accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc",
               "mcc", "brier", "threshold", "confusion_matrix"}


def _smoke_config(pneumonia_npz: Path, runs: Path, cache: Path, **more):
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml", {
        "data.path": str(pneumonia_npz), "runtime.output_dir": str(runs), "runtime.cache_dir": str(cache), **more})


@pytest.fixture(scope="module")
def smoke_runs(prefect_harness, smoke_bundle, smoke_cache, pneumonia_npz, tmp_path_factory):
    """The session's cold smoke run (``medstack run``, conftest's ``smoke_bundle``), then a re-run of the same
    config through the flow in this process against its fold cache, counting trainings and test-label readers."""
    from medstack.flows.ensemble import ensemble_flow

    cfg = _smoke_config(pneumonia_npz, smoke_bundle.parent, smoke_cache, **{"registry.promote": "auto"})
    rerun_root = tmp_path_factory.mktemp("smoke")
    # with the mlflow extra, the re-run also logs to a SQLite store: the flow calls its tracking step (test_mlflow.py)
    tracking = {"tracking.mlflow.uri": f"sqlite:///{rerun_root / 'mlflow.db'}"} if MLFLOW_INSTALLED else {}
    rerun_cfg = _smoke_config(pneumonia_npz, rerun_root / "runs", smoke_cache, **tracking)
    parsed_in: list[str] = []  # the thread of each reading of the training sources (pipeline.code_version)
    real_modules = pipeline_train.training_modules

    def spying_modules():
        parsed_in.append(threading.current_thread().name)
        return real_modules()

    with spy_on_training() as seen, pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline_train, "training_modules", spying_modules)
        t0 = time.perf_counter()
        second = ensemble_flow(config=rerun_cfg)
        t1 = time.perf_counter()
    print(f"\nsmoke re-run from the cache: {t1 - t0:.1f}s")
    return {"cfg": cfg, "first": str(smoke_bundle), "second": second, "n_rerun": len(seen["trained"]),
            "readers": seen["label_readers"], "mlflow": tracking.get("tracking.mlflow.uri"), "parsed_in": parsed_in}


def test_smoke_run_writes_every_file(smoke_runs):
    run = Path(smoke_runs["first"])
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for strategy in ("ldam", "class_weight", "smote", "custom_loss"):
        assert (run / "plots" / f"curves_{strategy}.png").is_file()
        assert sorted(p.name for p in (run / "models" / strategy).iterdir()) == ["fold-1.keras", "fold-2.keras"]
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]  # no half-written run folders


def test_metrics_json_has_the_fixed_shape(smoke_runs):
    metrics = json.loads((Path(smoke_runs["first"]) / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "pneumoniamnist"
    assert metrics["dataset"]["classes"] == ["normal", "pneumonia"]
    counts = metrics["dataset"]["counts"]
    # conformal.calibration split (the default): 10% of the 400 training images held out, stratified
    assert sum(counts["train"].values()) == 360 and sum(counts["calibration"].values()) == 40
    assert sum(counts["test"].values()) == 120
    assert set(metrics["models"]) == MODELS
    assert metrics["dataset"]["duplicates"]["crossing_folds"] == 0
    for name, model in metrics["models"].items():
        assert METRIC_KEYS <= set(model["test"]) and sum(map(sum, model["test"]["confusion_matrix"])) == 120
        if name != "student":  # trained on every training row: it has no out-of-fold predictions
            assert METRIC_KEYS <= set(model["oof"]) and sum(map(sum, model["oof"]["confusion_matrix"])) == 360
        assert {"conformal", "referral"} <= set(model)
    assert "oof" not in metrics["models"]["student"]
    student = metrics["student"]
    assert student["trained"] and (student["trained_rows"], student["calibration_rows"]) == (360, 40)
    assert student["passes_per_image"] == {"student": 1, "ensemble": 40}  # distill.tta: none; 4 x 2 folds x 5 views


def test_resolved_recipe_and_decisions_are_recorded(smoke_runs):
    """What the step budget resolved to is in the manifest, the report and config.yaml; every model's decision
    and the recommendation (chosen on OOF) are in metrics.json."""
    run = Path(smoke_runs["first"])
    manifest = json.loads((run / "manifest.json").read_text())
    folds = manifest["folds"]
    assert len(folds) == 9 and "student" in folds  # 4 strategies x 2 folds, and the student
    for name, fold in folds.items():
        recipe = fold["recipe"]
        assert recipe["epochs"] == 4 and recipe["steps_per_epoch"] * recipe["epochs"] == recipe["planned_steps"], name
        # shift 0.1 at 28x28: the image and 4 shifts; the student scores the image alone (distill.tta: none)
        assert fold["epochs_run"] <= recipe["epochs"] and fold["tta_views"] == (1 if name == "student" else 5), name
    report = (run / "report.md").read_text()
    recipe_table = report.split("## Training recipe (resolved per fold)", 1)[1].split("## Fit diagnosis", 1)[0]
    assert all(f"| {s} |" in recipe_table for s in ("ldam", "class_weight", "smote", "custom_loss"))
    config_text = (run / "config.yaml").read_text()
    assert config_text.startswith("# Training recipe as resolved") and "#   smote: training rows" in config_text
    assert load_config(run / "config.yaml") == smoke_runs["cfg"]  # the comment leaves the config round-trippable
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["recommended"]["model"] in MODELS and metrics["recommended"]["reason"]
    for result in metrics["models"].values():
        assert result["decision"]["kind"] == "threshold"
        assert result["decision"]["threshold"] == result["test"]["threshold"]


def test_predictions_and_leaderboard_files(smoke_runs):
    run = Path(smoke_runs["first"])
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == 360 and set(oof["fold"]) == {0, 1} and oof["row"].is_unique
    test = pd.read_csv(run / "test_predictions.csv")
    assert len(test) == 120 and not set(test["row"]) & set(oof["row"])
    calibration = pd.read_csv(run / "calibration_predictions.csv")
    assert len(calibration) == 40 and not set(calibration["row"]) & (set(oof["row"]) | set(test["row"]))
    board = pd.read_csv(run / "leaderboard.csv")
    assert set(board["model"]) == MODELS
    report = (run / "report.md").read_text()
    assert all(m in report for m in MODELS) and "plots/roc.png" in report
    assert "exact-duplicate images:" in report


def test_manifest_records_versions_seed_and_fingerprint(smoke_runs):
    manifest = json.loads((Path(smoke_runs["first"]) / "manifest.json").read_text())
    assert manifest["seed"] == smoke_runs["cfg"].seed
    assert len(manifest["data_fingerprint"]) == 16
    assert manifest["packages"]["tensorflow"] and manifest["packages"]["prefect"] == "3.8.8"
    assert manifest["trained"] == 9 and manifest["cache_hits"] == 0  # the cold run trained every fold and the student


def test_every_fold_model_is_calibrated_on_val_and_the_report_lists_each_t(smoke_runs):
    run = Path(smoke_runs["first"])
    folds = json.loads((run / "manifest.json").read_text())["folds"]
    temperatures = {name: info["temperature"] for name, info in folds.items()}
    assert len(temperatures) == 9 and all(t > 0 for t in temperatures.values())
    line = next(l for l in (run / "report.md").read_text().splitlines() if l.startswith("- calibration:"))
    for strategy in ("ldam", "class_weight", "smote", "custom_loss"):
        listed = ", ".join(f"{temperatures[f'{strategy}|fold-{k}']:.2f}" for k in (1, 2))
        assert f"{strategy}: {listed}" in line


def test_test_labels_are_read_only_by_the_final_evaluation(smoke_runs):
    # compose_run (the run folder's content) reads them afterwards to put them next to the predictions in
    # test_predictions.csv. That no training reads them is tests/test_pipeline.py's baseline (a spy on every reveal
    # while 8 folds train).
    assert smoke_runs["readers"] == ["evaluate_on_test", "compose_run"]


def test_rerun_is_served_from_the_cache(smoke_runs):
    assert smoke_runs["n_rerun"] == 0
    assert smoke_runs["second"] != smoke_runs["first"]
    manifest = json.loads((Path(smoke_runs["second"]) / "manifest.json").read_text())
    assert manifest["trained"] == 0 and manifest["cache_hits"] == 9
    first = json.loads((Path(smoke_runs["first"]) / "metrics.json").read_text())
    second = json.loads((Path(smoke_runs["second"]) / "metrics.json").read_text())
    assert first["models"]["smote"]["test"] == second["models"]["smote"]["test"]


def test_the_training_sources_are_read_once_before_the_trainings_start(smoke_runs):
    """The fold tasks get the code version from the flow: CPython 3.11's ``ast.parse`` in two threads at once can
    fail ("AST constructor recursion depth mismatch"), which a run once met as a failed, retried training."""
    assert smoke_runs["parsed_in"] and set(smoke_runs["parsed_in"]) == {threading.main_thread().name}


@needs_mlflow
def test_the_flow_logs_the_run_and_its_cached_folds_to_mlflow(smoke_runs):
    from mlflow import MlflowClient

    mlflow = MlflowClient(smoke_runs["mlflow"])
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("pneumoniamnist-smoke").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in parent] == [Path(smoke_runs["second"]).name]
    assert parent[0].data.tags["prefect.flow_run_id"]  # the Prefect flow run it came from
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(children) == 9 and all(c.data.tags["medstack.from_cache"] == "true" for c in children)


def test_manifest_records_what_one_config_and_seed_reproduce(smoke_runs):
    first, second = (json.loads((Path(smoke_runs[k]) / "manifest.json").read_text()) for k in ("first", "second"))
    record = first["determinism"]
    assert record["seed"] == smoke_runs["cfg"].seed and record["split_seed"] == smoke_runs["cfg"].split.seed
    for key in ("splits", "folds", "train_inputs", "meta_inputs"):
        assert len(record[key]) == 64 and int(record[key], 16) >= 0, key
    assert all(len(fold["train_inputs_sha"]) == 64 for fold in first["folds"].values())
    # The re-run took every fold from the first run's cache, so even the training-dependent OOF matrix (the
    # meta-model's input) is the same; tests/test_faults.py compares two cold trainings.
    assert second["determinism"] == record


def test_cli_runs_a_multiclass_flow_on_bundled_digits(prefect_harness, tiny_config_dict, tmp_path, capsys):
    """10 classes through `medstack run`: multi-class metrics, per-class rows, argmax decisions."""
    import yaml

    from medstack.cli import main

    tiny_config_dict["data"]["subset"] = {"train": 300, "val": 100, "test": 100}
    tiny_config_dict["strategies"] = {"ldam": {"drw_epoch": 1}, "smote": {}}  # a margin loss and synthetic rows, K=10
    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    assert main(["run", "-q", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 0
    run = Path(capsys.readouterr().out.strip())  # -q prints the run folder alone
    assert run.parent == tmp_path / "out"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["classes"] == [str(d) for d in range(10)]
    for model in metrics["models"].values():
        assert model["test"]["threshold"] is None
        assert len(model["test"]["per_class"]) == 10
        assert sum(v["support"] for v in model["test"]["per_class"].values()) == 100
        assert len(model["test"]["confusion_matrix"]) == 10
    report = (run / "report.md").read_text()
    assert "## Per-class test metrics" in report
    # Prediction sets for K > 2: 30 calibration images, 3 per class, under the 9 a class needs for 90%: every level
    # is refused for every class, each class is in every set, and the report says so rather than promising 90%.
    assert metrics["conformal"]["calibration_rows"] == 30 and (run / "plots" / "risk_coverage.png").is_file()
    section = report.split("## Prediction sets and referral", 1)[1].split("## Training recipe", 1)[0]
    assert "exact split conformal" in section and "90% needs at least 9 calibration images" in section
    for model in metrics["models"].values():
        for entry in model["conformal"]["levels"]:
            assert len(entry["coverage"]) == 10 and entry["refused"] == metrics["dataset"]["classes"]
            assert entry["mean_size"] == 10 and not any(row["available"] for row in entry["coverage"])
        assert model["referral"]["test"]["referred"] == 1.0  # no set is a single class: every image is referred
        assert len(model["referral"]["risk_coverage"]) == 11
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len([c for c in oof.columns if c.startswith("stacking:")]) == 10
    # distill.enabled: false (tiny_config): no student anywhere, and the run says so
    from medstack.inference.bundle import load_bundle
    from medstack.inference.schema import BundleError

    assert metrics["student"] == {"trained": False, "why": "distill.enabled is false"}
    assert "student" not in metrics["models"]
    assert json.loads((run / "model.json").read_text())["student"] == metrics["student"]
    assert not (run / "models" / "student").exists() and "No student was trained (distill.enabled is false)." in report
    with pytest.raises(BundleError, match="this run trained no student"):
        load_bundle(run).model_for(None, "student")


def test_cli_rejects_a_bad_config_before_any_work(tmp_path, capsys):
    from medstack.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {epochs: 0}\n")
    assert main(["run", "--config", str(bad), "--output-dir", str(tmp_path / "out")]) == 2
    assert "training.epochs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_process_pool_task_runner_runs_the_flow(prefect_harness, tiny_config_dict, tmp_path):
    """runtime.task_runner: processes -> trainings in worker processes, results back in the flow, and every fold's
    epochs heard in the flow process as progress events from the worker that trained it."""
    from medstack.flows.ensemble import ensemble_flow
    from medstack.config import RunConfig
    from medstack.progress import EpochEnded, FoldStarted, listening

    tiny_config_dict["data"]["subset"] = {"train": 200, "val": 60, "test": 60}
    tiny_config_dict["strategies"] = {"class_weight": {}}
    tiny_config_dict["runtime"].update(task_runner="processes", max_workers=2)
    cfg = RunConfig.model_validate(tiny_config_dict)
    heard = []
    with listening(heard.append):
        run = Path(ensemble_flow(config=cfg))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["trained"] == 2 and sorted(manifest["folds"]) == ["class_weight|fold-1", "class_weight|fold-2"]
    assert len({fold["worker"]["pid"] for fold in manifest["folds"].values()} - {os.getpid()}) == 2  # 2 processes
    for key, fold in manifest["folds"].items():
        index = int(key.rpartition("-")[2]) - 1
        epochs = [e for e in heard if isinstance(e, EpochEnded) and e.fold == index]
        assert [e.epoch for e in epochs] == list(range(1, fold["epochs_run"] + 1)), key
        assert {e.pid for e in epochs} == {fold["worker"]["pid"]} != {os.getpid()}, key
        assert FoldStarted("class_weight", index, fold["worker"]["pid"], fold["worker"]["host"]) in heard, key
    assert set(json.loads((run / "metrics.json").read_text())["models"]) == {"class_weight", "soft_voting", "stacking"}
