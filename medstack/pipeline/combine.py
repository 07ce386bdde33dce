"""Combine stage: the OOF matrix, fold-averaged val/test predictions, soft vote and stacking, the determinism record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medstack.config import RunConfig, array_sha
from medstack.pipeline.prepare import PreparedData
from medstack.storage import FoldResult

ENSEMBLES = ("soft_voting", "stacking")


@dataclass
class Predictions:
    """Probabilities of every model on OOF (aligned with ``train_idx``), val and test rows."""

    oof: dict[str, np.ndarray] = field(default_factory=dict)
    val: dict[str, np.ndarray] = field(default_factory=dict)
    test: dict[str, np.ndarray] = field(default_factory=dict)
    histories: dict[str, dict[int, dict[str, list[float]]]] = field(default_factory=dict)
    fold_info: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    model_paths: dict[str, dict[int, str]] = field(default_factory=dict)


def gather_predictions(prepared: PreparedData, results: list[FoldResult]) -> Predictions:
    """Assemble the OOF matrix (each training row predicted by exactly one model that never saw it) and average
    the K fold models' val/test predictions per strategy."""
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
        preds.val[strategy] = np.mean([r.val_proba for r in mine], axis=0)
        preds.test[strategy] = np.mean([r.test_proba for r in mine], axis=0)
        preds.histories[strategy] = {r.fold: r.history for r in mine}
        preds.fold_info[strategy] = {r.fold: {**r.info, "cache_key": r.cache_key, "from_cache": r.from_cache} for r in mine}
        preds.model_paths[strategy] = {r.fold: r.model_path for r in mine}
    return preds


@dataclass
class EnsembleFit:
    predictions: Predictions  # the base models' plus soft_voting and stacking
    meta_model: Any  # models.ensemble.StackingMetaModel
    thresholds: dict[str, float | None]
    threshold_policy: str


def fit_ensembles(prepared: PreparedData, preds: Predictions, cfg: RunConfig) -> EnsembleFit:
    """Soft vote and stacking from OOF only; every model's decision threshold chosen on its OOF predictions.

    The stacking model's OOF predictions are the meta-model's own cross-validated predictions, so its threshold
    and OOF metrics are not in-sample. ``preds`` is left as it was."""
    from medstack.models.ensemble import StackingMetaModel, soft_vote
    from medstack.models.metrics import choose_threshold

    base = [s for s in cfg.strategies if s in preds.oof]
    base_oof = {s: preds.oof[s] for s in base}
    meta = StackingMetaModel(cfg.ensemble.meta_Cs, cfg.ensemble.inner_folds, cfg.seed).fit(base_oof, prepared.y_train)
    out = replace(preds, oof=dict(preds.oof), val=dict(preds.val), test=dict(preds.test))
    for split in ("oof", "val", "test"):
        getattr(out, split)["soft_voting"] = soft_vote({s: getattr(preds, split)[s] for s in base})
    out.oof["stacking"] = meta.cross_val_proba(base_oof, prepared.y_train)
    out.val["stacking"] = meta.predict_proba({s: preds.val[s] for s in base})
    out.test["stacking"] = meta.predict_proba({s: preds.test[s] for s in base})
    thresholds = {
        name: choose_threshold(
            prepared.y_train,
            proba,
            cfg.ensemble.threshold_policy,
            positive_class=prepared.positive_class,
            target_sensitivity=cfg.ensemble.target_sensitivity,
        )
        for name, proba in out.oof.items()
    }
    return EnsembleFit(out, meta, thresholds, cfg.ensemble.threshold_policy)


def determinism_record(cfg: RunConfig, prepared: PreparedData, ensembles: EnsembleFit) -> dict[str, Any]:
    """sha256 of what one config and seed must reproduce, for the manifest.

    ``splits`` (train/val/test rows), ``folds`` (fold of each train row) and ``train_inputs`` (every fold's
    training arrays as its model saw them, SMOTE samples included) depend on data, config and seeds only.
    ``meta_inputs`` (the OOF matrix the stacking model learns from, with its labels) also depends on training:
    bitwise reproducible on CPU, but GPU kernels and other CPUs/library versions may round differently, so only
    runs that share the fold cache are guaranteed the same value.
    """
    from medstack.models.ensemble import stack_features

    preds = ensembles.predictions
    base = list(ensembles.meta_model.model_names_)
    per_fold = [preds.fold_info[s][k].get("train_inputs_sha") for s in base for k in sorted(preds.fold_info[s])]
    return {
        "seed": cfg.seed,
        "split_seed": cfg.split.seed,
        "splits": array_sha(prepared.train_idx, prepared.val_idx, prepared.test_idx),
        "folds": array_sha(prepared.train_idx, prepared.fold_of),
        "train_inputs": None if None in per_fold else hashlib.sha256(",".join(per_fold).encode()).hexdigest(),
        "meta_inputs": array_sha(stack_features({s: preds.oof[s] for s in base}, base), prepared.y_train),
    }
