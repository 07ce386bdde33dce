"""Referral (selective prediction): which images a model should hand to a person, chosen on calibration data only.

The certainty score, the same for every model, is the conformal confidence (Vovk, Gammerman and Shafer):

    certainty(x) = 1 - (second-largest class p-value of x)

with the class-conditional p-values of :mod:`medstack.models.conformal`. It is high when only one class remains
plausible. Why this and not the largest probability: the p-values are each model's own ranks against its own
calibration rows, class by class, so a certainty of 0.9 means the same for a member, the soft vote or the stack,
and a rare class is judged against its own calibration images instead of the majority's; the largest probability
of an imbalanced model is not comparable across models and mostly measures the distance from 0.5, not from the
model's decision threshold. It ties in with the sets: certainty >= L exactly when the set at level L holds at most
one class. Caveat: an image unlike every class (all p-values small, an empty set) also scores a high certainty, so
both rules below refer empty sets at their level as well.

The risk-coverage curve (:func:`risk_coverage`) refers the least certain images first, 0% to 50%, and measures the
decisions kept: sensitivity, specificity and balanced accuracy for a binary problem (for its positive class), recall
per class and balanced accuracy for K > 2. Referral is by threshold, ``certainty < t``, so images of equal certainty
go together and the referred share can fall short of the target fraction; each row reports the share it referred.

An operating point (:func:`choose_referral`) is chosen on calibration rows from a rule in plain config values and
applied unchanged to test and to new images (:func:`apply_referral`):

* ``{"rule": "set", "level": 0.95}``: refer an image when its set at that level is not a single class (two or
  more classes: ambiguous; empty: atypical). Nothing is fitted; the calibration rows only report the share referred.
* ``{"rule": "certainty", "level": 0.95, "max_referral": 0.2, "target_sensitivity": 0.95, "target_class": 1}``:
  refer ``certainty < t`` and empty sets at ``level``; ``t`` is the smallest threshold whose kept-case recall of
  ``target_class`` (the sensitivity, for a binary problem) reaches the target while at most ``max_referral`` of
  the calibration rows are referred. When no threshold within the budget reaches it, the point takes the threshold
  within the budget with the highest kept recall (least referral among equals) and records ``reached: false``
  with the recall it gets: the budget is never exceeded to chase the target. Without ``target_sensitivity`` the
  point simply refers the least certain ``max_referral``.

A caveat on the in-sample step: the certainty of a calibration row is computed with p-values that include the row's
own score, which lifts its true class's p-value by at most 1 / (n_y + 1); negligible with hundreds of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from medstack.models.conformal import ConformalCalibration, format_level

CERTAINTY_NAME = "conformal confidence: 1 - second-largest class p-value"
DEFAULT_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(11))  # 0%, 5%, ..., 50% referred
RULES = ("set", "certainty")


def certainty(p_values: np.ndarray) -> np.ndarray:
    """(N,) conformal confidence: 1 minus the second-largest of each row's class p-values."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"certainty needs (N, K) p-values with K >= 2, got shape {p.shape}")
    return 1.0 - np.sort(p, axis=1)[:, -2]


def kept_metrics(y_true: np.ndarray, y_pred: np.ndarray, kept: np.ndarray, n_classes: int,
                 positive_class: int | None = None) -> dict[str, Any]:
    """Recall per class and balanced accuracy of the kept images; for a binary problem also the sensitivity and
    specificity of ``positive_class``. A class with no kept image has recall None (left out of the average)."""
    y, pred = np.asarray(y_true)[kept], np.asarray(y_pred)[kept]
    recall = [float(np.mean(pred[y == k] == k)) if np.any(y == k) else None for k in range(n_classes)]
    known = [r for r in recall if r is not None]
    out: dict[str, Any] = {"kept": int(kept.sum()), "recall": recall,
                           "balanced_accuracy": float(np.mean(known)) if known else None}
    if n_classes == 2 and positive_class is not None:
        out["sensitivity"], out["specificity"] = recall[positive_class], recall[1 - positive_class]
    return out


def threshold_for(cert: np.ndarray, fraction: float) -> float:
    """The largest threshold t (an observed certainty, or +inf) with ``mean(cert < t) <= fraction``."""
    ordered = np.sort(np.asarray(cert, dtype=np.float64))
    candidates = np.append(np.unique(ordered), np.inf)
    referred = np.searchsorted(ordered, candidates, side="left") / len(ordered)
    return float(candidates[np.flatnonzero(referred <= fraction + 1e-12)[-1]])


def risk_coverage(y_true: np.ndarray, y_pred: np.ndarray, cert: np.ndarray, *, n_classes: int,
                  positive_class: int | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS
                  ) -> list[dict[str, Any]]:
    """One row per target referral fraction: the threshold, the share actually referred (<= the target) and the
    kept-case metrics (:func:`kept_metrics`). ``y_pred`` is the model's decision (its threshold or offsets)."""
    cert = np.asarray(cert, dtype=np.float64)
    if not len(cert) == len(y_true) == len(y_pred) or len(cert) == 0:
        raise ValueError("risk_coverage needs as many labels, decisions and certainties, and at least one image")
    rows = []
    for f in fractions:
        t = threshold_for(cert, f)
        kept = cert >= t
        rows.append({"target_referral": float(f), "threshold": t, "referred": float(1 - kept.mean()),
                     **kept_metrics(y_true, y_pred, kept, n_classes, positive_class)})
    return rows


