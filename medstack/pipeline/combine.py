"""Combine stage: the OOF matrix, fold-averaged val/test/calibration predictions, soft vote and stacking, every
model's decision, conformal calibration and referral point, the determinism record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from medstack.config import RunConfig, array_sha
from medstack.pipeline.fold_cache import FoldResult
from medstack.pipeline.prepare import PreparedData
from medstack.pipeline.trust import calibrate_models

ENSEMBLES = ("soft_voting", "stacking")


@dataclass
class Predictions:
    """Probabilities of every model on OOF (aligned with ``train_idx``), val, test and calibration-slice rows.

    ``val``/``test``/``cal`` of a base model are the mean of its K fold models; ``*_folds`` keep each fold model's
    own, which is what the stacking meta-model is applied to (it learned from single fold models)."""

    oof: dict[str, np.ndarray] = field(default_factory=dict)
    val: dict[str, np.ndarray] = field(default_factory=dict)
    test: dict[str, np.ndarray] = field(default_factory=dict)
    cal: dict[str, np.ndarray] = field(default_factory=dict)  # aligned with cal_idx; (0, K) without a slice
    val_folds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    test_folds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    cal_folds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    histories: dict[str, dict[int, dict[str, list[float]]]] = field(default_factory=dict)
    fold_info: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    model_paths: dict[str, dict[int, str]] = field(default_factory=dict)


def gather_predictions(prepared: PreparedData, results: list[FoldResult]) -> Predictions:
    """Assemble the OOF matrix (each training row predicted by exactly one model that never saw it) and average
    the K fold models' val/test/calibration predictions per strategy."""
    position = {int(row): i for i, row in enumerate(prepared.train_idx)}
    preds = Predictions()
    for strategy in dict.fromkeys(r.strategy for r in results):
        mine = sorted((r for r in results if r.strategy == strategy), key=lambda r: r.fold)
        folds = [r.fold for r in mine]
        if folds != list(range(prepared.n_folds)):
            raise ValueError(f"{strategy}: expected folds 0..{prepared.n_folds - 1}, got {folds}")
        oof = np.full((len(prepared.train_idx), prepared.num_classes), np.nan)
        for r in mine:
            rows = [position[int(i)] for i in r.oof_index]
            if not np.all(prepared.fold_of[rows] == r.fold):
                raise ValueError(f"{strategy} fold {r.fold}: predicted rows it was trained on")
            if not np.all(np.isnan(oof[rows])):
                raise ValueError(f"{strategy} fold {r.fold}: a training row was predicted twice")
            oof[rows] = r.oof_proba
        if np.isnan(oof).any():
            raise ValueError(f"{strategy}: {int(np.isnan(oof).any(axis=1).sum())} training rows have no OOF prediction")
        preds.oof[strategy] = oof
        for split in ("val", "test", "cal"):
            getattr(preds, f"{split}_folds")[strategy] = [getattr(r, f"{split}_proba") for r in mine]
            getattr(preds, split)[strategy] = np.mean(getattr(preds, f"{split}_folds")[strategy], axis=0)
        preds.histories[strategy] = {r.fold: r.history for r in mine}
        preds.fold_info[strategy] = {r.fold: {**r.info, "cache_key": r.cache_key, "from_cache": r.from_cache} for r in mine}
        preds.model_paths[strategy] = {r.fold: r.model_path for r in mine}
    return preds


@dataclass
class EnsembleFit:
    predictions: Predictions  # the base models' plus soft_voting and stacking
    meta_model: Any  # models.ensemble.StackingMetaModel
    decisions: dict[str, dict[str, Any]]  # per model, chosen on OOF (models.decision)
    threshold_policy: str
    recommended: dict[str, Any] = field(default_factory=dict)  # {"model", "reason"}, chosen on OOF
    conformal: dict[str, Any] = field(default_factory=dict)  # per model, a ConformalCalibration (calibration rows)
    referral: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model, its operating point (same rows)
    student: dict[str, Any] = field(default_factory=dict)  # the one-network model's file and rows (pipeline.student)

    @property
    def thresholds(self) -> dict[str, float | None]:
        return {name: decision.get("threshold") for name, decision in self.decisions.items()}


# One BLAS thread for the stages after training. Their matrices are small (rows x a few dozen columns), and
# OpenBLAS' threads spin while they wait for each other: the meta-model of a 2-strategy, 10-class run on 270 OOF
# rows took 34.7 CPU-s (and as many seconds of wall time) with OpenBLAS' default two threads on this 2-core machine
# under load, and 2.0 CPU-s with one, the same coefficients either way. Process-wide while it runs; every
# training has finished by then. (benchmarks/post_training.py times the stages under the same limit.)
ONE_BLAS_THREAD = {"limits": 1, "user_api": "blas"}


