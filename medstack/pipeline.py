"""The plain functions behind every DAG node, in DAG order. No Prefect here: ``tasks/`` wraps these.

load_dataset -> make_splits -> make_folds -> train_fold (strategy x fold) -> gather_predictions
-> fit_ensembles -> evaluate_on_test -> (report)

The test split's labels travel sealed (:class:`SealedLabels`) and only :func:`evaluate_on_test` opens them.
Base models see test *images* only to predict them; nothing fitted anywhere learns from test or val labels,
except early stopping and the LR schedule, which use val.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medstack.config import RunConfig, array_sha, stable_hash
from medstack.data import Dataset
from medstack.splits import (
    Splits,
    SplitError,
    class_counts,
    crossing_groups,
    describe_duplicates,
    describe_groups,
    find_duplicate_groups,
    make_group_folds,
    make_group_splits,
    merge_groups,
    subsample_splits,
)
from medstack.splits import make_folds as _fold_assignment
from medstack.splits import make_splits as _split_indices
from medstack.storage import FoldCache, FoldResult

log = logging.getLogger(__name__)

ENSEMBLES = ("soft_voting", "stacking")


class SealedLabels:
    """Test labels that refuse to be used until :func:`evaluate_on_test` calls :meth:`reveal`."""

    def __init__(self, values: np.ndarray):
        self._values = np.asarray(values).copy()
        self._values.setflags(write=False)

    def reveal(self) -> np.ndarray:
        return self._values

    def __len__(self) -> int:
        return len(self._values)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("test labels are sealed: only evaluate_on_test may read them (call .reveal() there)")

    def __getitem__(self, item: Any) -> Any:
        raise TypeError("test labels are sealed: only evaluate_on_test may read them (call .reveal() there)")


@dataclass(frozen=True)
class FoldData:
    """What one fold's training sees: its training part, the held-out rows (images only), val, test images."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    holdout_rows: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray


@dataclass(frozen=True)
class PreparedData:
    """The dataset with its splits and folds fixed; the one object every training task receives."""

    name: str
    class_names: tuple[str, ...]
    images: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    fold_of: np.ndarray  # fold of each train_idx row
    y_train: np.ndarray
    y_val: np.ndarray
    test_labels: SealedLabels
    counts: dict[str, dict[str, int]]
    fingerprint: str  # of the data and the exact split/fold indices
    positive_class: int
    duplicates: dict[str, Any] = field(default_factory=dict)
    grouping: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_folds(self) -> int:
        return int(self.fold_of.max()) + 1

    def fold_data(self, fold: int) -> FoldData:
        if not 0 <= fold < self.n_folds:
            raise ValueError(f"fold {fold} out of range 0..{self.n_folds - 1}")
        inside = self.fold_of != fold
        held_out = self.train_idx[~inside]
        return FoldData(
            x_train=self.images[self.train_idx[inside]],
            y_train=self.y_train[inside],
            x_holdout=self.images[held_out],
            holdout_rows=held_out,
            x_val=self.images[self.val_idx],
            y_val=self.y_val,
            x_test=self.images[self.test_idx],
        )


@dataclass(frozen=True)
class _RowGroups:
    """Which rows belong together: exact duplicates, data.group_by groups, and what splits and folds enforce."""

    duplicates: np.ndarray  # exact-duplicate group of every row (first-row ids)
    patients: np.ndarray | None  # data.group_by group of every row (first-row ids); None splits image by image
    enforce: np.ndarray | None  # kept whole in one split and one fold; None when nothing is


def _row_groups(dataset: Dataset, cfg: RunConfig) -> _RowGroups:
    """Duplicates are grouped unless split.duplicates is 'report'; with group_by, a duplicate pair across two
    groups (patients) merges them, so both guarantees hold at once."""
    duplicates = find_duplicate_groups(dataset.images)
    by_duplicates = duplicates if cfg.split.duplicates == "group" else None
    if dataset.groups is None:
        if cfg.data.group_by is not None:
            raise ValueError(f"data.group_by is {cfg.data.group_by.kind!r} but dataset {dataset.name!r} has no group "
                             "ids (load it with medstack.data.load_dataset)")
        return _RowGroups(duplicates, None, by_duplicates)
    patients = merge_groups(np.asarray(dataset.groups))
    enforce = patients if by_duplicates is None else merge_groups(patients, by_duplicates)
    return _RowGroups(duplicates, patients, enforce)


