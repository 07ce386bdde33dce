"""Imbalance-aware metrics, decision thresholds and bootstrap confidence intervals (numpy + scikit-learn).

``y_true`` is (N,) integer labels, ``proba`` (N, K) class probabilities. Binary problems are judged for one
``positive_class`` at a decision threshold; multi-class problems by argmax with macro averages and per-class rows.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from medstack.models.resampled import pr_auc_of_resamples, roc_auc_of_resamples

METRIC_KEYS = (
    "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1",
    "roc_auc", "pr_auc", "mcc", "brier", "threshold", "confusion_matrix",
)
SCALAR_KEYS = tuple(k for k in METRIC_KEYS if k not in ("threshold", "confusion_matrix"))
POLICIES = ("f1", "youden", "sensitivity")
PAIRED_RESAMPLES = 1000  # paired_auc_difference's default: run-to-run comparisons (medstack compare, auto-promotion)


def predict_labels(
    proba: np.ndarray, threshold: float | None, positive_class: int = 1, offsets: Sequence[float] | None = None
) -> np.ndarray:
    """Binary: positive where P(positive) >= threshold (0.5 if None); multi-class: argmax, or with ``offsets``
    argmax of ``log p + offsets`` (see :mod:`medstack.models.decision`)."""
    proba = np.asarray(proba)
    if proba.shape[1] != 2:
        if offsets is None:
            return proba.argmax(axis=1)
        return np.argmax(np.log(np.clip(proba, 1e-12, None)) + np.asarray(offsets, dtype=np.float64), axis=1)
    t = 0.5 if threshold is None else threshold
    negative = 1 - positive_class
    return np.where(proba[:, positive_class] >= t, positive_class, negative)


def choose_threshold(
    y_true: np.ndarray, proba: np.ndarray, policy: str, positive_class: int = 1, target_sensitivity: float = 0.9
) -> float | None:
    """The decision threshold on P(positive) that the policy prefers (None for multi-class).

    ``f1`` maximises the positive class's F1; ``youden`` maximises sensitivity + specificity - 1; ``sensitivity``
    takes the highest threshold that still reaches ``target_sensitivity`` (so specificity is as high as it can be).
    Ties go to the threshold closest to 0.5.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown threshold policy {policy!r}; choose one of {list(POLICIES)}")
    proba = np.asarray(proba)
    if proba.shape[1] != 2:
        return None
    positive = np.asarray(y_true) == positive_class
    if positive.all() or not positive.any():
        raise ValueError("choosing a threshold needs both classes in y_true")
    score = proba[:, positive_class]
    if policy == "f1":
        precision, recall, thresholds = precision_recall_curve(positive, score)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        return _best(thresholds, f1)
    fpr, tpr, thresholds = roc_curve(positive, score, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if policy == "youden":
        return _best(thresholds, tpr - fpr)
    reaching = tpr >= target_sensitivity - 1e-12
    return float(thresholds[reaching].max())


def _best(thresholds: np.ndarray, objective: np.ndarray) -> float:
    best = np.flatnonzero(np.isclose(objective, objective.max()))
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])


