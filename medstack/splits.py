"""Train/val/test splits and the K folds on train: plain index arithmetic, no I/O.

Roles never mix: train is split into K folds for out-of-fold predictions, val only drives early stopping and
the learning-rate schedule, test is read once by the final evaluation.

Two ways to keep groups together:

* exact duplicates alone (:func:`split_indices` / :func:`assign_folds` with ``groups``): almost every group is one
  image, so the row-level stratified split is drawn over one representative per group;
* patient groups (:func:`split_group_indices` / :func:`assign_group_folds`): groups differ wildly in size, so a
  representative per group would stratify patients, not images. scikit-learn's ``StratifiedGroupKFold`` balances
  the class mix of whole groups instead: test is one of its ``round(1 / test fraction)`` folds, val one fold of
  the rest, and the K training folds are its K folds.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from medstack.config import SplitConfig, SubsetConfig
from medstack.errors import BAD_INPUT, MedstackError

SPLIT_NAMES = ("train", "val", "test")


class SplitError(MedstackError, ValueError):
    """A split or fold cannot be made from these labels (names the class and its counts)."""

    exit_code, kind = BAD_INPUT, "split error"
    hint = "add images of the class named above, or lower split.folds / change split.fractions"


@dataclass(frozen=True)
class Splits:
    """Row indices into the dataset for each split; disjoint, sorted. ``calibration`` (conformal.calibration split)
    is carved from the training split before the folds (:func:`carve_calibration`); empty when there is none."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def as_dict(self) -> dict[str, np.ndarray]:
        """train, val, test and, when carved, calibration."""
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return parts | ({"calibration": self.calibration} if len(self.calibration) else {})


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