def make_splits(dataset: Dataset, cfg: RunConfig) -> Splits:
    """Stratified (or official) train/val/test indices, then the optional smoke-run subsample.

    With group ids (``data.group_by``) the split is group-aware (StratifiedGroupKFold), otherwise row-level with
    exact duplicates kept together."""
    groups = _row_groups(dataset, cfg)
    if groups.patients is not None:
        splits = make_group_splits(dataset.labels, cfg.split, groups.enforce, dataset.official_split)
    else:
        splits = _split_indices(dataset.labels, cfg.split, dataset.official_split, groups.enforce)
    return subsample_splits(dataset.labels, splits, cfg.data.subset, cfg.split.seed)


def make_folds(dataset: Dataset, splits: Splits, cfg: RunConfig) -> PreparedData:
    """K stratified folds on the train split, packaged with everything training needs."""
    groups = _row_groups(dataset, cfg)
    if groups.patients is not None:
        fold_of = make_group_folds(dataset.labels, splits.train, cfg.split.folds, cfg.split.seed, groups.enforce)
    else:
        fold_of = _fold_assignment(dataset.labels, splits.train, cfg.split.folds, cfg.split.seed, groups.enforce)
    duplicates = _duplicate_summary(groups.duplicates, dataset.labels, splits, fold_of, cfg)
    grouping = _grouping_summary(groups, dataset, splits, fold_of, cfg)
    names = list(dataset.class_names)
    counts = {
        split: dict(zip(names, class_counts(dataset.labels[idx], len(names))))
        for split, idx in splits.as_dict().items()
    }
    positive = cfg.data.positive_class if cfg.data.positive_class is not None else 1
    if len(names) == 2 and positive > 1:
        raise ValueError(f"data.positive_class must be 0 or 1 for a binary dataset, got {positive}")
    index_hash = hashlib.sha256()
    for arr in (splits.train, splits.val, splits.test, fold_of):
        index_hash.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    notes = tuple(f"skipped unreadable image {path}: {why}" for path, why in dataset.skipped) + (duplicates["summary"],)
    notes += (grouping["summary"],) if grouping.get("summary") else ()
    return PreparedData(
        name=dataset.name,
        class_names=tuple(names),
        images=dataset.images,
        train_idx=splits.train,
        val_idx=splits.val,
        test_idx=splits.test,
        fold_of=fold_of,
        y_train=dataset.labels[splits.train],
        y_val=dataset.labels[splits.val],
        test_labels=SealedLabels(dataset.labels[splits.test]),
        counts=counts,
        fingerprint=stable_hash(dataset.fingerprint(), index_hash.hexdigest()),
        positive_class=positive,
        duplicates=duplicates,
        grouping=grouping,
        notes=notes,
    )


def _duplicate_summary(groups: np.ndarray, labels: np.ndarray, splits: Splits, fold_of: np.ndarray, cfg: RunConfig) -> dict[str, Any]:
    """Counts of exact-duplicate groups, how many straddle splits or folds, and what was done about them."""
    across_splits = describe_duplicates(groups, labels, splits.as_dict())
    folds = {str(k): splits.train[fold_of == k] for k in range(int(fold_of.max()) + 1)}
    across_folds = describe_duplicates(groups, labels, folds)
    handling = "grouped: every duplicate group kept in one split and one fold" if cfg.split.duplicates == "group" else "reported only"
    if cfg.split.use_official and cfg.split.duplicates == "group":
        handling = "grouped within the train folds; the official split is used as published"
    summary = (
        f"exact-duplicate images: {across_splits['groups']} groups ({across_splits['rows']} images); "
        f"{across_splits['crossing']} cross train/val/test, {across_folds['crossing']} cross folds; "
        f"{across_splits['conflicting_labels']} with conflicting labels; {handling}"
    )
    return {
        "groups": across_splits["groups"],
        "images": across_splits["rows"],
        "crossing_splits": across_splits["crossing"],
        "crossing_folds": across_folds["crossing"],
        "conflicting_labels": across_splits["conflicting_labels"],
        "handling": handling,
        "summary": summary,
    }


