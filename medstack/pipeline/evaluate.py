"""Evaluate stage: the only reader of the test labels."""

from __future__ import annotations

import numpy as np

from medstack.config import RunConfig
from medstack.pipeline.combine import EnsembleFit
from medstack.pipeline.prepare import PreparedData
from medstack.pipeline.student import judge_student


def evaluate_on_test(prepared: PreparedData, ensembles: EnsembleFit, cfg: RunConfig) -> dict:
    """The only reader of the test labels: test and OOF metrics of all models, with bootstrap CIs on test; each
    model's prediction sets and referral point (fitted on calibration rows) judged on test."""
    from medstack.models.metrics import bootstrap_ci, compute_metrics
    from medstack.models.trust import judge_trust

    y_test = prepared.test_labels.reveal()
    preds = ensembles.predictions
    names = list(prepared.class_names)
    models: dict[str, dict] = {}
    for model_name in preds.test:
        decision = ensembles.decisions[model_name]
        kwargs = dict(threshold=decision.get("threshold"), positive_class=prepared.positive_class,
                      offsets=decision.get("offsets"))
        models[model_name] = {
            "decision": decision,
            "test": compute_metrics(y_test, preds.test[model_name], class_names=names, **kwargs),
            **({"oof": compute_metrics(prepared.y_train, preds.oof[model_name], class_names=names, **kwargs)}
               if model_name in preds.oof else {}),  # the student has none (pipeline.student)
            "test_ci": {
                k: list(v)
                for k, v in bootstrap_ci(
                    y_test, preds.test[model_name], n_boot=cfg.report.bootstrap, ci=cfg.report.ci, seed=cfg.seed, **kwargs
                ).items()
            },
        }
        if model_name in ensembles.conformal:
            models[model_name].update(judge_trust(y_test, preds.test[model_name], decision,
                                                  ensembles.conformal[model_name], ensembles.referral[model_name],
                                                  names))
    paired = _pair_with_recommended(y_test, preds.test, ensembles.recommended.get("model"), prepared.positive_class, cfg)
    for name, pairing in paired.items():
        models[name]["test_vs_recommended"] = pairing
    student = (judge_student(y_test, ensembles, models, prepared.positive_class) if ensembles.student else
               {"trained": False, "why": "distill.enabled is false" if not cfg.distill.enabled
                else "no student among the results scored (a re-scoring of cached folds)"})
    return {
        "dataset": {
            "name": prepared.name,
            "classes": names,
            "counts": prepared.counts,
            "duplicates": {k: v for k, v in prepared.duplicates.items() if k != "summary"},
            "grouping": {k: v for k, v in prepared.grouping.items() if k != "summary"},
        },
        "models": models,
        "recommended": {k: v for k, v in ensembles.recommended.items() if k != "oof_roc_auc"},
        "student": student,
        **({"conformal": conformal_setup(prepared, cfg)} if ensembles.conformal else {}),
    }


def conformal_setup(prepared: PreparedData, cfg: RunConfig) -> dict:
    """How the run's prediction sets were calibrated: kind, rows per class, the slice's share, levels, the rule."""
    split = cfg.conformal.calibration == "split"
    y = prepared.y_cal if split else prepared.y_train
    return {"kind": cfg.conformal.calibration, "calibration_share": cfg.conformal.calibration_share if split else None,
            "calibration_rows": int(len(y)),
            "calibration_counts": dict(zip(prepared.class_names, np.bincount(y, minlength=prepared.num_classes).tolist())),
            "levels": list(cfg.conformal.levels), "referral": cfg.conformal.referral.model_dump()}


def _pair_with_recommended(y_test: np.ndarray, test_probas: dict[str, np.ndarray], recommended: str | None,
                           positive_class: int, cfg: RunConfig) -> dict[str, dict]:
    """{model: its test ROC AUC minus the recommended model's, with a paired bootstrap interval (both scored on the
    same resampled test images)} for every other model. Empty when there is no recommendation or bootstrapping is
    off; a model is left out when its difference is undefined (no resample holds every class, or it predicted
    non-finite probabilities)."""
    from medstack.models.metrics import paired_auc_difference

    if recommended not in test_probas or cfg.report.bootstrap <= 0:
        return {}
    out = {}
    for name, proba in test_probas.items():
        if name == recommended:
            continue
        try:
            pair = paired_auc_difference(y_test, test_probas[recommended], proba, positive_class,
                                         n_boot=cfg.report.bootstrap, ci=cfg.report.ci, seed=cfg.seed)
        except ValueError:
            continue
        out[name] = {"model": recommended, "roc_auc_difference": pair["difference"], "ci": list(pair["ci"]),
                     "share_not_above": pair["b_not_better"]}
    return out
