"""Conformal coverage and referral on new labelled data, from the calibration the bundle carries, never refitted.

Lost coverage is the signature of a shifted site: the bundle's sets were calibrated on images like its training
data, and on another site's images a class's share of sets holding it falls below the level. Each class and level
gets its measured coverage with a 95% Clopper-Pearson interval (:func:`medstack.models.conformal.coverage_by_class`)
and the set sizes; a class the bundle refuses at a level (too few calibration rows) is shown as not available.
Referral: the bundle's operating point applied unchanged (:func:`medstack.models.referral.apply_referral`): the
share referred and what the kept decisions score. A bundle without conformal calibration gets the sentence
:data:`NO_CALIBRATION` instead of numbers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from medstack.models.conformal import ConformalCalibration, coverage_by_class, format_level, set_summary

NO_CALIBRATION = "no conformal calibration in this bundle"


def coverage_at_levels(calibration: ConformalCalibration, y: np.ndarray, proba: np.ndarray) -> list[dict[str, Any]]:
    """Per calibrated level: the guarantee's sentence, per-class coverage (Clopper-Pearson) and set sizes."""
    out = []
    for level in calibration.levels:
        sets = calibration.prediction_sets(proba, level)
        out.append({"level": level, "guarantee": calibration.guarantee(level),
                    "classes": coverage_by_class(y, sets, calibration.unavailable(level)),
                    "sets": set_summary(sets)})
    return out


def referral_on(point: Mapping[str, Any], calibration: ConformalCalibration, y: np.ndarray, y_pred: np.ndarray,
                proba: np.ndarray, positive_class: int | None) -> dict[str, Any]:
    """The operating point applied unchanged: share referred, reasons counted, kept-case metrics."""
    from medstack.models.referral import apply_referral, kept_metrics

    referral = apply_referral(point, calibration, proba)
    reasons = Counter(_reason_kind(r) for r in referral.reasons if r)
    return {"rule": point.get("rule"), "level": point.get("level"), "threshold": point.get("threshold"),
            "referred": float(referral.refer.mean()), "n_referred": int(referral.refer.sum()),
            "reasons": dict(reasons), "on_calibration": point.get("on_calibration"),
            "kept": kept_metrics(y, y_pred, ~referral.refer, calibration.n_classes,
                                 positive_class if calibration.n_classes == 2 else None)}


def _reason_kind(reason: str) -> str:
    """``set of 2 classes at 95%`` -> ``set of 2 classes``; ``certainty 0.61 < 0.72`` -> ``certainty below``."""
    if reason.startswith("certainty"):
        return "certainty below the threshold"
    return reason.split(" at ")[0]


def trust_of(meta: Mapping[str, Any], model: str) -> tuple[ConformalCalibration | None, dict[str, Any] | None]:
    """The bundle's conformal calibration of ``model`` and its referral point, read from ``model.json``; (None,
    None) when the bundle has none (a bundle written before conformal calibration existed)."""
    section = meta.get("conformal")
    if not isinstance(section, Mapping):
        return None, None
    entry = (section.get("models") or section).get(model)
    if not isinstance(entry, Mapping) or "calibration" not in entry:
        return None, None
    return ConformalCalibration.from_dict(entry["calibration"]), entry.get("referral")


def trust_report(meta: Mapping[str, Any], model: str, y: np.ndarray, proba: np.ndarray, y_pred: np.ndarray,
                 positive_class: int | None) -> dict[str, Any]:
    """Coverage per class and level and the referral rate of ``model`` on (``y``, ``proba``), or the note that
    the bundle has no calibration."""
    calibration, point = trust_of(meta, model)
    if calibration is None:
        return {"available": False, "note": NO_CALIBRATION}
    out: dict[str, Any] = {"available": True, "kind": calibration.kind, "counts": calibration.counts.tolist(),
                           "levels": coverage_at_levels(calibration, y, proba)}
    out["referral"] = (referral_on(point, calibration, y, y_pred, proba, positive_class) if point else None)
    return out


def level_label(level: float) -> str:
    return format_level(level)


def class_rows(levels: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> list[list[Any]]:
    """Table rows (level, class, n, covered, coverage, interval, available) for the report."""
    rows = []
    for entry in levels:
        for row in entry["classes"]:
            rows.append([format_level(entry["level"]), class_names[row["class"]], row["n"], row["covered"],
                         row["coverage"] if row["available"] else None, (row["ci_low"], row["ci_high"]),
                         row["available"]])
    return rows