def _grouping_summary(groups: _RowGroups, dataset: Dataset, splits: Splits, fold_of: np.ndarray,
                      cfg: RunConfig) -> dict[str, Any]:
    """What the data.group_by groups look like and whether any straddles splits or folds: counted from the final
    indices, and an error (not a footnote) where the split promised otherwise."""
    if groups.patients is None:
        return {"kind": "none", "unit": "image (no data.group_by: images of one patient may land in different splits)"}
    labels = dataset.labels
    folds = {str(k): splits.train[fold_of == k] for k in range(int(fold_of.max()) + 1)}
    described = describe_groups(groups.patients, labels, splits.as_dict())
    cross_splits = crossing_groups(groups.patients, splits.as_dict())
    cross_folds = crossing_groups(groups.patients, folds)
    enforced = len(np.unique(groups.enforce))
    ids = np.asarray(dataset.groups)
    if len(cross_folds) or (len(cross_splits) and not cfg.split.use_official):
        raise SplitError(f"group-aware split broke its promise: groups {ids[cross_splits[:5]].tolist()} cross "
                         f"train/val/test, {ids[cross_folds[:5]].tolist()} cross folds")
    handling = "each group whole in one split and one fold (StratifiedGroupKFold)"
    if cfg.split.use_official:
        handling = "grouped within the train folds; the official split is used as published"
    merged = described["groups"] - enforced
    mixed = _mixed_class_groups(ids, labels, dataset.class_names)
    per = described["images_per_group"]
    summary = (
        f"grouping by {dataset.grouped_by or 'dataset group ids'}: {described['groups']} groups, "
        f"{per['min']}/{per['median']:g}/{per['max']} images per group (min/median/max); "
        f"{len(cross_splits)} cross train/val/test, {len(cross_folds)} cross folds; {handling}"
        + (f"; {merged} merged with another group through exact-duplicate images" if merged else "")
        + (f"; {len(mixed)} with images in more than one class: {_name_some(mixed)}" if mixed else "")
    )
    return {
        "kind": cfg.data.group_by.kind if cfg.data.group_by is not None else "dataset",
        "source": dataset.grouped_by,
        "groups": described["groups"],
        "images_per_group": per,
        "crossing_splits": int(len(cross_splits)),
        "crossing_folds": int(len(cross_folds)),
        "mixed_class_groups": len(mixed),
        "merged_by_duplicates": int(merged),
        "handling": handling,
        "summary": summary,
    }


def _mixed_class_groups(ids: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, list[str]]:
    classes: dict[str, set[int]] = {}
    for group_id, label in zip(ids.tolist(), labels.tolist()):
        classes.setdefault(group_id, set()).add(label)
    return {g: [class_names[c] for c in sorted(cs)] for g, cs in classes.items() if len(cs) > 1}


def _name_some(mapping: dict[str, list[str]], n: int = 5) -> str:
    shown = ", ".join(f"{k} ({'+'.join(v)})" for k, v in list(mapping.items())[:n])
    return shown + (f", and {len(mapping) - n} more" if len(mapping) > n else "")


def code_version() -> str:
    """Hash of the sources in ``models/``: a change to how models train invalidates cached folds."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parents[1] / "models").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def fold_cache_key(prepared: PreparedData, cfg: RunConfig, strategy: str, fold: int, version: str) -> str:
    """Everything a fold's training depends on, and nothing else (not the meta-model, not the report)."""
    return stable_hash(
        prepared.fingerprint,
        fold,
        strategy,
        cfg.strategies[strategy],
        cfg.model.model_dump(mode="json"),
        cfg.augmentation.model_dump(mode="json"),
        cfg.training.model_dump(mode="json"),
        cfg.data.image_size,
        cfg.seed,
        version,
    )


