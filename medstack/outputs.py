"""Writing a run folder: every file of ``runs/<run-id>/`` appears together or not at all.

The folder is assembled under a temporary name beside its final place and renamed when complete, so a
crash never leaves a half-written run that looks finished. Nothing is written outside the output folder: run ids
are plain folder names, the run folder must not exist (not even as a symlink), and it may hold no symlinks.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medstack.config import RunConfig, config_to_yaml, stable_hash
from medstack.pipeline import EnsembleFit, PreparedData, code_version, determinism_record
from medstack.storage import FoldCache, atomic_directory, atomic_write_json, atomic_write_text, sweep_stale_temporaries

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain folder name: no separators, no '..'
PACKAGES = ("medstack", "prefect", "tensorflow", "keras", "scikit-learn", "imbalanced-learn", "numpy", "pandas", "joblib")


class OutputError(OSError):
    """The output folder cannot be created or written."""


def new_run_id(cfg: RunConfig, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    # Time for sorting, config hash for telling configs apart, a random tail so two runs in one second never collide.
    return f"{now:%Y%m%d-%H%M%S}-{stable_hash(cfg.model_dump(mode='json'))[:6]}-{uuid.uuid4().hex[:4]}"


def check_output_dir(path: str | Path) -> Path:
    """Resolve the output folder and make sure a run can be written there, before any training starts.

    Temporaries that killed runs left there are removed (never those of a run still writing)."""
    out = _writable_dir(path, "output dir")
    sweep_stale_temporaries(out)
    return out


def check_cache_dir(path: str | Path) -> Path:
    """The same for the fold cache: writable before any training, temporaries of killed writers removed."""
    root = _writable_dir(path, "cache dir")
    FoldCache(root).sweep()
    return root


def _writable_dir(path: str | Path, what: str) -> Path:
    out = Path(path).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {out} cannot be created: {exc.strerror}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {out} is not writable")
    return out


def predictions_frame(rows: np.ndarray, labels: np.ndarray, probas: dict[str, np.ndarray], class_names: list[str], fold: np.ndarray | None = None) -> pd.DataFrame:
    """One row per image: dataset row, true label, fold (OOF only) and every model's class probabilities."""
    frame = pd.DataFrame({"row": rows, "label": labels})
    if fold is not None:
        frame["fold"] = fold
    for model, proba in probas.items():
        for k, name in enumerate(class_names):
            frame[f"{model}:p({name})"] = proba[:, k]
    return frame


