"""The one-network model of a run (``distill``): trained, calibrated and judged beside the ensemble.

``student`` is the run's own network (model, augmentation and training recipe; its test-time views are
``distill.tta``, one pass an image by default) trained once on every row of the training split, on the labels
with balanced class weights (the ``class_weight`` strategy), early-stopped and temperature-scaled on val like a
fold model. It has no out-of-fold predictions, so its decision (threshold or class offsets, by the run's policy),
prediction sets and referral point come from the calibration slice, which it never trained on. It serves at one
network's cost, where the ensemble costs strategies x folds networks an image.

Why the labels and not the ensemble's probabilities: at 546 PneumoniaMNIST images the same network learning the
recommended model's out-of-fold probabilities ranked test images worse than its teacher, and on the labels better
(docs/benchmarks.md, "A distilled student against the same network on labels").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np

from medstack.config import STRATEGY_PARAMS, RunConfig, stable_hash
from medstack.pipeline.combine import EnsembleFit, decide
from medstack.pipeline.fold_cache import FoldCache, FoldResult
from medstack.pipeline.prepare import PreparedData
from medstack.pipeline.train import train_network
from medstack.pipeline.trust import calibrate_models
from medstack.run_folder import STUDENT

LEARNS = "class_weight"  # the strategy it trains with: the labels, balanced class weights
ECE_MARGIN = 0.01  # "calibrated no worse than the best member": its ECE at most this above the best member's
AUC_MARGIN = 0.01  # "ranks as well": the paired interval of (student - recommended) test ROC AUC above -this


def split_student(results: list[FoldResult]) -> tuple[list[FoldResult], FoldResult | None]:
    """(the fold models' results, the student's or None) from the fan-out's results."""
    members = [r for r in results if r.strategy != STUDENT]
    student = [r for r in results if r.strategy == STUDENT]
    return members, (student[0] if student else None)


def student_config(cfg: RunConfig) -> RunConfig:
    """The run's config as the student trains with it: the run's own, with its test-time views ``distill.tta``."""
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"tta": cfg.distill.tta})})


def student_cache_key(prepared: PreparedData, cfg: RunConfig, version: str) -> str:
    """Everything the student's training depends on (its fold-cache entry)."""
    training = student_config(cfg).training
    return stable_hash(prepared.fingerprint, STUDENT, LEARNS, cfg.model.model_dump(mode="json"),
                       cfg.augmentation.model_dump(mode="json"), training.model_dump(mode="json"),
                       cfg.data.image_size, cfg.seed, version)


def train_student(prepared: PreparedData, cfg: RunConfig, cache: FoldCache, version: str,
                  on_epoch: Callable[[int, int, dict[str, float]], None] | None = None) -> FoldResult:
    """Train the student on the whole training split (or load it from the fold cache) and predict val, test and
    the calibration slice. Its result has no out-of-fold rows."""
    return train_network(prepared, student_config(cfg), cache, student_cache_key(prepared, cfg, version), STUDENT, 0,
                         LEARNS, STRATEGY_PARAMS[LEARNS](), prepared.whole_training_data, on_epoch)


def add_student(prepared: PreparedData, ensembles: EnsembleFit, student: FoldResult, cfg: RunConfig) -> EnsembleFit:
    """The ensembles with the student added as one more model: its val, test and calibration-slice predictions,
    its decision chosen on the calibration slice, and its prediction sets and referral point fitted there."""
    if not len(prepared.cal_idx):
        raise ValueError("the student needs the calibration slice (conformal.calibration: split)")
    preds = ensembles.predictions
    out = replace(preds, val={**preds.val, STUDENT: student.val_proba},
                  test={**preds.test, STUDENT: student.test_proba}, cal={**preds.cal, STUDENT: student.cal_proba},
                  histories={**preds.histories, STUDENT: {0: student.history}},
                  fold_info={**preds.fold_info, STUDENT: {0: {**student.info, "cache_key": student.cache_key,
                                                              "from_cache": student.from_cache}}})
    decision = decide(prepared.y_cal, student.cal_proba, prepared, cfg)
    conformal, referral = calibrate_models(prepared, {}, {STUDENT: student.cal_proba}, {STUDENT: decision}, cfg)
    return replace(ensembles, predictions=out, decisions={**ensembles.decisions, STUDENT: decision},
                   conformal={**ensembles.conformal, **conformal}, referral={**ensembles.referral, **referral},
                   student={"model_path": student.model_path, "cache_key": student.cache_key,
                            "from_cache": student.from_cache, "trained_rows": int(student.info.get("n_train") or 0),
                            "calibration_rows": int(len(prepared.cal_idx))})


def judge_student(y_test: np.ndarray, ensembles: EnsembleFit, models: dict[str, dict], positive_class: int
                  ) -> dict[str, Any]:
    """metrics.json's ``student``: the model it would replace (the recommended one), how often their labels agree
    on test, its calibration error beside the best member's, its cost in network passes an image, and whether it
    can stand in for the recommended model on this data: the paired interval of its test ROC AUC minus the
    recommended model's lies above -AUC_MARGIN and its ECE is at most ECE_MARGIN above the best member's."""
    from medstack.models.decision import apply_decision
    from medstack.models.reliability import expected_calibration_error

    preds, teacher = ensembles.predictions, ensembles.recommended.get("model")
    members = list(ensembles.meta_model.model_names_)
    ece = {name: round(float(expected_calibration_error(y_test, preds.test[name], positive_class)), 4)
           for name in [STUDENT, *members]}
    best_member = min(members, key=lambda n: ece[n])
    mine = apply_decision(preds.test[STUDENT], ensembles.decisions[STUDENT])
    agreement = (float(np.mean(mine == apply_decision(preds.test[teacher], ensembles.decisions[teacher])))
                 if teacher in preds.test else None)
    views = {name: [int(info.get("tta_views") or 1) for info in preds.fold_info[name].values()]
             for name in [STUDENT, *members]}
    paired = models[STUDENT].get("test_vs_recommended")
    ranks = None if paired is None else paired["ci"][0] > -AUC_MARGIN
    calibrated = ece[STUDENT] <= ece[best_member] + ECE_MARGIN
    return {
        "trained": True, "learned": "labels (balanced class weights)", "compared_with": teacher,
        "trained_rows": ensembles.student["trained_rows"], "decision_rows": "calibration slice",
        "calibration_rows": ensembles.student["calibration_rows"],
        "agreement": None if agreement is None else round(agreement, 4),
        "ece": ece[STUDENT], "best_member_ece": {"model": best_member, "ece": ece[best_member]},
        "passes_per_image": {"student": sum(views[STUDENT]), "ensemble": sum(sum(v) for n, v in views.items()
                                                                             if n != STUDENT)},
        "can_replace": None if ranks is None else bool(ranks and calibrated),
        "criteria": {"roc_auc_margin": AUC_MARGIN, "ece_margin": ECE_MARGIN},
    }