def compute_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    threshold: float | None,
    positive_class: int = 1,
    class_names: Sequence[str] | None = None,
    offsets: Sequence[float] | None = None,
) -> dict:
    """All of :data:`METRIC_KEYS` plus ``per_class``; plain Python values, NaN where undefined. Labels come from
    ``threshold`` (binary) or ``offsets`` (multi-class; argmax without them). Multi-class results end with
    ``argmax_accuracy`` and ``argmax_balanced_accuracy``: the same two figures at plain argmax, whatever the
    offsets, since published baselines quote those (binary results are unchanged)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    k = proba.shape[1]
    names = [str(n) for n in (class_names if class_names is not None else range(k))]
    y_pred = predict_labels(proba, threshold, positive_class, offsets)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = _per_class(cm)
    onehot = np.eye(k)[y_true]
    out: dict = {"accuracy": float(np.trace(cm) / cm.sum()), "balanced_accuracy": float(np.mean(per_class["recall"]))}
    if k == 2:
        p = positive_class
        out.update(
            precision=float(per_class["precision"][p]),
            recall=float(per_class["recall"][p]),
            specificity=float(per_class["specificity"][p]),
            f1=float(per_class["f1"][p]),
            roc_auc=_safe(roc_auc_score, y_true == p, proba[:, p]),
            pr_auc=_safe(average_precision_score, y_true == p, proba[:, p]),
            brier=float(np.mean((proba[:, p] - (y_true == p)) ** 2)),
            threshold=None if threshold is None else float(threshold),
        )
    else:
        out.update(
            precision=float(np.mean(per_class["precision"])),
            recall=float(np.mean(per_class["recall"])),
            specificity=float(np.mean(per_class["specificity"])),
            f1=float(np.mean(per_class["f1"])),
            roc_auc=_safe(roc_auc_score, y_true, proba, multi_class="ovr", average="macro", labels=list(range(k))),
            pr_auc=_macro_average_precision(y_true, proba),
            brier=float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
            threshold=None,
        )
    out["mcc"] = _mcc(cm)
    out["confusion_matrix"] = cm.tolist()
    out["per_class"] = {
        name: {
            "precision": float(per_class["precision"][i]),
            "recall": float(per_class["recall"][i]),
            "specificity": float(per_class["specificity"][i]),
            "f1": float(per_class["f1"][i]),
            "support": int(cm[i].sum()),
        }
        for i, name in enumerate(names)
    }
    if k > 2:
        plain = np.zeros((k, k), dtype=np.int64)
        np.add.at(plain, (y_true, proba.argmax(axis=1)), 1)
        out["argmax_accuracy"] = float(np.trace(plain) / plain.sum())
        out["argmax_balanced_accuracy"] = float(np.mean(_per_class(plain)["recall"]))
    return out


def _per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision/recall/specificity/F1 from a confusion matrix (0 where undefined, as scikit-learn)."""
    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * precision * recall, precision + recall),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _mcc(cm: np.ndarray) -> float:
    """Matthews correlation (multi-class Gorodkin form, equal to the binary formula for K=2)."""
    t, p, c, s = cm.sum(axis=1).astype(float), cm.sum(axis=0).astype(float), float(np.trace(cm)), float(cm.sum())
    den = math.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    return float((c * s - t @ p) / den) if den > 0 else 0.0


def _safe(fn, *args, **kwargs) -> float:
    if len(np.unique(args[0])) < 2:  # one class only: ranking metrics are undefined
        return float("nan")
    try:
        return float(fn(*args, **kwargs))
    except ValueError:  # one class only: the area is undefined
        return float("nan")


def _macro_average_precision(y_true: np.ndarray, proba: np.ndarray) -> float:
    scores = [
        average_precision_score(y_true == c, proba[:, c]) for c in range(proba.shape[1]) if (y_true == c).any()
    ]
    return float(np.mean(scores)) if scores else float("nan")


