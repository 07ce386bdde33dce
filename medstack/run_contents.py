"""What a run folder holds, composed from the DAG's results before anything is written.

The report node calls :func:`compose_run` and hands the result to :func:`medstack.outputs.write_run`, which only
writes. Each part comes from its owner: the prediction tables' format from :mod:`medstack.run_folder`, the
leaderboard from :mod:`medstack.models.metrics`, ``model.json`` from :mod:`medstack.inference.bundle`, the report
text and config.yaml's recipe header from :mod:`medstack.report`, the figures from :mod:`medstack.plots`. The manifest
(versions, commit, seeds, fingerprints) is composed here.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

from medstack.config import RunConfig, config_to_yaml
from medstack.inference.bundle import bundle_record
from medstack.models.metrics import metrics_table
from medstack.outputs import RunContents
from medstack.pipeline import EnsembleFit, PreparedData, code_version, determinism_record
from medstack.plots import has_referral, make_plots, plot_files
from medstack.report import run_report
from medstack.report_text import recipe_comment, recipe_summary
from medstack.run_folder import STUDENT_FILE, member_file, plot_link, predictions_frame

PACKAGES = ("medstack", "prefect", "tensorflow", "keras", "scikit-learn", "imbalanced-learn", "numpy", "pandas", "joblib")


def compose_run(run_id: str, cfg: RunConfig, prepared: PreparedData, ensembles: EnsembleFit, metrics: dict,
                extra: dict[str, Any]) -> RunContents:
    """Every file of the run folder, as content (the figures as a drawing to do). The sealed test labels are read
    here, after evaluation, to stand next to the test predictions."""
    preds = ensembles.predictions
    names = list(prepared.class_names)
    y_test = prepared.test_labels.reveal()
    recipe = recipe_summary(preds.fold_info)
    plots = {label: plot_link(name) for label, name in plot_files(preds.histories, has_referral(metrics)).items()}
    return RunContents(
        metrics=metrics,
        leaderboard=metrics_table(metrics["models"]),
        oof_predictions=predictions_frame(prepared.train_idx, prepared.y_train, preds.oof, names, prepared.fold_of),
        test_predictions=predictions_frame(prepared.test_idx, y_test, preds.test, names),
        calibration_predictions=(predictions_frame(prepared.cal_idx, prepared.y_cal, preds.cal, names)
                                 if len(prepared.cal_idx) else None),
        fold_models={**{member_file(strategy, fold): Path(source)
                        for strategy, per_fold in preds.model_paths.items() for fold, source in per_fold.items()},
                     **({STUDENT_FILE: Path(ensembles.student["model_path"])} if ensembles.student else {})},
        meta_model=ensembles.meta_model,
        bundle=bundle_record(run_id, cfg, prepared, ensembles, metrics),
        report=run_report(run_id, cfg, prepared, ensembles, metrics, extra, plots, recipe),
        config=recipe_comment(recipe) + config_to_yaml(cfg),
        manifest=run_manifest(cfg, prepared, run_id, extra, determinism_record(cfg, prepared, ensembles)),
        draw_plots=partial(make_plots, metrics=metrics, y_test=y_test, test_probas=preds.test,
                           histories=preds.histories, class_names=names, positive_class=prepared.positive_class),
    )


def run_manifest(cfg: RunConfig, prepared: PreparedData, run_id: str, extra: dict[str, Any],
                 determinism: dict[str, Any] | None = None) -> dict[str, Any]:
    """manifest.json: what made the run (versions, commit, platform, seeds, data fingerprint), then ``extra``."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "run_id": run_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": _git_commit(),
        "code_version_models": code_version(),
        "data_fingerprint": prepared.fingerprint,
        "seed": cfg.seed,
        "split_seed": cfg.split.seed,
        "determinism": determinism,
        **extra,
    }


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
