"""Plots and the markdown report of a run (matplotlib's object API: no pyplot global state, thread-safe).

Inputs are the metrics dict of :func:`medstack.pipeline.evaluate_on_test`, test probabilities per model and the
training histories per strategy and fold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

CI_KEYS = ("roc_auc", "pr_auc", "balanced_accuracy", "f1", "recall", "specificity", "mcc", "brier")
OVERFIT_RISE = 0.10  # val loss this much above its minimum ...
OVERFIT_MIN_DELTA = 0.02  # ... and by at least this much in absolute terms
UNDERFIT_FLAT = 0.90  # final train loss above this share of its first value
UNDERFIT_VAL_GAIN = 0.05  # val loss fell by less than this share of its first value


def diagnose_fit(history: dict[str, list[float]]) -> tuple[str, str]:
    """Heuristic fit check of one training, on the epochs of its last loss phase (LDAM-DRW changes the loss
    mid-training, so losses before and after the switch are not comparable).

    - ``overfitting``: the final val loss is more than 10% (and 0.02) above its minimum while train loss kept
      falling after that minimum.
    - ``underfitting``: train loss ended above 90% of its first value and val loss fell by less than 5%.
    - ``too_short``: fewer than 3 epochs in the phase; otherwise ``ok``.
    """
    phase = history.get("loss_phase") or [0] * len(history.get("loss", []))
    keep = [i for i, p in enumerate(phase) if p == phase[-1]] if phase else []
    train = [history["loss"][i] for i in keep]
    val = [history["val_loss"][i] for i in keep] if "val_loss" in history else []
    if len(train) < 3 or len(val) < 3:
        return "too_short", f"{len(train)} epoch(s) in the last loss phase: too few to judge"
    best = int(np.argmin(val))
    rise = val[-1] - val[best]
    if best < len(val) - 1 and rise > OVERFIT_RISE * abs(val[best]) and rise > OVERFIT_MIN_DELTA and train[-1] < train[best]:
        return "overfitting", (
            f"val loss rose from {val[best]:.3f} (epoch {keep[best] + 1}) to {val[-1]:.3f} "
            f"while train loss fell from {train[best]:.3f} to {train[-1]:.3f}; "
            f"early stopping kept the epoch-{keep[best] + 1} weights"
        )
    if train[-1] > UNDERFIT_FLAT * train[0] and (val[0] - min(val)) < UNDERFIT_VAL_GAIN * abs(val[0]):
        return "underfitting", (
            f"train loss {train[0]:.3f} -> {train[-1]:.3f} and val loss {val[0]:.3f} -> best {min(val):.3f}: both flat"
        )
    return "ok", f"best val loss {val[best]:.3f} at epoch {keep[best] + 1} of {keep[-1] + 1}"


def diagnose_all(histories: dict[str, dict[int, dict[str, list[float]]]]) -> dict[str, dict[int, tuple[str, str]]]:
    return {s: {fold: diagnose_fit(h) for fold, h in sorted(per.items())} for s, per in histories.items()}


def _scores(y_true: np.ndarray, proba: np.ndarray, positive_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary: the positive class's score; multi-class: micro-averaged one-vs-rest scores."""
    if proba.shape[1] == 2:
        return (np.asarray(y_true) == positive_class).astype(int), proba[:, positive_class]
    onehot = np.eye(proba.shape[1])[y_true]
    return onehot.ravel(), proba.ravel()


