"""The evaluation folder ``evaluations/<evaluation-id>/``: its file names, its writer and its reader.

Like a run folder it appears whole or not at all: it is assembled under a temporary name beside its final place
(:func:`medstack.storage.atomic_directory`) and renamed when complete, so a failure leaves no half folder.

| file | what |
|---|---|
| ``evaluation.json`` | every number of the evaluation (:func:`medstack.evaluation.evaluate.evaluate_scored`) |
| ``report.md`` | the same for people, beside the run's own test split; plots linked |
| ``predictions.csv`` | one row per image: input, label, every model's probabilities, the chosen model's label, its sets, p-values and referral as ``medstack predict`` writes them |
| ``plots/`` | reliability diagram, confusion matrices |
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from medstack.evaluation.score import Scored
from medstack.inference.trust import Trust
from medstack.outputs import OutputError, check_output_dir
from medstack.run_folder import PLOTS_DIR, REPORT_FILE, probability_column  # an evaluation folder reads like a run folder
from medstack.storage import atomic_directory, atomic_write_json, atomic_write_text

EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.csv"
DEFAULT_OUTPUT_DIR = "evaluations"


def new_evaluation_id(data_source: str, now: dt.datetime | None = None) -> str:
    """``<UTC time>-<data name>-<random>``: sortable by time, readable, never colliding."""
    now = now or dt.datetime.now(dt.timezone.utc)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data_source).stem or Path(data_source).name).strip("-._")[:40]
    return f"{now:%Y%m%d-%H%M%S}-{stem or 'data'}-{uuid.uuid4().hex[:4]}"


def predictions_table(scored: Scored, classes: list[str], models: list[str], chosen: str, labels: np.ndarray,
                      trust: Trust | None = None) -> pd.DataFrame:
    """One row per scored image: ``input``, ``label``, ``<model>:p(<class>)`` for every model (the names of the
    run's test_predictions.csv), ``predicted`` (``chosen``'s frozen decision), ``correct``, then ``chosen``'s
    ``set_<level>``, ``p_value:<class>``, ``refer`` and ``refer_reason`` when the bundle has conformal calibration
    (:meth:`medstack.inference.trust.Trust.columns`, predict's columns), and ``warnings``."""
    frame = pd.DataFrame({"input": scored.ids, "label": [classes[i] for i in scored.labels]})
    for model in models:
        for k, name in enumerate(classes):
            frame[probability_column(model, name)] = scored.probas[model][:, k]
    frame["predicted"] = [classes[int(i)] for i in labels]
    frame["model"] = chosen
    frame["correct"] = np.asarray(labels) == scored.labels
    for column, values in (trust.columns() if trust is not None else {}).items():
        frame[column] = values
    frame["warnings"] = ["; ".join(text for _, text in found) for found in scored.warnings]
    return frame


def write_evaluation(output_dir: str | Path, evaluation_id: str, evaluation: dict[str, Any],
                     predictions: pd.DataFrame, report: str, draw_plots: Callable[[Path], Any]) -> Path:
    """Write the whole folder atomically; returns its final path. The output folder is checked first."""
    final = check_output_dir(output_dir) / evaluation_id
    if final.exists() or final.is_symlink():
        raise OutputError(f"evaluation folder {final} already exists")
    with atomic_directory(final) as tmp:
        atomic_write_json(tmp / EVALUATION_FILE, evaluation)
        predictions.to_csv(tmp / PREDICTIONS_FILE, index=False, float_format="%.9g")
        plots = tmp / PLOTS_DIR
        plots.mkdir()
        draw_plots(plots)
        atomic_write_text(tmp / REPORT_FILE, report)
    return final


def save_evaluation(output_dir: str | Path, evaluation: dict[str, Any], scored: Scored, labels: np.ndarray,
                    trust: Trust | None = None) -> Path:
    """Compose the folder of ``evaluation`` (its report, predictions table and plots) and write it atomically;
    ``labels`` are the chosen model's decisions, ``trust`` its per-image sets and referral (None without)."""
    from medstack.evaluation.report import render_evaluation_report

    models, classes = list(evaluation["models"]), list(evaluation["classes"])
    table = predictions_table(scored, classes, models, evaluation["model"]["chosen"], labels, trust)
    return write_evaluation(output_dir, evaluation["evaluation_id"], evaluation, table,
                            render_evaluation_report(evaluation), lambda folder: draw_plots(folder, evaluation))


def draw_plots(folder: Path, evaluation: dict[str, Any]) -> None:
    """The chosen model's reliability diagram (this data; the run's test split dashed; after recalibration when
    there was one: the ECE table has every model) and every model's confusion matrix on this data."""
    from medstack.evaluation.report import PLOTS
    from medstack.plots import plot_confusion_matrices, plot_reliability

    models, chosen = evaluation["models"], evaluation["model"]["chosen"]
    curves = {f"{chosen}, this data": models[chosen]["external"]["calibration"]["reliability"]}
    dashed = []
    if models[chosen].get("run_test"):
        dashed.append(f"{chosen}, run's test split")
        curves[dashed[-1]] = models[chosen]["run_test"]["calibration"]["reliability"]
    if evaluation.get("recalibration"):
        curves[f"{chosen}, recalibrated (judged part)"] = evaluation["recalibration"]["after"]["calibration"][
            "reliability"]
    score = "P(positive class)" if len(evaluation["classes"]) == 2 else "top-label confidence"
    plot_reliability(folder / PLOTS["Reliability"], curves, score,
                     f"Reliability, {Path(evaluation['data']['source']).name} ({evaluation['settings']['ece_bins']} "
                     "equal-width bins)", dashed=dashed)
    confusion = {"models": {name: {"external": r["external"]["metrics"], "decision": r["decision"]}
                            for name, r in models.items()}}
    plot_confusion_matrices(folder / PLOTS["Confusion matrices"], confusion, list(evaluation["classes"]),
                            split="external")


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """``evaluation.json`` of an evaluation folder."""
    return json.loads((Path(folder) / EVALUATION_FILE).read_text())
