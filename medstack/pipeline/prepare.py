"""Prepare stage: train/val/test splits, the calibration slice, K folds on train, duplicate and grouping summaries,
sealed test labels.

The calibration slice (``conformal.calibration: split``) is carved from the training split before the folds: no
fold model, meta-model, temperature or decision ever learns from it; every model only predicts it, like test.

The test split's labels travel sealed (:class:`SealedLabels`) and only ``evaluate_on_test`` opens them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstack.config import RunConfig, stable_hash
from medstack.data import Dataset
from medstack.run_folder import positive_class_index
from medstack.splits import (
    Splits,
    SplitError,
    class_counts,
    carve_calibration,
    crossing_groups,
    describe_duplicates,
    describe_groups,
    assign_folds,
    assign_group_folds,
    find_duplicate_groups,
    merge_groups,
    split_group_indices,
    split_indices,
    subsample_splits,
)


class SealedLabels:
    """Test labels that refuse to be used until :func:`evaluate_on_test` calls :meth:`reveal`."""

    def __init__(self, values: np.ndarray):
        self._values = np.asarray(values).copy()
        self._values.setflags(write=False)

    def reveal(self) -> np.ndarray:
        return self._values

    def save(self, path: str | Path) -> None:
        """Write the values to ``path`` (``.npy``) for the prepared-data store, without revealing them to anyone."""
        np.save(path, self._values, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> "SealedLabels":
        """Labels written by :meth:`save`, sealed again."""
        return cls(np.load(path, allow_pickle=False))

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
    x_cal: np.ndarray  # the calibration slice: predicted, never trained on


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
    cal_idx: np.ndarray  # the calibration slice (conformal.calibration split); empty for oof
    y_cal: np.ndarray
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
        return self._data(self.fold_of != fold)

    def whole_training_data(self) -> FoldData:
        """What a network trained on every fold sees (the student): the whole training split, no held-out rows."""
        return self._data(np.ones(len(self.train_idx), dtype=bool))

    def _data(self, inside: np.ndarray) -> FoldData:
        """The arrays of a network trained on the training rows where ``inside`` holds, the others held out."""
        held_out = self.train_idx[~inside]
        return FoldData(
            x_train=self.images[self.train_idx[inside]],
            y_train=self.y_train[inside],
            x_holdout=self.images[held_out],
            holdout_rows=held_out,
            x_val=self.images[self.val_idx],
            y_val=self.y_val,
            x_test=self.images[self.test_idx],
            x_cal=self.images[self.cal_idx],
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
                             "ids (load it with medstack.data.read_dataset)")
        return _RowGroups(duplicates, None, by_duplicates)
    patients = merge_groups(np.asarray(dataset.groups))
    enforce = patients if by_duplicates is None else merge_groups(patients, by_duplicates)
    return _RowGroups(duplicates, patients, enforce)


def split_rows(dataset: Dataset, cfg: RunConfig) -> Splits:
    """Stratified (or official) train/val/test indices, then the optional smoke-run subsample, then the calibration
    slice carved from train (``conformal.calibration: split``).

    With group ids (``data.group_by``) the split is group-aware (StratifiedGroupKFold), otherwise row-level with
    exact duplicates kept together; the calibration slice keeps the same groups whole."""
    groups = _row_groups(dataset, cfg)
    if groups.patients is not None:
        splits = split_group_indices(dataset.labels, cfg.split, groups.enforce, dataset.official_split)
    else:
        splits = split_indices(dataset.labels, cfg.split, dataset.official_split, groups.enforce)
    splits = subsample_splits(dataset.labels, splits, cfg.data.subset, cfg.split.seed)
    if cfg.conformal.calibration != "split":
        return splits
    return carve_calibration(dataset.labels, splits, cfg.conformal.calibration_share, cfg.split.seed,
                             groups.enforce, by_patient=groups.patients is not None)


def prepare_folds(dataset: Dataset, splits: Splits, cfg: RunConfig) -> PreparedData:
    """K stratified folds on the train split, packaged with everything training needs."""
    groups = _row_groups(dataset, cfg)
    if groups.patients is not None:
        fold_of = assign_group_folds(dataset.labels, splits.train, cfg.split.folds, cfg.split.seed, groups.enforce)
    else:
        fold_of = assign_folds(dataset.labels, splits.train, cfg.split.folds, cfg.split.seed, groups.enforce)
    duplicates = _duplicate_summary(groups.duplicates, dataset.labels, splits, fold_of, cfg)
    grouping = _grouping_summary(groups, dataset, splits, fold_of, cfg)
    names = list(dataset.class_names)
    counts = {
        split: dict(zip(names, class_counts(dataset.labels[idx], len(names))))
        for split, idx in splits.as_dict().items()
    }
    positive = positive_class_index(cfg.data.positive_class, len(names))
    index_hash = hashlib.sha256()
    for arr in (splits.train, splits.val, splits.test, fold_of, splits.calibration):
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
        cal_idx=splits.calibration,
        y_cal=dataset.labels[splits.calibration],
        test_labels=SealedLabels(dataset.labels[splits.test]),
        counts=counts,
        # the slice's size too: an empty slice (oof) adds no bytes above, and its folds must not meet older entries
        fingerprint=stable_hash(dataset.fingerprint(), index_hash.hexdigest(), len(splits.calibration)),
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
