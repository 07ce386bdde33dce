"""The run folder ``runs/<run-id>/``: its file names, its typed readers, and the rules every reader shares.

:mod:`medstack.outputs` writes the folder; everyone else (``medstack runs`` and ``compare``, the model bundle, the
registry and its auto-promotion, the benchmarks) finds files and applies rules through this module rather than by
spelling file names or re-deriving a rule. The rules: which model a run recommends (its own OOF-chosen
recommendation, else the best test ROC AUC, labelled so), which class is the positive one, which metrics are the
headline ones, and how a predictions table names its columns. Importing it pulls in no numpy or pandas (the
console's help stays light); the table readers import them when called.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medstack.inference.schema import read_bundle_json

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

METRICS_FILE = "metrics.json"  # every model's metrics per split, the dataset, the recommendation
LEADERBOARD_FILE = "leaderboard.csv"  # one row per model of the scalar test metrics
OOF_PREDICTIONS_FILE = "oof_predictions.csv"  # one row per training image: label, fold, every model's probabilities
TEST_PREDICTIONS_FILE = "test_predictions.csv"  # one row per test image: label, every model's probabilities
# one row per image of the calibration slice (conformal.calibration split): label, every model's probabilities,
# from which model.json's conformal calibration is fitted; absent when the run calibrated on OOF predictions
CALIBRATION_PREDICTIONS_FILE = "calibration_predictions.csv"
REPORT_FILE = "report.md"
CONFIG_FILE = "config.yaml"  # the run's config, headed by the training recipe it resolved to
MANIFEST_FILE = "manifest.json"  # versions, seeds, fingerprints, per-fold facts: what made the run
BUNDLE_FILE = "model.json"  # the run folder as a model (medstack.inference.bundle)
PLOTS_DIR = "plots"
MODELS_DIR = "models"
META_MODEL_FILE = f"{MODELS_DIR}/meta_model.joblib"  # an export; nothing in medstack loads it
STUDENT = "student"  # the one-network model (medstack.pipeline.student): its name as a model of the run
STUDENT_FILE = f"{MODELS_DIR}/{STUDENT}/model.keras"

# The metrics a run is summed up by, in this order: model.json's summary, the report's tables, `medstack compare`.
HEADLINE_METRICS = ("roc_auc", "pr_auc", "balanced_accuracy", "recall", "specificity", "f1", "mcc", "brier")
RECOMMENDED, BEST_TEST_AUC = "recommended", "best test ROC AUC"  # why a model is the run's pick
DEFAULT_POSITIVE_CLASS = 1


class RunFolderError(ValueError):
    """A run folder file that is missing or cannot be read; the message names the file."""


def member_file(strategy: str, fold: int) -> str:
    """Where fold ``fold`` (0-based) of ``strategy`` lies inside the run folder."""
    return f"{MODELS_DIR}/{strategy}/fold-{fold + 1}.keras"


def training_key(strategy: str, fold: int) -> str:
    """A training's name in the manifest, task runs and MLflow: ``<strategy>|fold-<k>`` (1-based), or ``student``
    for the one-network model (medstack.pipeline.student), which trains on every fold."""
    return STUDENT if strategy == STUDENT else f"{strategy}|fold-{fold + 1}"


def training_label(strategy: str, fold: int) -> str:
    """A training as people read it: ``<strategy> fold <k>`` (1-based), or the student's."""
    return f"{STUDENT} (whole training split)" if strategy == STUDENT else f"{strategy} fold {fold + 1}"


def plot_link(file_name: str) -> str:
    """A plot's path relative to the run folder (how the report links it)."""
    return f"{PLOTS_DIR}/{file_name}"


def is_run_folder(path: Path) -> bool:
    """A finished run: a plain folder (no symlink, no temporary ``.name``) holding its manifest."""
    return (path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
            and (path / MANIFEST_FILE).is_file())


def has_metrics(path: Path) -> bool:
    return (Path(path) / METRICS_FILE).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: cannot be read as a run file ({exc})") from exc
    if not isinstance(value, dict):
        raise RunFolderError(f"{path}: cannot be read as a run file (not a JSON object)")
    return value


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json``: ``dataset``, ``models`` (name -> ``test``, ``oof``, ``test_ci``, ``decision``, ...),
    ``recommended``."""
    return _read_json(Path(run_dir) / METRICS_FILE)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """``manifest.json``: ``run_id``, ``created``, ``packages``, ``data_fingerprint``, seeds, ``folds``, wall time."""
    return _read_json(Path(run_dir) / MANIFEST_FILE)


def read_config_tree(run_dir: str | Path) -> dict[str, Any]:
    """``config.yaml`` as a plain tree (not validated: a run written by another medstack version still reads)."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunFolderError(f"{path}: cannot be read as a run file ({exc})") from exc
    if not isinstance(tree, dict):
        raise RunFolderError(f"{path}: cannot be read as a run file (not a mapping)")
    return tree


def read_bundle(run_dir: str | Path) -> dict[str, Any]:
    """``model.json``, parsed and checked (:func:`medstack.inference.schema.read_bundle_json`)."""
    return read_bundle_json(Path(run_dir) / BUNDLE_FILE)