def fold_seed(seed: int, strategy: str, fold: int) -> int:
    """A distinct, reproducible seed per (strategy, fold)."""
    return (seed * 7919 + fold * 131 + zlib.crc32(strategy.encode())) % 1_000_000


def train_fold(
    prepared: PreparedData, cfg: RunConfig, strategy: str, fold: int, cache: FoldCache, version: str
) -> FoldResult:
    """Train one strategy on folds != ``fold`` (or load it from the cache) and predict the held-out fold, val, test."""
    from models.training import CNNClassifier  # TensorFlow loads only where training happens

    key = fold_cache_key(prepared, cfg, strategy, fold, version)
    cached = cache.load(key)
    if cached is not None:
        log.info("train[%s|fold-%d]: cache hit %s", strategy, fold + 1, key)
        return cached
    data = prepared.fold_data(fold)
    clf = CNNClassifier(
        strategy,
        cfg.strategy_params(strategy),
        prepared.num_classes,
        cfg.model,
        cfg.augmentation,
        cfg.training,
        image_size=cfg.data.image_size,
        seed=fold_seed(cfg.seed, strategy, fold),
    ).fit(data.x_train, data.y_train, data.x_val, data.y_val)
    result = FoldResult(
        strategy=strategy,
        fold=fold,
        cache_key=key,
        oof_index=data.holdout_rows,
        oof_proba=clf.predict_proba(data.x_holdout),
        val_proba=clf.predict_proba(data.x_val),
        test_proba=clf.predict_proba(data.x_test),
        history=clf.history_,
        info=clf.info_,
    )
    return cache.save(result, clf.save)


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
    from models.ensemble import StackingMetaModel, soft_vote
    from models.metrics import choose_threshold

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
    from models.ensemble import stack_features

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


def evaluate_on_test(prepared: PreparedData, ensembles: EnsembleFit, cfg: RunConfig) -> dict:
    """The only reader of the test labels: test and OOF metrics of all models, with bootstrap CIs on test."""
    from models.metrics import bootstrap_ci, compute_metrics

    y_test = prepared.test_labels.reveal()
    preds = ensembles.predictions
    names = list(prepared.class_names)
    models: dict[str, dict] = {}
    for model_name in preds.test:
        threshold = ensembles.thresholds[model_name]
        kwargs = dict(threshold=threshold, positive_class=prepared.positive_class)
        models[model_name] = {
            "test": compute_metrics(y_test, preds.test[model_name], class_names=names, **kwargs),
            "oof": compute_metrics(prepared.y_train, preds.oof[model_name], class_names=names, **kwargs),
            "test_ci": {
                k: list(v)
                for k, v in bootstrap_ci(
                    y_test, preds.test[model_name], n_boot=cfg.report.bootstrap, ci=cfg.report.ci, seed=cfg.seed, **kwargs
                ).items()
            },
        }
    return {
        "dataset": {
            "name": prepared.name,
            "classes": names,
            "counts": prepared.counts,
            "duplicates": {k: v for k, v in prepared.duplicates.items() if k != "summary"},
            "grouping": {k: v for k, v in prepared.grouping.items() if k != "summary"},
        },
        "models": models,
    }


def summarise_training(results: list[FoldResult], wall_seconds: float) -> dict[str, Any]:
    """Counts and timings for the manifest and report: what was trained, what came from the cache."""
    trained = [r for r in results if not r.from_cache]
    return {
        "wall_seconds": round(wall_seconds, 1),
        "trained": len(trained),
        "cache_hits": len(results) - len(trained),
        "training_seconds": round(sum(r.info.get("seconds", 0.0) for r in trained), 1),
        "folds": {
            f"{r.strategy}|fold-{r.fold + 1}": {"cache_key": r.cache_key, "from_cache": r.from_cache, **{
                k: r.info.get(k) for k in ("epochs_run", "best_epoch", "seconds", "n_train", "n_synthetic", "train_inputs_sha", "temperature")
            }}
            for r in results
        },
    }
