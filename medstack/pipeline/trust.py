"""Prediction sets and referral for every model of a run: which rows calibrate them, and the rule in plain values.

``conformal.calibration: split`` calibrates on the held-out slice (``PreparedData.cal_idx``), which every model
predicts the way it predicts test (the K-fold average with TTA and temperature, the vote, the stack per fold);
``oof`` on the out-of-fold predictions. Either way every model's decision stays the one chosen on OOF predictions,
and nothing here reads val or test labels. The fitting itself is :func:`medstack.models.trust.fit_trust`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from medstack.config import RunConfig
from medstack.pipeline.prepare import PreparedData


def calibration_rows(prepared: PreparedData, oof: Mapping[str, np.ndarray], cal: Mapping[str, np.ndarray],
                     kind: str) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
    """(labels, {model: probabilities}) of the rows that calibrate the sets: the slice (``cal``, every model's
    predictions of ``cal_idx``), or the OOF rows (``oof``)."""
    if kind == "oof":
        return prepared.y_train, oof
    if not len(prepared.cal_idx):
        raise ValueError("conformal.calibration is 'split' but this run has no calibration slice (prepared with "
                         "conformal.calibration oof?)")
    return prepared.y_cal, cal


def referral_rule(cfg: RunConfig, class_names: tuple[str, ...], positive_class: int) -> dict[str, Any]:
    """``conformal.referral`` as :func:`medstack.models.referral.choose_referral` reads it (target class as an
    index: the named one, else the positive class of a binary task)."""
    rule = cfg.conformal.referral.model_dump()
    if rule["rule"] != "certainty":
        return rule
    name = rule.pop("target_class")
    if name is not None and name not in class_names:
        raise ValueError(f"conformal.referral.target_class {name!r} is not a class of this dataset "
                         f"({list(class_names)})")
    if name is None and rule["target_sensitivity"] is not None and len(class_names) > 2:
        raise ValueError("conformal.referral.target_sensitivity needs conformal.referral.target_class for a "
                         f"multi-class task (one of {list(class_names)})")
    rule["target_class"] = class_names.index(name) if name is not None else positive_class
    return rule


def calibrate_models(prepared: PreparedData, oof: Mapping[str, np.ndarray], cal: Mapping[str, np.ndarray],
                     decisions: Mapping[str, Mapping[str, Any]], cfg: RunConfig
                     ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """({model: ConformalCalibration}, {model: referral point}) for every model with a decision."""
    from medstack.models.trust import fit_trust as fit_one

    kind = cfg.conformal.calibration
    y, probas = calibration_rows(prepared, oof, cal, kind)
    rule = referral_rule(cfg, prepared.class_names, prepared.positive_class)
    conformal, referral = {}, {}
    for name, decision in decisions.items():
        conformal[name], referral[name] = fit_one(y, probas[name], decision, kind=kind,
                                                  levels=cfg.conformal.levels, rule=rule)
    return conformal, referral
