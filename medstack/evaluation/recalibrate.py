"""``--recalibrate``: refit one model's temperature, decision and conformal quantiles on part of the new data.

Only when asked: without it nothing is fitted on the external data. With it the labelled rows are split, stratified
by class and seeded, into a fitting part (``fraction`` of each class, default half) and a judged part (the rest);
on the fitting part:

* a temperature T (:func:`medstack.models.calibration.fit_temperature`) on the model's output, read as logits
  ``log p``: the refitted probabilities are ``softmax(log p / T)`` (for a binary model, the log-odds divided by T);
* the decision, by the run's own policy (threshold policy and target, or class offsets) on the refitted
  probabilities (:func:`medstack.models.decision.choose_decision`);
* split conformal quantiles on the refitted probabilities, and the referral point by the bundle's own rule
  (:func:`medstack.models.trust.fit_trust`, kind ``split``: the model never learned from these rows, so the exact
  guarantee holds for new images of this site; a bundle without a rule gets medstack's default referral rule).

Both are then judged on the judged part only (:func:`medstack.models.trust.judge_trust` for the sets): *before*
(the bundle's frozen probabilities, decision, calibration and referral point) and *after* (the refitted ones), on
exactly the same images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medstack.evaluation.measures import Settings, judge
from medstack.models.conformal import DEFAULT_LEVELS, ConformalCalibration

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
                point: dict[str, Any] | None, settings: Settings, class_names: Sequence[str], *,
                fraction: float = DEFAULT_FRACTION, seed: int | None = None) -> dict[str, Any]:
    """Refit on the fitting part, judge before and after on the rest; plain numbers (see the module docstring).
    ``conformal`` and ``point`` are the bundle's calibration and referral point of this model, or None when the
    bundle has none."""
    from medstack.models.calibration import fit_temperature
    from medstack.models.decision import choose_decision
    from medstack.models.trust import fit_trust, judge_trust

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
    rule = referral_rule(point)
    new_conformal, new_point = fit_trust(y[fit], refitted[fit], new_decision, kind="split", levels=levels, rule=rule)
    before = judge(y[rest], proba[rest], decision, settings, class_names)
    after = judge(y[rest], refitted[rest], new_decision, settings, class_names)
    before["trust"] = (judge_trust(y[rest], proba[rest], decision, conformal, point, class_names)
                       if conformal is not None and point is not None else None)
    after["trust"] = judge_trust(y[rest], refitted[rest], new_decision, new_conformal, new_point, class_names)
    return {
        "fraction": fraction, "seed": seed, "stratified": True,
        "fitted_on": _counts(y[fit], class_names), "judged_on": _counts(y[rest], class_names),
        "fitted_rows": np.flatnonzero(fit).tolist(),
        "temperature": float(temperature), "decision": new_decision, "conformal": new_conformal.to_dict(),
        "referral_rule": rule, "referral": new_point,
        "before": {**before, "decision": dict(decision)},
        "after": {**after, "decision": new_decision},
    }


def referral_rule(point: dict[str, Any] | None) -> dict[str, Any]:
    """The rule behind a bundle's referral point (its plain config values, without what was fitted), or medstack's
    default rule (``conformal.referral``'s default) for a bundle without one."""
    if point is None:
        from medstack.config_sections import ConformalConfig

        return ConformalConfig().referral.model_dump()
    return {k: point[k] for k in ("rule", "level", "max_referral", "target_sensitivity", "target_class")
            if k in point}


def _counts(y: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts)}