def read_test_predictions(run_dir: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """What :func:`predictions_frame` wrote to a run's ``test_predictions.csv``: its (row, label) columns sorted by
    row, and {model: (N, K) class probabilities} from the ``model:p(class)`` columns."""
    frame = pd.read_csv(Path(run_dir) / "test_predictions.csv").sort_values("row", kind="stable").reset_index(drop=True)
    columns: dict[str, list[str]] = {}
    for column in frame.columns:
        model, sep, _ = column.partition(":p(")
        if sep:
            columns.setdefault(model, []).append(column)
    return frame[["row", "label"]], {m: frame[cols].to_numpy(dtype=np.float64) for m, cols in columns.items()}


def manifest(
    cfg: RunConfig, prepared: PreparedData, run_id: str, extra: dict[str, Any], determinism: dict[str, Any] | None = None
) -> dict[str, Any]:
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


def _calibration_summary(cfg: RunConfig, fold_info: dict[str, dict[int, dict[str, Any]]]) -> str:
    if cfg.training.calibration == "none":
        return "none (plain softmax of each fold model's logits)"
    per_strategy = {s: [per[k].get("temperature") for k in sorted(per)] for s, per in fold_info.items()}
    listed = "; ".join(f"{s}: {', '.join('?' if t is None else f'{t:.2f}' for t in ts)}" for s, ts in per_strategy.items())
    return f"temperature scaling, one T per fold model fitted on the val split (probabilities = softmax(logits / T)); T per fold: {listed}"


def recipe_summary(fold_info: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, str]]:
    """The training recipe each strategy's folds resolved from the step budget (models.recipe), as readable ranges:
    rows trained on, steps per epoch, epochs planned and run, steps run, patience, earliest stop, TTA views."""

    def span(values: list[Any]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        low, high = min(values), max(values)
        return f"{low}" if low == high else f"{low}-{high}"

    out = {}
    for strategy, per_fold in fold_info.items():
        infos = [per_fold[k] for k in sorted(per_fold)]
        recipes = [info.get("recipe") or {} for info in infos]
        out[strategy] = {
            "training rows": span([i.get("n_train", 0) + i.get("n_synthetic", 0) for i in infos]),
            "batch size": span([r.get("batch_size") for r in recipes]),
            "steps/epoch": span([r.get("steps_per_epoch") for r in recipes]),
            "epochs planned": span([r.get("epochs") for r in recipes]),
            "epochs run": span([i.get("epochs_run") for i in infos]),
            "steps run": span([i.get("steps_run") for i in infos]),
            "patience (epochs)": span([r.get("patience_epochs") for r in recipes]),
            "no stop before epoch": span([None if r.get("stop_from_epoch") is None else r["stop_from_epoch"] + 1
                                          for r in recipes]),
            "warm-up steps": span([r.get("warmup_steps") for r in recipes]),
            "monitor": span([r.get("monitor") for r in recipes]),
            "TTA views": span([i.get("tta_views") for i in infos]),
        }
    return out


def _recipe_comment(recipe: dict[str, dict[str, str]]) -> str:
    """config.yaml's header: the values the step budget resolved to, which the config itself does not state."""
    lines = ["# Training recipe as resolved for this run's folds (from training.min_steps, stop_after_steps,",
             "# patience_steps and the fold sizes; ranges over folds):"]
    for strategy, values in recipe.items():
        lines.append(f"#   {strategy}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines) + "\n"


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def write_run(
    output_dir: Path,
    run_id: str,
    cfg: RunConfig,
    prepared: PreparedData,
    ensembles: EnsembleFit,
    metrics: dict,
    extra: dict[str, Any],
) -> Path:
    """Write the complete run folder atomically; returns its final path."""
    from medstack.inference.bundle import write_bundle
    from medstack.models.metrics import metrics_table
    from medstack.plots import make_plots
    from medstack.fit_diagnosis import diagnose_all
    from medstack.report import render_report

    preds = ensembles.predictions
    if not RUN_ID.fullmatch(run_id):
        raise OutputError(f"run id {run_id!r} is not a plain folder name (letters, digits, '.', '_', '-')")
    final = check_output_dir(output_dir) / run_id
    if final.exists() or final.is_symlink():
        raise OutputError(f"run folder {final} already exists" + (" as a symlink" if final.is_symlink() else ""))
    names = list(prepared.class_names)
    with atomic_directory(final) as tmp:
        atomic_write_json(tmp / "metrics.json", metrics)
        metrics_table(metrics["models"]).to_csv(tmp / "leaderboard.csv")
        predictions_frame(prepared.train_idx, prepared.y_train, preds.oof, names, prepared.fold_of).to_csv(
            tmp / "oof_predictions.csv", index=False
        )
        y_test = prepared.test_labels.reveal()  # written next to the test metrics, after evaluation
        predictions_frame(prepared.test_idx, y_test, preds.test, names).to_csv(tmp / "test_predictions.csv", index=False)
        plots = make_plots(tmp / "plots", metrics, y_test, preds.test, preds.histories, names, prepared.positive_class)
        _copy_models(tmp / "models", preds.model_paths)
        ensembles.meta_model.save(tmp / "models" / "meta_model.joblib")
        write_bundle(tmp, run_id, cfg, prepared, ensembles, metrics)  # model.json: the run folder as a model bundle
        diagnoses = diagnose_all(preds.histories, preds.fold_info)
        notes = list(prepared.notes) + [
            f"{strategy} fold {fold + 1}: {note}"
            for strategy, per_fold in preds.fold_info.items()
            for fold, info in per_fold.items()
            for note in info.get("notes", [])
        ]
        details = {
            "run id": run_id,
            "calibration": _calibration_summary(cfg, preds.fold_info),
            "decision policy": (f"binary: threshold by {ensembles.threshold_policy}" if len(names) == 2 else
                                f"multi-class: {cfg.ensemble.multiclass_policy}"
                                + "".join(f", critical class {c} (recall target {t:g})"
                                          for c, t in cfg.ensemble.critical_classes.items()))
            + ", chosen on OOF predictions",
            "meta-model inputs": ensembles.meta_model.features,
            "meta-model C": ensembles.meta_model.best_C_,
            "meta-model coefficients": ensembles.meta_model.coefficients,
            **{k: v for k, v in extra.items() if k != "folds"},
        }
        plot_links = {label: f"plots/{name}" for label, name in plots.items()}
        recipe = recipe_summary(preds.fold_info)
        atomic_write_text(tmp / "report.md", render_report(metrics, diagnoses, plot_links, notes, details, recipe))
        atomic_write_text(tmp / "config.yaml", _recipe_comment(recipe) + config_to_yaml(cfg))
        determinism = determinism_record(cfg, prepared, ensembles)
        atomic_write_json(tmp / "manifest.json", manifest(cfg, prepared, run_id, extra, determinism))
        _check_no_symlinks(tmp)
    return final


def _check_no_symlinks(root: Path) -> None:
    """Every path in the finished run folder is a plain file or folder inside it: nothing points elsewhere."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if os.path.islink(os.path.join(folder, name)):
                rel = Path(folder, name).relative_to(root)
                raise OutputError(f"run folder would hold a symlink {rel} -> {os.readlink(Path(folder, name))}")


def _copy_models(dest: Path, model_paths: dict[str, dict[int, str]]) -> None:
    for strategy, per_fold in model_paths.items():
        (dest / strategy).mkdir(parents=True, exist_ok=True)
        for fold, src in per_fold.items():
            target = dest / strategy / f"fold-{fold + 1}.keras"
            try:
                os.link(src, target)  # cache and runs usually share a disk: no copy needed
            except OSError:
                shutil.copy2(src, target)
