"""Prediction sets and referral for one model, fitted on calibration rows and judged on labelled rows.

The two jobs every caller shares, over precomputed probabilities and plain numbers only:

* :func:`fit_trust`: the model's :class:`~medstack.models.conformal.ConformalCalibration` and its referral
  operating point, both from calibration rows, with the model's frozen decision (its OOF-chosen threshold or
  offsets) as the label a kept case gets;
* :func:`judge_trust`: what they do on labelled rows the calibration never saw (the run's test split, another
  site's images): per class and level the coverage with its Clopper-Pearson interval, the mean set size and the
  shares of single-class and empty sets, the risk-coverage rows, and the referral point applied unchanged.

Everything returned is JSON-ready (plain numbers, class names, ``None`` for an undefined number).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from medstack.models.conformal import (
    SCORE_NAME, ConformalCalibration, coverage_by_class, fit_conformal, format_level, min_count, set_summary,
)
from medstack.models.decision import apply_decision
from medstack.models.referral import (
    CERTAINTY_NAME, apply_referral, certainty, choose_referral, kept_metrics, risk_coverage,
)


def fit_trust(y: np.ndarray, proba: np.ndarray, decision: Mapping[str, Any], *, kind: str, levels: Sequence[float],
              rule: Mapping[str, Any]) -> tuple[ConformalCalibration, dict[str, Any]]:
    """(calibration, referral point) of one model from its calibration rows (``y``, ``proba``): ``kind`` says what
    those rows are (``split``: a slice the model never learned from; ``oof``: out-of-fold predictions). ``rule`` is
    the referral rule in plain values (``{"rule": "set", "level": 0.9}``, or the certainty rule with
    ``max_referral``, ``target_sensitivity`` and ``target_class`` as a class index)."""
    calibration = fit_conformal(np.asarray(y, dtype=np.int64), proba, kind=kind, levels=levels)
    point = choose_referral(dict(rule), calibration, y, apply_decision(proba, decision), proba)
    return calibration, _plain(point)


def judge_trust(y: np.ndarray, proba: np.ndarray, decision: Mapping[str, Any], calibration: ConformalCalibration,
                point: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Sets and referral of one model on labelled rows: ``{"conformal": ..., "referral": ...}`` (module docstring).
    The binary kept-case sensitivity and specificity are for the decision's positive class."""
    y = np.asarray(y, dtype=np.int64)
    names = list(class_names)
    levels = []
    for level in calibration.levels:
        refused = calibration.unavailable(level)
        sets = calibration.prediction_sets(proba, level)
        rows = coverage_by_class(y, sets, refused)
        for row in rows:
            row["class"] = names[row["class"]]
        levels.append({"level": level, "min_count": min_count(level), "refused": [names[k] for k in refused],
                       "guarantee": guarantee_text(calibration, level, names), "coverage": rows,
                       **set_summary(sets)})
    conformal = {"kind": calibration.kind, "score": SCORE_NAME, "n": int(len(y)),
                 "calibration_counts": dict(zip(names, calibration.counts.tolist())), "levels": levels}
    y_pred = apply_decision(proba, decision)
    positive = int(decision.get("positive_class", 1)) if len(names) == 2 else None
    cert = certainty(calibration.p_values(proba))
    applied = apply_referral(point, calibration, proba)
    referral = {"point": dict(point), "certainty": CERTAINTY_NAME,
                "test": {"n": int(len(y)), "referred": float(applied.refer.mean()),
                         **kept_metrics(y, y_pred, ~applied.refer, len(names), positive)},
                "risk_coverage": risk_coverage(y, y_pred, cert, n_classes=len(names), positive_class=positive)}
    return _plain({"conformal": conformal, "referral": referral})


def guarantee_text(calibration: ConformalCalibration, level: float, class_names: Sequence[str]) -> str:
    """What holds at ``level`` in one sentence (:meth:`ConformalCalibration.guarantee`), refused classes by name."""
    refused = [class_names[k] for k in calibration.unavailable(level)]
    text = calibration.guarantee(level).split("; classes ")[0]
    if refused:
        text += (f"; refused for {', '.join(refused)} (fewer than {min_count(level)} calibration rows): always in "
                 f"the set, no coverage promised")
    return text


def describe_rule(point: Mapping[str, Any], class_names: Sequence[str], with_threshold: bool = True) -> str:
    """The referral rule in words: ``refer when the 90% set is not a single class`` or the certainty threshold
    (``with_threshold`` False: "a threshold", for a sentence about several models, each with its own)."""
    at = format_level(float(point["level"]))
    if point["rule"] == "set":
        return f"refer when the {at} set is not a single class (two or more classes, or empty)"
    below = f"{float(point['threshold']):.4g}" if with_threshold else "a threshold chosen per model"
    text = f"refer when certainty < {below} or the {at} set is empty"
    target = point.get("target_sensitivity")
    if target is not None:
        cls = class_names[int(point["target_class"])]
        reached = ("" if not with_threshold else ": reached" if point.get("reached") else
                   ": not reached, best recall within the budget")
        text += (f" (at most {point['max_referral']:.0%} referred on the calibration rows, the least referral that "
                 f"keeps the recall of {cls} >= {target:g}{reached})")
    else:
        text += f" (the least certain {point['max_referral']:.0%} of the calibration rows)"
    return text


def _plain(value: Any) -> Any:
    """JSON-ready: NumPy scalars as Python numbers, non-finite floats as None, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