def read_leaderboard(run_dir: str | Path) -> pd.DataFrame:
    """``leaderboard.csv``: one row per model (column ``model``) of the scalar test metrics, best first."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / LEADERBOARD_FILE)


def probability_column(model: str, class_name: str) -> str:
    """A predictions table's column of ``model``'s probability of ``class_name``: ``stacking:p(pneumonia)``."""
    return f"{model}:p({class_name})"


def predictions_frame(rows: np.ndarray, labels: np.ndarray, probas: Mapping[str, np.ndarray], class_names: list[str],
                      fold: np.ndarray | None = None) -> pd.DataFrame:
    """One row per image: dataset row, true label, fold (OOF only) and every model's class probabilities."""
    import pandas as pd

    frame = pd.DataFrame({"row": rows, "label": labels})
    if fold is not None:
        frame["fold"] = fold
    for model, proba in probas.items():
        for k, name in enumerate(class_names):
            frame[probability_column(model, name)] = proba[:, k]
    return frame


@dataclass(frozen=True)
class Predictions:
    """A predictions table read back: one entry per image, sorted by dataset row."""

    rows: np.ndarray  # dataset row of each image
    labels: np.ndarray
    probas: dict[str, np.ndarray]  # model -> (N, K) class probabilities, float64
    folds: np.ndarray | None  # OOF only: the fold that held each image out

    def same_images(self, other: Predictions) -> bool:
        """Whether both tables hold the same images (dataset rows) with the same labels."""
        import numpy as np

        return np.array_equal(self.rows, other.rows) and np.array_equal(self.labels, other.labels)


def read_test_predictions(run_dir: str | Path) -> Predictions:
    """``test_predictions.csv`` as :func:`predictions_frame` wrote it."""
    return _read_predictions(Path(run_dir) / TEST_PREDICTIONS_FILE)


def read_oof_predictions(run_dir: str | Path) -> Predictions:
    """``oof_predictions.csv`` as :func:`predictions_frame` wrote it (with folds)."""
    return _read_predictions(Path(run_dir) / OOF_PREDICTIONS_FILE)


def read_calibration_predictions(run_dir: str | Path) -> Predictions | None:
    """``calibration_predictions.csv`` (the rows model.json's conformal calibration was fitted on), or None for a
    run without a calibration slice (calibrated on its OOF predictions: :func:`read_oof_predictions`, or older)."""
    path = Path(run_dir) / CALIBRATION_PREDICTIONS_FILE
    return _read_predictions(path) if path.is_file() else None


def _read_predictions(path: Path) -> Predictions:
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(path).sort_values("row", kind="stable").reset_index(drop=True)
    columns: dict[str, list[str]] = {}
    for column in frame.columns:
        model, sep, _ = column.partition(":p(")
        if sep:
            columns.setdefault(model, []).append(column)
    return Predictions(rows=frame["row"].to_numpy(), labels=frame["label"].to_numpy(),
                       probas={m: frame[cols].to_numpy(dtype=np.float64) for m, cols in columns.items()},
                       folds=frame["fold"].to_numpy() if "fold" in frame else None)


def positive_class_index(configured: int | None, n_classes: int | None = None) -> int:
    """The positive class's index: ``data.positive_class`` when set, else 1 (binary metrics and thresholds are for
    it; multi-class metrics are macro averages and do not use it)."""
    positive = DEFAULT_POSITIVE_CLASS if configured is None else int(configured)
    if n_classes == 2 and positive > 1:
        raise ValueError(f"data.positive_class must be 0 or 1 for a binary dataset, got {positive}")
    return positive


def read_positive_class(run_dir: str | Path) -> int:
    """The positive class a finished run was trained and scored for, from its ``config.yaml``."""
    data = read_config_tree(run_dir).get("data") or {}
    return positive_class_index(data.get("positive_class") if isinstance(data, dict) else None)


def recommended_model(recommended: Mapping[str, Any] | None, models: Mapping[str, Mapping[str, Any]]
                      ) -> tuple[str | None, str]:
    """(model, why) a run is summed up by: its own recommendation (chosen on OOF predictions) when it names one of
    ``models``, why = ``RECOMMENDED``; else the best test ROC AUC (ties: balanced accuracy, then the given order),
    why = ``BEST_TEST_AUC``; (None, "") when no model has a test ROC AUC. ``models`` maps a name to a dict with a
    ``test`` dict: metrics.json's ``models`` and model.json's ``metrics`` both do."""
    if isinstance(recommended, Mapping) and recommended.get("model") in models:
        return recommended["model"], RECOMMENDED

    def score(name: str) -> tuple[float, float]:
        test = models[name].get("test") or {}
        return _number(test.get("roc_auc")), _number(test.get("balanced_accuracy"))

    scored = [name for name in models if score(name)[0] > -math.inf]
    if not scored:
        return None, ""
    return max(scored, key=score), BEST_TEST_AUC  # max keeps the first of equals


def _number(value: Any) -> float:
    """A sortable figure: missing, non-numeric and NaN values rank below every number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return -math.inf
    return float(value)


def run_recommendation(metrics: Mapping[str, Any]) -> tuple[str | None, str]:
    """:func:`recommended_model` of a run's ``metrics.json``."""
    return recommended_model(metrics.get("recommended"), metrics.get("models") or {})


def bundle_recommendation(meta: Mapping[str, Any]) -> tuple[str | None, str]:
    """:func:`recommended_model` of a run's ``model.json`` (its ``metrics`` summary holds every model's test)."""
    return recommended_model(meta.get("recommended"), meta.get("metrics") or {})