@threadpool_limits.wrap(**ONE_BLAS_THREAD)
def fit_ensembles(prepared: PreparedData, preds: Predictions, cfg: RunConfig) -> EnsembleFit:
    """Soft vote and stacking from OOF only; every model's decision (threshold, or class offsets) chosen on its OOF
    predictions; the model to recommend chosen on OOF ROC AUC.

    The stacking model's OOF predictions are the meta-model's own cross-validated predictions, so its decision and
    OOF metrics are not in-sample. It learned from single fold models' probabilities, so on val, test and the
    calibration slice it is applied to each fold's models separately and its K outputs averaged, rather than to the
    (smoother) K-model means. Then every model's prediction sets and referral point are fitted on the calibration
    rows (:func:`medstack.pipeline.trust.calibrate_models`). ``preds`` is left as it was."""
    from medstack.models.ensemble import StackingMetaModel, soft_vote

    base = [s for s in cfg.strategies if s in preds.oof]
    base_oof = {s: preds.oof[s] for s in base}
    meta = StackingMetaModel(cfg.ensemble.meta_Cs, cfg.ensemble.inner_folds, cfg.seed,
                             features=cfg.ensemble.meta_features).fit(base_oof, prepared.y_train)
    out = replace(preds, oof=dict(preds.oof), val=dict(preds.val), test=dict(preds.test), cal=dict(preds.cal))
    for split in ("oof", "val", "test", "cal"):
        getattr(out, split)["soft_voting"] = soft_vote({s: getattr(preds, split)[s] for s in base})
    out.oof["stacking"] = meta.cross_val_proba(base_oof, prepared.y_train)
    for split in ("val", "test", "cal"):
        folds = {s: getattr(preds, f"{split}_folds")[s] for s in base}
        empty = not len(next(iter(folds.values()))[0])  # no calibration slice (conformal.calibration oof)
        getattr(out, split)["stacking"] = (np.zeros((0, prepared.num_classes)) if empty
                                           else meta.predict_proba_per_fold(folds))
    decisions = {name: decide(prepared.y_train, proba, prepared, cfg) for name, proba in out.oof.items()}
    recommended = recommend_model(prepared.y_train, out.oof, base, prepared.positive_class)
    conformal, referral = calibrate_models(prepared, out.oof, out.cal, decisions, cfg)
    return EnsembleFit(out, meta, decisions, cfg.ensemble.threshold_policy, recommended, conformal, referral)


def decide(y: np.ndarray, proba: np.ndarray, prepared: PreparedData, cfg: RunConfig) -> dict[str, Any]:
    """One model's decision (threshold, or class offsets) chosen on the rows ``y``/``proba`` by the run's policy."""
    from medstack.models.decision import choose_decision

    return choose_decision(y, proba, threshold_policy=cfg.ensemble.threshold_policy,
                           positive_class=prepared.positive_class, target_sensitivity=cfg.ensemble.target_sensitivity,
                           multiclass_policy=cfg.ensemble.multiclass_policy,
                           critical_recall=_critical_classes(cfg, prepared.class_names))


def _critical_classes(cfg: RunConfig, class_names: tuple[str, ...]) -> dict[int, float]:
    unknown = sorted(set(cfg.ensemble.critical_classes) - set(class_names))
    if unknown:
        raise ValueError(f"ensemble.critical_classes names {unknown}, which are not classes of this dataset "
                         f"({list(class_names)})")
    return {class_names.index(name): target for name, target in cfg.ensemble.critical_classes.items()}


def recommend_model(y: np.ndarray, oof: dict[str, np.ndarray], members: list[str], positive_class: int) -> dict[str, Any]:
    """The model to trust, judged on OOF ROC AUC only (test never chooses): the better ensemble when it beats the
    best single member, else that member, and the reason in words."""
    from medstack.models.metrics import compute_metrics

    auc = {name: compute_metrics(y, proba, None, positive_class)["roc_auc"] for name, proba in oof.items()}
    score = {name: (-np.inf if np.isnan(value) else value) for name, value in auc.items()}
    member = max(members, key=lambda n: score[n])
    ensembles = [name for name in ENSEMBLES if name in score]
    ensemble = max(ensembles, key=lambda n: score[n]) if ensembles else None
    if ensemble is not None and score[ensemble] > score[member]:
        reason = (f"{ensemble} has the highest out-of-fold ROC AUC ({auc[ensemble]:.4f}), above the best single "
                  f"strategy {member} ({auc[member]:.4f})")
        return {"model": ensemble, "reason": reason, "oof_roc_auc": auc}
    reason = (f"neither ensemble beats the best single strategy on out-of-fold ROC AUC: {member} "
              f"{auc[member]:.4f}" + "".join(f", {n} {auc[n]:.4f}" for n in ensembles)
              + f"; recommended: {member} alone")
    return {"model": member, "reason": reason, "oof_roc_auc": auc}


def determinism_record(cfg: RunConfig, prepared: PreparedData, ensembles: EnsembleFit) -> dict[str, Any]:
    """sha256 of what one config and seed must reproduce, for the manifest.

    ``splits`` (train/val/test rows), ``folds`` (fold of each train row) and ``train_inputs`` (every fold's
    training arrays as its model saw them, SMOTE samples included) depend on data, config and seeds only.
    ``meta_inputs`` (the OOF matrix the stacking model learns from, with its labels) also depends on training:
    bitwise reproducible on CPU, but GPU kernels and other CPUs/library versions may round differently, so only
    runs that share the fold cache are guaranteed the same value.
    """
    preds = ensembles.predictions
    base = list(ensembles.meta_model.model_names_)
    per_fold = [preds.fold_info[s][k].get("train_inputs_sha") for s in base for k in sorted(preds.fold_info[s])]
    return {
        "seed": cfg.seed,
        "split_seed": cfg.split.seed,
        "splits": array_sha(prepared.train_idx, prepared.val_idx, prepared.test_idx),
        "folds": array_sha(prepared.train_idx, prepared.fold_of),
        "train_inputs": None if None in per_fold else hashlib.sha256(",".join(per_fold).encode()).hexdigest(),
        "meta_inputs": array_sha(ensembles.meta_model.features_of({s: preds.oof[s] for s in base}), prepared.y_train),
    }
