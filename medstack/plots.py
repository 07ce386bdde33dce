"""The plots of a run's report: ROC, precision-recall, confusion matrices, calibration, risk-coverage, training
curves.

Plots use matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg on save): no pyplot, so no global
figure registry, nothing to close and several runs may render in threads at once. matplotlib is imported inside the
functions, so importing this module has no side effects (matplotlib builds its font cache on first import).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from medstack.models.decision import describe_decision
from medstack.report import format_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110

History = Mapping[str, list[float]]


def _figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure  # imported here: no matplotlib side effects when the module is imported

    return Figure(layout="constrained", **kwargs)


def _save(fig: Figure, path: Path | str) -> None:
    fig.savefig(path, dpi=DPI)
    fig.clear()  # free the artists now instead of waiting for the garbage collector


def _scores(y_true, proba: np.ndarray, positive_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary: (is positive, P(positive)); K>2: micro-averaged one-vs-rest (flattened one-hot, flattened proba)."""
    y_true, proba = np.asarray(y_true, dtype=np.int64), np.asarray(proba, dtype=np.float64)
    if proba.shape[1] == 2:
        return (y_true == positive_class).astype(int), proba[:, positive_class]
    return np.eye(proba.shape[1], dtype=int)[y_true].ravel(), proba.ravel()


def _curve_scope(probas: Mapping[str, np.ndarray], positive_class: int, class_names: list[str] | None) -> str:
    k = np.asarray(next(iter(probas.values()))).shape[1] if probas else 2
    if k == 2:
        name = class_names[positive_class] if class_names else str(positive_class)
        return f"positive class: {name}"
    return f"micro-average one-vs-rest over {k} classes"


def plot_roc_pr(
    path_roc: Path | str,
    path_pr: Path | str,
    y_true,
    probas: Mapping[str, np.ndarray],
    positive_class: int,
    class_names: list[str] | None = None,
) -> None:
    """All models on one ROC and one precision-recall figure (test split), areas in the legend.

    Binary: curves for ``positive_class``. K>2: one micro-averaged one-vs-rest curve per model (one line per model
    stays readable with six models; the table's ROC AUC is the macro average, so the legend says "micro")."""
    micro = bool(probas) and np.asarray(next(iter(probas.values()))).shape[1] > 2
    tag = "micro " if micro else ""
    roc, pr = _figure(figsize=(6, 5)), _figure(figsize=(6, 5))
    ax_roc, ax_pr = roc.subplots(), pr.subplots()
    prevalence = None
    for name, proba in probas.items():
        truth, score = _scores(y_true, proba, positive_class)
        if len(np.unique(truth)) < 2:  # one class only: the curves are undefined
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        ax_roc.plot(fpr, tpr, lw=1.4, label=f"{name} ({tag}AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, score)
        ap = average_precision_score(truth, score)
        ax_pr.plot(recall, precision, lw=1.4, drawstyle="steps-post", label=f"{name} ({tag}AP {ap:.3f})")
        prevalence = float(truth.mean())
    scope = _curve_scope(probas, positive_class, class_names)
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax_roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               xlim=(0, 1), ylim=(0, 1.01), title=f"ROC, test split\n{scope}")
    if prevalence is not None:
        ax_pr.axhline(prevalence, color="k", ls="--", lw=0.8, label=f"chance (prevalence {prevalence:.2f})")
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01),
              title=f"Precision-recall, test split\n{scope}")
    ax_roc.legend(fontsize=8, loc="lower right")
    ax_pr.legend(fontsize=8, loc="lower left")
    _save(roc, path_roc)
    _save(pr, path_pr)