def bootstrap_ci(
    y_true: np.ndarray,
    proba: np.ndarray,
    threshold: float | None,
    positive_class: int = 1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    keys: Sequence[str] = SCALAR_KEYS,
    offsets: Sequence[float] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over resampled rows, at the fixed threshold.

    Confusion-count metrics, ROC AUC and PR AUC are vectorised over all resamples at once.
    Resamples lacking a class are skipped for the AUCs; non-finite probabilities give no ROC or PR AUC interval."""
    if n_boot <= 0:
        return {}
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n, k = proba.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    y_pred = predict_labels(proba, threshold, positive_class, offsets)
    # (n_boot, K, K) confusion matrices of all resamples in one go.
    cells = (y_true[idx] * k + y_pred[idx]) + (np.arange(n_boot)[:, None] * k * k)
    cms = np.bincount(cells.ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k)
    values = _batched_count_metrics(cms, positive_class)
    onehot = np.eye(k)[y_true]
    if k == 2:
        values["brier"] = np.mean((proba[idx, positive_class] - (y_true[idx] == positive_class)) ** 2, axis=1)
    else:
        values["brier"] = np.mean(np.sum((proba[idx] - onehot[idx]) ** 2, axis=2), axis=1)
    if "roc_auc" in keys:
        values["roc_auc"] = roc_auc_of_resamples(y_true, proba, idx, positive_class)
    if "pr_auc" in keys:
        values["pr_auc"] = pr_auc_of_resamples(y_true, proba, idx, positive_class)
    alpha = (1 - ci) / 2
    out = {}
    for key in keys:
        v = values[key][np.isfinite(values[key])]
        out[key] = (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if len(v) else (math.nan, math.nan)
    return out


def paired_auc_difference(
    y_true: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    positive_class: int = 1,
    n_boot: int = PAIRED_RESAMPLES,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, float | tuple[float, float]]:
    """ROC AUC of B minus that of A on the same rows, with a paired percentile bootstrap interval.

    Both models are scored on the same resampled rows, so what the two share (the hard and easy images of this test
    split) cancels out of the difference; two separate intervals that overlap say much less. ``b_not_better`` is
    the share of resamples where B's ROC AUC is not above A's."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba_a, proba_b = np.asarray(proba_a, dtype=np.float64), np.asarray(proba_b, dtype=np.float64)
    if proba_a.shape != proba_b.shape or proba_a.shape[0] != y_true.shape[0]:
        raise ValueError(f"cannot pair predictions of shapes {proba_a.shape} and {proba_b.shape} "
                         f"for {y_true.shape[0]} labels")
    if n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"a paired bootstrap needs n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")
    if not (np.isfinite(proba_a).all() and np.isfinite(proba_b).all()):
        raise ValueError("non-finite probabilities (a diverged model?): ROC AUC is undefined")
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(n_boot, len(y_true)))
    diffs = (roc_auc_of_resamples(y_true, proba_b, idx, positive_class)
             - roc_auc_of_resamples(y_true, proba_a, idx, positive_class))
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        raise ValueError("no resample holds every class: ROC AUC is undefined on these labels")
    alpha = (1 - ci) / 2
    every_row = np.arange(len(y_true))[None]
    a, b = (float(roc_auc_of_resamples(y_true, p, every_row, positive_class)[0]) for p in (proba_a, proba_b))
    return {"a": a, "b": b, "difference": b - a,
            "ci": (float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))),
            "b_not_better": float(np.mean(diffs <= 0))}


def _batched_count_metrics(cms: np.ndarray, positive_class: int) -> dict[str, np.ndarray]:
    k = cms.shape[1]
    tp = np.diagonal(cms, axis1=1, axis2=2).astype(float)
    fp = cms.sum(axis=1) - tp
    fn = cms.sum(axis=2) - tp
    total = cms.sum(axis=(1, 2)).astype(float)
    tn = total[:, None] - tp - fp - fn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    f1 = _ratio(2 * precision * recall, precision + recall)
    support = tp + fn
    present = support > 0
    balanced = np.sum(np.where(present, recall, 0), axis=1) / np.maximum(present.sum(axis=1), 1)
    t, p, c = support, tp + fp, tp.sum(axis=1)
    den = np.sqrt((total**2 - np.sum(p * p, axis=1)) * (total**2 - np.sum(t * t, axis=1)))
    mcc = np.divide(c * total - np.sum(t * p, axis=1), den, out=np.zeros_like(den), where=den > 0)
    pick = (lambda a: a[:, positive_class]) if k == 2 else (lambda a: a.mean(axis=1))
    return {
        "accuracy": c / total,
        "balanced_accuracy": balanced,
        "precision": pick(precision),
        "recall": pick(recall),
        "specificity": pick(specificity),
        "f1": pick(f1),
        "mcc": mcc,
    }


def metrics_table(results: dict[str, dict], split: str = "test") -> pd.DataFrame:
    """One row per model of the scalar metrics, best test ROC AUC first (then balanced accuracy)."""
    rows = {model: {k: r[split][k] for k in SCALAR_KEYS + ("threshold",)} for model, r in results.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "model"
    return frame.sort_values(["roc_auc", "balanced_accuracy"], ascending=False, na_position="last")