def choose_referral(rule: Mapping[str, Any], calibration: ConformalCalibration, y_true: np.ndarray,
                    y_pred: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """The operating point of ``rule`` (see the module docstring) fitted on calibration rows (``y_true``, the
    model's decisions ``y_pred`` and ``proba``); plain numbers, applied unchanged by :func:`apply_referral`."""
    kind, level = rule.get("rule"), float(rule.get("level", max(calibration.levels)))
    if kind not in RULES:
        raise ValueError(f"unknown referral rule {kind!r}; choose one of {RULES}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    empty = ~calibration.prediction_sets(proba, level).any(axis=1)
    point: dict[str, Any] = {"rule": kind, "level": level, "certainty": CERTAINTY_NAME}
    if kind == "certainty":
        point.update(_budget_threshold(rule, certainty(calibration.p_values(proba)), empty, y_true, y_pred))
    refer = apply_referral(point, calibration, proba).refer
    target = point.get("target_class")
    point["on_calibration"] = {"n": int(len(y_true)), "referred": float(refer.mean()),
                               **kept_metrics(y_true, y_pred, ~refer, calibration.n_classes,
                                              target if calibration.n_classes == 2 else None)}
    return point


def _budget_threshold(rule: Mapping[str, Any], cert: np.ndarray, empty: np.ndarray, y_true: np.ndarray,
                      y_pred: np.ndarray) -> dict[str, Any]:
    """Threshold search over every observed certainty: running sums over the rows sorted by certainty, so a
    calibration set of any size costs one sort (no thresholds x rows matrix)."""
    budget = float(rule["max_referral"])
    if not 0.0 <= budget < 1.0:
        raise ValueError(f"referral max_referral must lie in [0, 1), got {budget}")
    target, cls = rule.get("target_sensitivity"), int(rule.get("target_class", 1))
    order = np.argsort(cert, kind="stable")
    ordered = cert[order]
    candidates = np.append(np.unique(ordered), np.inf)
    below = np.searchsorted(ordered, candidates, side="left")  # rows with cert < t, per candidate t

    def referred_among(mask: np.ndarray) -> np.ndarray:
        """Per candidate, how many ``mask`` rows a threshold refers (certainty below it, or an empty set)."""
        running = np.concatenate([[0], np.cumsum((mask & ~empty)[order])])
        return (mask & empty).sum() + running[below]

    every = np.ones(len(cert), bool)
    within = referred_among(every) <= (budget + 1e-12) * len(cert)
    out: dict[str, Any] = {"max_referral": budget, "target_class": cls, "target_sensitivity": target}
    if not within.any():  # the empty sets alone exceed the budget
        return {**out, "threshold": 0.0, "reached": False}
    if target is None:
        return {**out, "threshold": float(candidates[np.flatnonzero(within)[-1]]), "reached": None}
    of_class = y_true == cls
    if not of_class.any():
        raise ValueError(f"no calibration row of target class {cls}: its kept recall cannot be chosen for")
    hit = of_class & (y_pred == cls)
    kept = of_class.sum() - referred_among(of_class)
    recall = np.where(kept > 0, (hit.sum() - referred_among(hit)) / np.maximum(kept, 1), -1.0)
    good = np.flatnonzero(within & (recall >= float(target)))
    if len(good):
        return {**out, "threshold": float(candidates[good[0]]), "reached": True}
    feasible = np.flatnonzero(within)
    best = feasible[np.argmax(recall[feasible])]  # argmax keeps the first (least referral) of equals
    return {**out, "threshold": float(candidates[best]), "reached": False}


@dataclass(frozen=True)
class Referral:
    """Per image: refer or not, why (``""`` when kept), and its certainty."""

    refer: np.ndarray
    reasons: list[str]
    certainty: np.ndarray


def apply_referral(point: Mapping[str, Any], calibration: ConformalCalibration, proba: np.ndarray) -> Referral:
    """Per image ``refer`` and a reason (``set of 2 classes at 95%``, ``empty set at 95%``, ``certainty 0.61 <
    0.72``) under an operating point from :func:`choose_referral`, with no refitting."""
    level = float(point["level"])
    size = calibration.prediction_sets(proba, level).sum(axis=1)
    cert = certainty(calibration.p_values(proba))
    at = format_level(level)
    if point["rule"] == "set":
        refer = size != 1
        reasons = ["" if n == 1 else f"empty set at {at}" if n == 0 else f"set of {n} classes at {at}" for n in size]
    elif point["rule"] == "certainty":
        t = float(point["threshold"])
        refer = (size == 0) | (cert < t)
        reasons = [f"empty set at {at}" if n == 0 else _below(c, t) if c < t else "" for n, c in zip(size, cert)]
    else:
        raise ValueError(f"unknown referral rule {point['rule']!r}; choose one of {RULES}")
    return Referral(refer=refer, reasons=reasons, certainty=cert)


def _below(value: float, threshold: float) -> str:
    """``certainty 0.61 < 0.72``, with more decimals when two are not enough to tell them apart."""
    digits = next((d for d in range(2, 7) if f"{value:.{d}f}" != f"{threshold:.{d}f}"), 7)
    return f"certainty {value:.{digits}f} < {threshold:.{digits}f}"