def split_indices(
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


def split_group_indices(
    labels: np.ndarray, cfg: SplitConfig, groups: np.ndarray, official_split: np.ndarray | None = None
) -> Splits:
    """Train/val/test with every group (e.g. patient) whole in one split, class mix balanced over whole groups.

    Test is one fold of ``StratifiedGroupKFold(round(1 / test fraction))`` over all rows, val one fold of
    ``StratifiedGroupKFold(round((train + val) / val))`` over the rest; each time the fold is drawn with
    ``cfg.seed`` among those that leave every class on both sides. Split sizes therefore follow the groups: with
    few large groups they can miss ``cfg.fractions`` by a group's size. The official split, if asked for, is used
    as published (see :func:`split_indices`)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if cfg.use_official:
        return split_indices(labels, cfg, official_split)
    everything = np.arange(len(labels))
    _check_group_counts(labels, everything, groups, minimum=3, where="the dataset (one group per split)")
    _, val_frac, test_frac = cfg.fractions
    rest, test = _carve_group_fold(labels, everything, groups, test_frac, cfg.seed, "test")
    train, val = _carve_group_fold(labels, rest, groups, val_frac / (1.0 - test_frac), cfg.seed, "val")
    return Splits(np.sort(train), np.sort(val), np.sort(test))


def carve_calibration(labels: np.ndarray, splits: Splits, share: float, seed: int,
                      groups: np.ndarray | None = None, by_patient: bool = False) -> Splits:
    """A stratified slice of about ``share`` of the train split, held out for conformal calibration, with every
    group of ``groups`` whole on one side: patient groups (``by_patient``) as the val/test splits carve them
    (one StratifiedGroupKFold fold), exact duplicates over one representative per group. Train keeps the rest."""
    labels, train = np.asarray(labels), splits.train
    try:
        if by_patient:
            rest, held = _carve_group_fold(labels, train, np.asarray(groups), share, seed, "calibration")
        else:
            reps = _representatives(train, groups)
            _, held = _stratified_split(labels, reps, 1.0 - share, seed, "train vs calibration")
            held = held if groups is None else train[np.isin(groups[train], groups[held])]
            rest = np.setdiff1d(train, held)
    except SplitError as exc:
        raise SplitError(f"conformal calibration slice ({share:.0%} of the train split): {exc}; raise "
                         "conformal.calibration_share, or calibrate on out-of-fold predictions with "
                         "conformal.calibration: oof and distill.enabled: false (empirical coverage only, and no one-network "
                         "model)") from exc
    return Splits(np.sort(rest), splits.val, splits.test, np.sort(held))


def _carve_group_fold(
    labels: np.ndarray, idx: np.ndarray, groups: np.ndarray, share: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, carved): one StratifiedGroupKFold fold of ``idx`` of about ``share``, both sides holding every class."""
    n_splits = max(2, round(1.0 / share))
    n_groups = len(np.unique(groups[idx]))
    counts = _groups_per_class(labels, idx, groups)
    if n_groups < n_splits:
        raise SplitError(f"cannot carve the {what} split (about 1/{n_splits} of the rows) from {n_groups} groups; "
                         f"need at least {n_splits} (groups per class: {counts})")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    classes = len(np.unique(labels[idx]))
    candidates = []
    with warnings.catch_warnings():  # "least populated class has only N members": our group check covers it
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for rest, held in splitter.split(np.zeros(len(idx)), labels[idx], groups[idx]):
            if len(np.unique(labels[idx[held]])) == classes and len(np.unique(labels[idx[rest]])) == classes:
                candidates.append((idx[rest], idx[held]))
    if not candidates:
        raise SplitError(
            f"cannot carve a {what} split holding every class: none of the {n_splits} group folds (each about "
            f"1/{n_splits} of the rows) has groups of every class (groups per class: {counts}); the rarest class "
            f"needs more groups, or split.fractions a larger {what} share"
        )
    pick = np.random.default_rng([seed, n_splits, len(idx)]).integers(len(candidates))
    return candidates[pick]


def assign_group_folds(
    labels: np.ndarray, train_idx: np.ndarray, n_folds: int, seed: int, groups: np.ndarray
) -> np.ndarray:
    """Fold number (0..K-1) of every training row, aligned with ``train_idx``: ``StratifiedGroupKFold``, so every
    group's rows share a fold and each fold's class mix is balanced over whole groups."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    _check_group_counts(labels, train_idx, groups, minimum=n_folds, where="the train split (folds)")
    fold_of = np.empty(len(train_idx), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(train_idx)), labels[train_idx],
                                                            groups[train_idx])):
            fold_of[held_out] = fold
    for fold in range(n_folds):
        _check_class_counts(labels, train_idx[fold_of != fold], minimum=1, where=f"the training part of fold {fold}")
    return fold_of


def merge_groups(*groupings: np.ndarray) -> np.ndarray:
    """Rows that share a group in any of ``groupings`` end in one group (connected components), so one patient's
    exact duplicate filed under another patient joins the two. Ids are each merged group's first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(groupings[0])
    rows, anchors = [], []
    for grouping in groupings:
        _, first, inverse = np.unique(np.asarray(grouping), return_index=True, return_inverse=True)
        rows.append(np.arange(n))
        anchors.append(first[inverse.ravel()])
    rows_, anchors_ = np.concatenate(rows), np.concatenate(anchors)
    graph = coo_matrix((np.ones(len(rows_), dtype=np.int8), (rows_, anchors_)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


def crossing_groups(groups: np.ndarray, membership: dict[str, np.ndarray]) -> np.ndarray:
    """Ids of the groups with rows in more than one of the partitions (splits or folds) in ``membership``."""
    ids, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.ravel()
    where = np.full(len(codes), -1)
    for part, rows in enumerate(membership.values()):
        where[rows] = part
    placed = where >= 0
    pairs = np.unique(np.stack([codes[placed], where[placed]]), axis=1)
    group_codes, partitions = np.unique(pairs[0], return_counts=True)
    return ids[group_codes[partitions > 1]]


def describe_groups(groups: np.ndarray, labels: np.ndarray, membership: dict[str, np.ndarray]) -> dict:
    """Number of groups, images per group (min/median/max), groups with several labels, groups that straddle the
    partitions in ``membership`` (computed from the rows, not assumed)."""
    groups = np.asarray(groups)
    _, codes, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    pairs = np.unique(np.stack([codes.ravel(), np.asarray(labels)]), axis=1)
    labels_per_group = np.bincount(pairs[0], minlength=len(sizes))
    return {
        "groups": int(len(sizes)),
        "images_per_group": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
        "mixed_labels": int((labels_per_group > 1).sum()),
        "crossing": int(len(crossing_groups(groups, membership))),
    }


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
    return Splits(**out)  # before carve_calibration: the subset applies to the train split as a whole


def assign_folds(
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


def _groups_per_class(labels: np.ndarray, idx: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """How many distinct groups hold at least one row of each class, among ``idx`` (a group may count twice)."""
    num_classes = int(np.max(labels)) + 1
    _, codes = np.unique(np.asarray(groups)[idx], return_inverse=True)
    pairs = np.unique(np.stack([codes.ravel(), np.asarray(labels)[idx]]), axis=1)
    return {c: int(n) for c, n in enumerate(np.bincount(pairs[1], minlength=num_classes))}


def _check_group_counts(labels: np.ndarray, idx: np.ndarray, groups: np.ndarray, minimum: int, where: str) -> None:
    counts = _groups_per_class(labels, idx, groups)
    too_small = {c: n for c, n in counts.items() if n < minimum}
    if too_small:
        raise SplitError(
            f"{where}: class(es) {sorted(too_small)} have images of only {too_small} groups, need at least {minimum} "
            f"groups each (groups per class: {counts}); with data.group_by a group never spans splits or folds"
        )


def _check_class_counts(labels: np.ndarray, idx: np.ndarray, minimum: int, where: str) -> None:
    present = np.asarray(labels)[idx]
    counts = np.bincount(present, minlength=int(np.max(labels)) + 1)
    too_small = {int(c): int(n) for c, n in enumerate(counts) if n < minimum}
    if too_small:
        raise SplitError(
            f"{where}: class(es) {sorted(too_small)} have {too_small} samples, need at least {minimum} each "
            f"(all counts: {counts.tolist()})"
        )
