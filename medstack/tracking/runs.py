"""A finished run folder as an MLflow run, and each of its fold trainings as a child run with its curves.

Everything is read from what the run left (the run folder through :mod:`medstack.run_folder`, the fold results
with their histories) and written through one explicit :class:`mlflow.MlflowClient`, in the process that calls it
(the flow's): no active run, no process-wide tracking URI, nothing logged from fold tasks or workers. A fold served
from the fold cache carries the history it was trained with, so its child run has the same curves as a fresh one.

What goes where (docs/mlflow.md): the resolved ``config.yaml`` as dotted parameters; every model's out-of-fold
metrics as ``<model>.<metric>`` and its test metrics as ``test.<model>.<metric>`` (CI bounds as ``....ci_low`` and
``....ci_high``), so a model picked by sorting a column is picked on out-of-fold figures; the data fingerprint and
code commit as tags; the run folder's files but its models as artifacts.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medstack.run_folder import (MODELS_DIR, STUDENT, read_config_tree, read_manifest, read_metrics,
                                 run_recommendation, training_key)
from medstack.tracking.store import MlflowTarget, client, experiment_id, run_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from medstack.pipeline import FoldResult

TEST_PREFIX = "test."
_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's limits per log_batch call
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow refuses in a metric or parameter name


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a run folder was logged as: its id, experiment, tracking URI and UI page (servers only)."""

    run_id: str
    experiment_id: str
    uri: str
    url: str | None


def log_run(run_dir: str | Path, results: Sequence[FoldResult], target: MlflowTarget,
            tags: Mapping[str, str] | None = None) -> TrackedRun:
    """Log ``run_dir`` and its fold ``results`` to ``target``: one parent run named after the run id, one child run
    per fold training. ``tags`` (the Prefect flow run's links) go on the parent run."""
    run_dir = Path(run_dir).resolve()
    mlflow = client(target.uri)
    experiment = experiment_id(mlflow, target)
    manifest = read_manifest(run_dir)
    parent = mlflow.create_run(experiment, run_name=manifest["run_id"], tags={**run_tags(run_dir, manifest),
                                                                               **(tags or {})}).info.run_id
    try:
        _log_batches(mlflow, parent, params=flatten(read_config_tree(run_dir)).items(),
                     metrics=((k, v, 0) for k, v in run_metrics(read_metrics(run_dir)).items()))
        for item in sorted(run_dir.iterdir()):
            if item.is_file():
                mlflow.log_artifact(parent, str(item))
            elif item.is_dir() and item.name != MODELS_DIR:  # fold models: in the registered model, not twice
                mlflow.log_artifacts(parent, str(item), item.name)
        for result in results:
            log_fold(mlflow, experiment, parent, result)
    except BaseException:
        mlflow.set_terminated(parent, "FAILED")
        raise
    mlflow.set_terminated(parent, "FINISHED")
    return TrackedRun(parent, experiment, target.uri, run_url(target.uri, experiment, parent))


def run_tags(run_dir: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    """What made the run, as tags: its id and folder, data fingerprint, code commit (MLflow's own source tag too)."""
    model, why = run_recommendation(read_metrics(run_dir))
    tags = {"medstack.run_id": manifest["run_id"], "medstack.run_folder": str(run_dir),
            "medstack.data_fingerprint": str(manifest.get("data_fingerprint")),
            "medstack.code_version_models": str(manifest.get("code_version_models")),
            "medstack.recommended": f"{model} ({why})" if model else "none"}
    student = read_metrics(run_dir).get("student") or {}
    if student.get("trained"):  # whether the one-network model can stand in for the recommended one (report.md)
        tags["medstack.student_can_replace"] = str(student.get("can_replace")).lower()
    commit = manifest.get("git_commit")
    if commit:
        tags.update({"medstack.code_commit": str(commit), "mlflow.source.git.commit": str(commit)})
    return tags


def run_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json's numbers: ``<model>.<metric>`` out of fold, ``test.<model>.<metric>`` (and its CI bounds) on
    test; nested per-class figures flattened with dots; lists (confusion matrices) and non-finite values left out;
    the student's agreement and calibration error as ``test.student.*``."""
    out: dict[str, float] = {}
    for model, parts in (metrics.get("models") or {}).items():
        out.update(_numbers(parts.get("oof") or {}, f"{model}."))
        out.update(_numbers(parts.get("test") or {}, f"{TEST_PREFIX}{model}."))
        for name, bounds in (parts.get("test_ci") or {}).items():
            if isinstance(bounds, list) and len(bounds) == 2:
                out.update(_numbers({"ci_low": bounds[0], "ci_high": bounds[1]}, f"{TEST_PREFIX}{model}.{name}."))
    student = metrics.get("student") or {}
    if student.get("trained"):  # its test agreement and calibration error beside the best member's
        out.update(_numbers({"agreement": student.get("agreement"), "ece": student.get("ece"),
                             "best_member_ece": (student.get("best_member_ece") or {}).get("ece")},
                            f"{TEST_PREFIX}student."))
    return out


def log_fold(mlflow: MlflowClient, experiment: str, parent: str, result: FoldResult) -> str:
    """One fold training as a child run of ``parent``: what it was and ran as parameters, its history as metric
    series over optimiser steps (the step at the end of each epoch), with ``epoch`` beside them."""
    info = result.info or {}
    name = f"train[{training_key(result.strategy, result.fold)}]"  # the student: train[student], on every fold
    fold = "all" if result.strategy == STUDENT else str(result.fold + 1)
    child = mlflow.create_run(experiment, run_name=name, tags={
        "mlflow.parentRunId": parent, "medstack.strategy": result.strategy, "medstack.fold": fold,
        "medstack.from_cache": str(result.from_cache).lower(), "medstack.cache_key": result.cache_key}).info.run_id
    per_epoch = int((info.get("recipe") or {}).get("steps_per_epoch") or 1)
    params = {k: v for k, v in info.items() if k in ("epochs_run", "steps_run", "best_epoch", "seconds", "n_train",
                                                       "n_synthetic", "temperature", "tta_views")}
    params.update(flatten(info.get("recipe") or {}, "recipe."))
    series = [(key, value, epoch * per_epoch) for key, values in sorted(result.history.items())
              for epoch, value in enumerate(values, start=1)]
    epochs = max((len(v) for v in result.history.values()), default=0)
    series += [("epoch", epoch, epoch * per_epoch) for epoch in range(1, epochs + 1)]
    _log_batches(mlflow, child, params=flatten(params).items(), metrics=series)
    mlflow.set_terminated(child, "FINISHED")
    return child


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as dotted keys and string values (lists as JSON), the form MLflow parameters take."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = _UNSAFE.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def _numbers(tree: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in tree.items():
        name = _UNSAFE.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            yield from _numbers(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


def _log_batches(mlflow: MlflowClient, run_id: str, params: Iterable[tuple[str, str]] = (),
                 metrics: Iterable[tuple[str, float, int]] = ()) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in params]
    metrics = [Metric(k, float(v), now, int(step)) for k, v, step in metrics]
    for start in range(0, len(params), _BATCH["params"]):
        mlflow.log_batch(run_id, params=params[start:start + _BATCH["params"]])
    for start in range(0, len(metrics), _BATCH["metrics"]):
        mlflow.log_batch(run_id, metrics=metrics[start:start + _BATCH["metrics"]])
