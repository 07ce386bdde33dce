"""``--recalibrate``: refit one model's temperature, decision and conformal quantiles on part of the new data.

Only when asked: without it nothing is fitted on the external data. With it the labelled rows are split, stratified
by class and seeded, into a fitting part (``fraction`` of each class, default half) and a judged part (the rest);
on the fitting part:

* a temperature T (:func:`medstack.models.calibration.fit_temperature`) on the model's output, read as logits
  ``log p``: the refitted probabilities are ``softmax(log p / T)`` (for a binary model, the log-odds divided by T);
* the decision, by the run's own policy (threshold policy and target, or class offsets) on the refitted
  probabilities (:func:`medstack.models.decision.choose_decision`);
* split conformal quantiles on the refitted probabilities (:func:`medstack.models.conformal.fit_conformal`, kind
  ``split``: the model never learned from these rows, so the exact guarantee holds for new images of this site).

Both are then judged on the judged part only: *before* (the bundle's frozen probabilities, decision and conformal
calibration) and *after* (the refitted ones), on exactly the same images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medstack.evaluation.measures import Settings, judge
from medstack.models.conformal import DEFAULT_LEVELS, ConformalCalibration, fit_conformal

DEFAULT_FRACTION = 0.5


def fitting_part(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(N,) booleans, True for the fitting rows: ``round(fraction * n_k)`` rows of each class k (at least one, and
    one left to judge, for a class of two or more), drawn with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the recalibration fraction must lie strictly between 0 and 1, got {fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(y), dtype=bool)
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        take = min(max(int(round(fraction * len(rows))), 1), max(len(rows) - 1, 1))
        chosen[rng.choice(rows, size=take, replace=False)] = True
    return chosen


def with_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the probabilities a model would give with its output logits divided by T."""
    from medstack.inference.bundle import softmax

    return softmax(np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, None)) / temperature)


def recalibrate(y: np.ndarray, proba: np.ndarray, decision: dict[str, Any], conformal: ConformalCalibration | None,
                settings: Settings, class_names: Sequence[str], *, fraction: float = DEFAULT_FRACTION,
                seed: int | None = None) -> dict[str, Any]:
    """Refit on the fitting part, judge before and after on the rest; plain numbers (see the module docstring).
    ``conformal`` is the bundle's calibration of this model, or None when the bundle has none."""
    from medstack.models.calibration import fit_temperature
    from medstack.models.decision import choose_decision

    y, proba = np.asarray(y, dtype=np.int64), np.asarray(proba, dtype=np.float64)
    seed = settings.seed if seed is None else seed
    fit = fitting_part(y, fraction, seed)
    rest = ~fit
    if len(np.unique(y[fit])) < 2:
        raise ValueError("recalibration needs images of at least two classes in the fitting part")
    temperature = fit_temperature(np.log(np.clip(proba[fit], 1e-12, None)), y[fit])
    refitted = with_temperature(proba, temperature)
    new_decision = choose_decision(y[fit], refitted[fit], threshold_policy=settings.threshold_policy,
                                   positive_class=settings.positive_class,
                                   target_sensitivity=settings.target_sensitivity,
                                   multiclass_policy=settings.multiclass_policy,
                                   critical_recall=settings.critical_recall)
    levels = conformal.levels if conformal is not None else DEFAULT_LEVELS
    new_conformal = fit_conformal(y[fit], refitted[fit], kind="split", levels=levels)
    before = judge(y[rest], proba[rest], decision, settings, class_names)
    after = judge(y[rest], refitted[rest], new_decision, settings, class_names)
    return {
        "fraction": fraction, "seed": seed, "stratified": True,
        "fitted_on": _counts(y[fit], class_names), "judged_on": _counts(y[rest], class_names),
        "fitted_rows": np.flatnonzero(fit).tolist(),
        "temperature": float(temperature), "decision": new_decision, "conformal": new_conformal.to_dict(),
        "before": {**before, "decision": dict(decision), "conformal_sets": _sets(conformal, y[rest], proba[rest])},
        "after": {**after, "decision": new_decision, "conformal_sets": _sets(new_conformal, y[rest], refitted[rest])},
    }


def _counts(y: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts)}


def _sets(calibration: ConformalCalibration | None, y: np.ndarray, proba: np.ndarray) -> list[dict[str, Any]] | None:
    """Per level: per-class coverage with Clopper-Pearson intervals and the set sizes; None without calibration."""
    if calibration is None:
        return None
    from medstack.evaluation.trust import coverage_at_levels

    return coverage_at_levels(calibration, y, proba)
