"""Train/val/test splits and the K folds on train: plain index arithmetic, no I/O.

Roles never mix: train is split into K folds for out-of-fold predictions, val only drives early stopping and
the learning-rate schedule, test is read once by the final evaluation.
"""

from __future__ import annotations

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


def make_splits(labels: np.ndarray, cfg: SplitConfig, official_split: np.ndarray | None = None) -> Splits:
    """Stratified train/val/test indices with ``cfg.seed``, or the dataset's official split if asked for."""
    labels = np.asarray(labels)
    if cfg.use_official:
        if official_split is None:
            raise SplitError("split.use_official is true but this dataset has no official split")
        parts = [np.flatnonzero(official_split == code) for code in range(3)]
    else:
        _check_class_counts(labels, np.arange(len(labels)), minimum=3, where="the dataset")
        train_frac, val_frac, test_frac = cfg.fractions
        all_idx = np.arange(len(labels))
        train, rest = train_test_split(
            all_idx, train_size=train_frac, stratify=labels, random_state=cfg.seed
        )
        val, test = train_test_split(
            rest, test_size=test_frac / (val_frac + test_frac), stratify=labels[rest], random_state=cfg.seed
        )
        parts = [train, val, test]
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


def make_folds(labels: np.ndarray, train_idx: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..K-1) of every training row, aligned with ``train_idx``; stratified and shuffled."""
    train_labels = np.asarray(labels)[train_idx]
    _check_class_counts(labels, train_idx, minimum=n_folds, where="the train split (folds)")
    fold_of = np.empty(len(train_idx), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(train_idx)), train_labels)):
        fold_of[held_out] = fold
    for fold in range(n_folds):
        _check_class_counts(labels, train_idx[fold_of != fold], minimum=1, where=f"the training part of fold {fold}")
    return fold_of


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
