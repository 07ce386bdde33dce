"""Train/val/test splits and the K folds on train: plain index arithmetic, no I/O.

Roles never mix: train is split into K folds for out-of-fold predictions, val only drives early stopping and
the learning-rate schedule, test is read once by the final evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from medstack.config import SplitConfig, SubsetConfig

SPLIT_NAMES = ("train", "val", "test")


class SplitError(ValueError):
    """A split or fold cannot be made from these labels (names the class and its counts)."""


@dataclass(frozen=True)
class Splits:
    """Row indices into the dataset for each split; disjoint, sorted."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def find_duplicate_groups(images: np.ndarray) -> np.ndarray:
    """Group id of every image; images with identical pixels (and shape) share one. Ids are first-row indices."""
    first_row: dict[bytes, int] = {}
    groups = np.empty(len(images), dtype=np.int64)
    for row, image in enumerate(images):
        digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()
        groups[row] = first_row.setdefault(digest, row)
    return groups


def describe_duplicates(groups: np.ndarray, labels: np.ndarray, membership: dict[str, np.ndarray]) -> dict[str, int]:
    """How many duplicate groups there are and how many of them straddle the given partitions (splits or folds)."""
    sizes = np.bincount(groups, minlength=len(groups))
    dup_groups = np.flatnonzero(sizes > 1)
    where = np.full(len(groups), -1)
    for code, rows in enumerate(membership.values()):
        where[rows] = code
    crossing = conflicting = 0
    for g in dup_groups:
        rows = np.flatnonzero(groups == g)
        placed = where[rows][where[rows] >= 0]
        crossing += len(np.unique(placed)) > 1
        conflicting += len(np.unique(labels[rows])) > 1
    return {
        "groups": int(len(dup_groups)),
        "rows": int(sizes[dup_groups].sum()),
        "crossing": int(crossing),
        "conflicting_labels": int(conflicting),
    }


def make_splits(
    labels: np.ndarray, cfg: SplitConfig, official_split: np.ndarray | None = None, groups: np.ndarray | None = None
) -> Splits:
    """Stratified train/val/test indices with ``cfg.seed``, or the dataset's official split if asked for.

    With ``groups`` (e.g. exact duplicates) every group lands whole in one split: the stratified split is drawn
    over one representative row per group (labelled by that row) and expanded back to all of the group's rows.
    """
    labels = np.asarray(labels)
    if cfg.use_official:
        if official_split is None:
            raise SplitError("split.use_official is true but this dataset has no official split")
        parts = [np.flatnonzero(official_split == code) for code in range(3)]
    else:
        reps = _representatives(np.arange(len(labels)), groups)
        _check_class_counts(labels, reps, minimum=3, where="the dataset")
        train_frac, val_frac, test_frac = cfg.fractions
        train, rest = _stratified_split(labels, reps, train_frac, cfg.seed, "train vs val+test")
        test_share = test_frac / (val_frac + test_frac)
        val, test = _stratified_split(labels, rest, 1.0 - test_share, cfg.seed, "val vs test")
        parts = [_expand(part, groups) for part in (train, val, test)]
    splits = Splits(*(np.sort(p) for p in parts))
    for name, idx in splits.as_dict().items():
        if len(idx) == 0:
            raise SplitError(f"the {name} split is empty")
    return splits


def subsample_splits(labels: np.ndarray, splits: Splits, subset: SubsetConfig, seed: int) -> Splits:
    """Stratified subsample of each split to at most the configured size (smoke runs); others unchanged."""
    out = {}
    for name, idx in splits.as_dict().items():
        size = getattr(subset, name)
        if size is None or size >= len(idx):
            out[name] = idx
            continue
        kept, _ = train_test_split(idx, train_size=size, stratify=labels[idx], random_state=seed)
        out[name] = np.sort(kept)
    return Splits(**out)


def make_folds(
    labels: np.ndarray, train_idx: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Fold number (0..K-1) of every training row, aligned with ``train_idx``; stratified and shuffled.

    With ``groups``, all training rows of a group share a fold (folds are drawn over group representatives)."""
    labels = np.asarray(labels)
    reps = _representatives(train_idx, groups)
    _check_class_counts(labels, reps, minimum=n_folds, where="the train split (folds)")
    fold_of_rep = np.empty(len(reps), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(reps)), labels[reps])):
        fold_of_rep[held_out] = fold
    if groups is None:
        fold_of = fold_of_rep
    else:
        fold_by_group = dict(zip(groups[reps].tolist(), fold_of_rep.tolist()))
        fold_of = np.array([fold_by_group[g] for g in groups[train_idx].tolist()], dtype=np.int64)
    for fold in range(n_folds):
        _check_class_counts(labels, train_idx[fold_of != fold], minimum=1, where=f"the training part of fold {fold}")
    return fold_of


def _stratified_split(labels: np.ndarray, idx: np.ndarray, first_share: float, seed: int, what: str):
    try:
        return train_test_split(idx, train_size=first_share, stratify=labels[idx], random_state=seed)
    except ValueError as exc:  # scikit-learn's message names neither our split nor the counts
        counts = np.bincount(labels[idx], minlength=int(labels.max()) + 1).tolist()
        raise SplitError(
            f"cannot stratify {what}: class counts {counts} are too small for split.fractions ({exc})"
        ) from exc


def _representatives(idx: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """The first row of every group among ``idx`` (all of ``idx`` without groups)."""
    if groups is None:
        return np.asarray(idx)
    _, first = np.unique(groups[idx], return_index=True)
    return np.sort(np.asarray(idx)[first])


def _expand(reps: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """All rows whose group has a representative in ``reps``."""
    if groups is None:
        return reps
    return np.flatnonzero(np.isin(groups, groups[reps]))


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def _check_class_counts(labels: np.ndarray, idx: np.ndarray, minimum: int, where: str) -> None:
    present = np.asarray(labels)[idx]
    counts = np.bincount(present, minlength=int(np.max(labels)) + 1)
    too_small = {int(c): int(n) for c, n in enumerate(counts) if n < minimum}
    if too_small:
        raise SplitError(
            f"{where}: class(es) {sorted(too_small)} have {too_small} samples, need at least {minimum} each "
            f"(all counts: {counts.tolist()})"
        )