def plot_confusion_matrices(path: Path | str, metrics: Mapping, class_names: list[str], split: str = "test") -> None:
    """One panel per model: counts with row percentages (recall per true class), threshold in the title.

    Colour is the row-normalised share, so a minority class's row is as visible as the majority's."""
    models = metrics["models"]
    cols = max(1, min(3, len(models)))
    rows = max(1, math.ceil(len(models) / cols))
    k = len(class_names)
    side = 2.2 + 0.6 * k
    fig = _figure(figsize=(side * cols, (side - 0.2) * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (name, result) in zip(axes, models.items()):
        cm = np.asarray(result[split]["confusion_matrix"], dtype=np.int64)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, f"{count}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
        threshold = result[split].get("threshold")
        if result.get("decision"):
            rule = describe_decision(result["decision"], class_names)
        else:
            rule = "argmax" if threshold is None else f"threshold {format_number(threshold)}"
        ax.set_title(f"{name} ({rule})", fontsize=9)
        ax.set_xticks(range(k), class_names, fontsize=7, rotation=30 if k > 3 else 0)
        ax.set_yticks(range(k), class_names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.suptitle(f"Confusion matrices, {split} split (count, share of the true class)", fontsize=10)
    _save(fig, path)


def plot_histories(path: Path | str, history_by_fold: Mapping[int, History], title: str) -> None:
    """One strategy: train (solid) and val (dashed) loss and accuracy per fold; loss-phase switches (DRW) dotted."""
    from matplotlib.lines import Line2D

    fig = _figure(figsize=(11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(history_by_fold))]
    switches: set[float] = set()
    handles = []
    for colour, (fold, history) in zip(colours, sorted(history_by_fold.items())):
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for suffix, style in (("", "-"), ("val_", "--")):
                values = history.get(suffix + key)
                if values:
                    ax.plot(np.arange(1, len(values) + 1), values, ls=style, color=colour, lw=1.2)
        phase = history.get("loss_phase") or []
        switches.update(float(s) + 1.5 for s in np.flatnonzero(np.diff(phase) != 0))  # between the two epochs
        handles.append(Line2D([], [], color=colour, label=f"fold {fold + 1}"))
    for ax in (ax_loss, ax_acc):
        for x in sorted(switches):
            ax.axvline(x, color="grey", lw=0.9, ls=":")
        ax.set_xlabel("epoch")
    handles += [Line2D([], [], color="k", ls="-", label="train"), Line2D([], [], color="k", ls="--", label="val")]
    if switches:
        handles.append(Line2D([], [], color="grey", ls=":", label="loss switch (DRW)"))
    ax_loss.set(ylabel="loss", title=f"{title}: loss")
    ax_acc.set(ylabel="accuracy", title=f"{title}: accuracy")
    ax_acc.legend(handles=handles, fontsize=7, loc="best")
    _save(fig, path)


def plot_calibration(path: Path | str, y_true, probas: Mapping[str, np.ndarray], positive_class: int) -> None:
    """Reliability curve per model (10 quantile bins) against the diagonal. K>2: pooled one-vs-rest probabilities."""
    fig = _figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    for name, proba in probas.items():
        truth, score = _scores(y_true, proba, positive_class)
        if len(np.unique(truth)) < 2:
            continue
        frac, mean = calibration_curve(truth, score, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, marker="o", ms=3, lw=1.2, label=name)
    k = np.asarray(next(iter(probas.values()))).shape[1] if probas else 2
    what = "P(positive class)" if k == 2 else "class probability (all classes pooled, one-vs-rest)"
    ax.set(xlabel=f"mean predicted {what}", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title="Calibration, test split (quantile bins)")
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def plot_reliability(path: Path | str, curves: Mapping[str, list[Mapping[str, Any]]], score: str, title: str,
                     dashed: Iterable[str] = ()) -> None:
    """Reliability diagram from equal-width bin tables (:func:`medstack.models.reliability.reliability_table`):
    per curve, each non-empty bin's observed frequency against its mean predicted ``score``, the marker's area
    growing with the bin's images; curves named in ``dashed`` (a reference, such as the run's test split) dashed."""
    fig = _figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    dashed = set(dashed)
    for name, rows in curves.items():
        shown = [r for r in rows if r["n"]]
        if not shown:
            continue
        total = sum(r["n"] for r in shown)
        line, = ax.plot([r["predicted"] for r in shown], [r["observed"] for r in shown], lw=1.2,
                        ls="--" if name in dashed else "-", label=name)
        ax.scatter([r["predicted"] for r in shown], [r["observed"] for r in shown], color=line.get_color(),
                   s=[8 + 120 * r["n"] / total for r in shown], zorder=3)
    ax.set(xlabel=f"mean predicted {score}", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def plot_risk_coverage(path: Path | str, metrics: Mapping, class_names: list[str]) -> None:
    """Kept-case quality as the least certain test images are referred (0% to 50%), one line per model, its
    referral operating point marked: binary panels kept sensitivity, specificity and balanced accuracy; K > 2
    balanced accuracy and the lowest class recall. From metrics.json's ``referral.risk_coverage`` rows."""
    models = {n: r["referral"] for n, r in metrics["models"].items() if r.get("referral")}
    binary = len(class_names) == 2
    panels = ([("sensitivity", "kept sensitivity"), ("specificity", "kept specificity")] if binary else
              [("lowest_recall", "lowest kept class recall")]) + [("balanced_accuracy", "kept balanced accuracy")]
    fig = _figure(figsize=(4.2 * len(panels), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for i, (name, referral) in enumerate(models.items()):
        rows = referral["risk_coverage"]
        x = [r["referred"] for r in rows]
        for ax, (key, _) in zip(axes, panels):
            y = [_risk_value(r, key) for r in rows]
            ax.plot(x, y, marker="o", ms=2.5, lw=1.2, color=f"C{i % 10}", label=name)
        test = referral["test"]
        axes[-1].plot([test["referred"]], [_risk_value(test, "balanced_accuracy")], marker="*", ms=11,
                      color=f"C{i % 10}", ls="none")
    for ax, (_, label) in zip(axes, panels):
        ax.set(xlabel="share of test images referred (least certain first)", ylabel=label, xlim=(-0.01, 0.55))
    axes[-1].set_title("star: the referral rule applied", fontsize=8)
    fig.suptitle("Risk-coverage, test split (certainty: conformal confidence)", fontsize=10)
    axes[0].legend(fontsize=7, loc="lower right")
    _save(fig, path)


def _risk_value(row: Mapping, key: str) -> float:
    """A risk-coverage figure as a number to plot (nan when undefined, e.g. no kept image of a class)."""
    if key == "lowest_recall":
        known = [r for r in row.get("recall", []) if r is not None]
        return min(known) if known else math.nan
    value = row.get(key)
    return math.nan if value is None else float(value)


def plot_files(strategies: Iterable[str], referral: bool = False) -> dict[str, str]:
    """{label: file name} of every plot :func:`make_plots` draws for these strategies (``referral``: metrics with
    risk-coverage rows), in the report's order (known before drawing, so the report can link them while the
    figures are drawn elsewhere)."""
    files = {"ROC": "roc.png", "Precision-recall": "pr.png", "Confusion matrices": "confusion_test.png",
             "Calibration": "calibration.png"} | ({"Risk-coverage": "risk_coverage.png"} if referral else {})
    return files | {f"Training curves: {strategy}": f"curves_{strategy}.png" for strategy in strategies}


def has_referral(metrics: Mapping) -> bool:
    """Whether a run's metrics carry risk-coverage rows (runs from before conformal calibration do not)."""
    return any(r.get("referral") for r in metrics["models"].values())


def make_plots(
    plot_dir: Path,
    metrics: Mapping,
    y_test,
    test_probas: Mapping[str, np.ndarray],
    histories: Mapping[str, Mapping[int, History]],
    class_names: list[str],
    positive_class: int,
) -> dict[str, str]:
    """Write every plot of the report into ``plot_dir``; returns {label: file name} (:func:`plot_files`)."""
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    files = plot_files(histories, referral=has_referral(metrics))
    plot_roc_pr(plot_dir / files["ROC"], plot_dir / files["Precision-recall"], y_test, test_probas, positive_class,
                class_names)
    plot_confusion_matrices(plot_dir / files["Confusion matrices"], metrics, class_names)
    plot_calibration(plot_dir / files["Calibration"], y_test, test_probas, positive_class)
    if "Risk-coverage" in files:
        plot_risk_coverage(plot_dir / files["Risk-coverage"], metrics, class_names)
    for strategy, per_fold in histories.items():
        plot_histories(plot_dir / files[f"Training curves: {strategy}"], per_fold, strategy)
    return files