def plot_roc_pr(path_roc: Path, path_pr: Path, y_true, probas: dict[str, np.ndarray], positive_class: int) -> None:
    roc, pr = Figure(figsize=(6, 5)), Figure(figsize=(6, 5))
    ax_roc, ax_pr = roc.subplots(), pr.subplots()
    for name, proba in probas.items():
        truth, score = _scores(y_true, proba, positive_class)
        if len(np.unique(truth)) < 2:
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {np.trapezoid(tpr, fpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, score)
        ax_pr.plot(recall, precision, label=name)
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax_pr.axhline(np.mean(_scores(y_true, next(iter(probas.values())), positive_class)[0]), color="k", ls="--", lw=0.8)
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    for fig, ax, path in ((roc, ax_roc, path_roc), (pr, ax_pr, path_pr)):
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def plot_confusion_matrices(path: Path, metrics: dict, class_names: list[str], split: str = "test") -> None:
    models = metrics["models"]
    cols = min(3, len(models))
    rows = math.ceil(len(models) / cols)
    fig = Figure(figsize=(4 * cols, 3.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (name, result) in zip(axes, models.items()):
        cm = np.asarray(result[split]["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > cm.max() / 2 else "black")
        threshold = result[split]["threshold"]
        ax.set_title(name + ("" if threshold is None else f" (t={threshold:.2f})"), fontsize=9)
        ax.set_xticks(range(len(class_names)), class_names, fontsize=7)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_histories(path: Path, history_by_fold: dict[int, dict[str, list[float]]], title: str) -> None:
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for fold, history in sorted(history_by_fold.items()):
        epochs = np.arange(1, len(history["loss"]) + 1)
        line = ax_loss.plot(epochs, history["loss"], label=f"fold {fold + 1} train")[0]
        ax_loss.plot(epochs, history["val_loss"], ls="--", color=line.get_color(), label=f"fold {fold + 1} val")
        if "accuracy" in history:
            ax_acc.plot(epochs, history["accuracy"], color=line.get_color())
            ax_acc.plot(epochs, history["val_accuracy"], ls="--", color=line.get_color())
        switches = np.flatnonzero(np.diff(history.get("loss_phase", [0])) != 0)
        for s in switches:
            ax_loss.axvline(s + 1.5, color="grey", lw=0.8, ls=":")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss (dotted: DRW switch)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy (dashed: val)")
    ax_loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_calibration(path: Path, y_true, probas: dict[str, np.ndarray], positive_class: int) -> None:
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for name, proba in probas.items():
        truth, score = _scores(y_true, proba, positive_class)
        frac, mean = calibration_curve(truth, score, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title="Calibration (test)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def make_plots(plot_dir: Path, metrics: dict, y_test, test_probas, histories, class_names, positive_class) -> dict[str, str]:
    """Write every plot of the report into ``plot_dir``; returns {label: file name}."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    plot_roc_pr(plot_dir / "roc.png", plot_dir / "pr.png", y_test, test_probas, positive_class)
    plot_confusion_matrices(plot_dir / "confusion_test.png", metrics, class_names)
    plot_calibration(plot_dir / "calibration.png", y_test, test_probas, positive_class)
    files = {"ROC": "roc.png", "Precision-recall": "pr.png", "Confusion matrices": "confusion_test.png", "Calibration": "calibration.png"}
    for strategy, per_fold in histories.items():
        plot_histories(plot_dir / f"curves_{strategy}.png", per_fold, strategy)
        files[f"Training curves: {strategy}"] = f"curves_{strategy}.png"
    return files


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _with_ci(result: dict, key: str) -> str:
    ci = result.get("test_ci", {}).get(key)
    point = _fmt(result["test"][key])
    return point if not ci else f"{point} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _ranked(models: dict) -> list[str]:
    def key(name: str) -> tuple[float, float]:
        t = models[name]["test"]
        auc = t["roc_auc"]
        return (-(auc if not math.isnan(auc) else -1.0), -t["balanced_accuracy"])

    return sorted(models, key=key)


def _recommendation(models: dict) -> list[str]:
    order = _ranked(models)
    best = order[0]
    lines = [f"**{best}** has the highest test ROC AUC ({_with_ci(models[best], 'roc_auc')})."]
    if len(order) > 1:
        second = order[1]
        lo_best = models[best].get("test_ci", {}).get("roc_auc", [math.nan])[0]
        hi_second = models[second].get("test_ci", {}).get("roc_auc", [math.nan, math.nan])[1]
        if not math.isnan(lo_best) and not math.isnan(hi_second) and lo_best <= hi_second:
            lines.append(
                f"Its 95% interval overlaps that of the runner-up **{second}** ({_with_ci(models[second], 'roc_auc')}): "
                "the test split cannot tell them apart; prefer the simpler or better-calibrated (lower Brier) of the two."
            )
        else:
            lines.append(f"Its interval does not overlap the runner-up **{second}**'s.")
    gap = models[best]["oof"]["roc_auc"] - models[best]["test"]["roc_auc"]
    if not math.isnan(gap) and gap > 0.05:
        lines.append(f"Its OOF ROC AUC is {gap:.3f} higher than on test: expect the test figure, not the OOF one.")
    return lines


def render_report(metrics: dict, diagnoses: dict, plots: dict[str, str], notes: list[str], extra: dict) -> str:
    """The run's markdown report: data, leaderboard with CIs, recommendation, OOF, fit diagnosis, notes, plots."""
    ds, models = metrics["dataset"], metrics["models"]
    classes = ds["classes"]
    out = [f"# medstack report: {ds['name']}", "", "## Data", "", "| split | " + " | ".join(classes) + " | total |"]
    out.append("|---|" + "---|" * (len(classes) + 1))
    for split, counts in ds["counts"].items():
        out.append(f"| {split} | " + " | ".join(str(counts[c]) for c in classes) + f" | {sum(counts.values())} |")
    out += ["", "## Test leaderboard (95% bootstrap CI)", ""]
    out.append("| model | " + " | ".join(CI_KEYS) + " | threshold |")
    out.append("|---|" + "---|" * (len(CI_KEYS) + 1))
    for name in _ranked(models):
        cells = [_with_ci(models[name], k) for k in CI_KEYS]
        out.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(models[name]['test']['threshold'])} |")
    out += ["", "## Which model to trust", "", *_recommendation(models), ""]
    out += ["## Out-of-fold (train split) for comparison", "", "| model | roc_auc | balanced_accuracy | f1 | brier |", "|---|---|---|---|---|"]
    for name in _ranked(models):
        o = models[name]["oof"]
        out.append(f"| {name} | {_fmt(o['roc_auc'])} | {_fmt(o['balanced_accuracy'])} | {_fmt(o['f1'])} | {_fmt(o['brier'])} |")
    if len(classes) > 2:
        out += ["", "## Per-class test metrics", "", "| model | class | precision | recall | f1 | support |", "|---|---|---|---|---|---|"]
        for name in _ranked(models):
            for cls, row in models[name]["test"]["per_class"].items():
                out.append(f"| {name} | {cls} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} | {row['support']} |")
    out += ["", "## Fit diagnosis (heuristics: see medstack/report.py)", "", "| strategy | fold | verdict | why |", "|---|---|---|---|"]
    for strategy, per_fold in diagnoses.items():
        for fold, (verdict, why) in per_fold.items():
            out.append(f"| {strategy} | {fold + 1} | {verdict} | {why} |")
    out += ["", "## Warnings and notes", ""]
    out += [f"- {n}" for n in notes] if notes else ["- none"]
    out += ["", "## Run details", ""]
    out += [f"- {key}: {value}" for key, value in extra.items()]
    out += ["", "## Plots", ""]
    out += [f"### {label}\n\n![{label}]({link})\n" for label, link in plots.items()]
    return "\n".join(out) + "\n"
