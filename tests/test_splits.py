import numpy as np
import pytest

from medstack.config import SplitConfig, SubsetConfig
from medstack.splits import SplitError, describe_duplicates, find_duplicate_groups, make_folds, make_splits, subsample_splits


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_splits_are_disjoint_complete_and_stratified(seed):
    labels = np.array([0] * 300 + [1] * 100 + [2] * 40)
    splits = make_splits(labels, SplitConfig(seed=seed))
    parts = splits.as_dict()
    assert sum(len(p) for p in parts.values()) == len(labels)
    assert len(np.unique(np.concatenate(list(parts.values())))) == len(labels)
    for name, frac in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
        assert len(parts[name]) == pytest.approx(frac * len(labels), abs=2)
        share = np.bincount(labels[parts[name]], minlength=3) / len(parts[name])
        assert share == pytest.approx([300 / 440, 100 / 440, 40 / 440], abs=0.03)


def test_same_seed_same_split_other_seed_other_split():
    labels = np.array([0] * 80 + [1] * 20)
    a, b = make_splits(labels, SplitConfig(seed=5)), make_splits(labels, SplitConfig(seed=5))
    c = make_splits(labels, SplitConfig(seed=6))
    assert np.array_equal(a.test, b.test) and not np.array_equal(a.test, c.test)


def test_official_split_is_used_verbatim():
    official = np.array([0, 0, 0, 1, 2, 0, 2])
    splits = make_splits(np.array([0, 1, 0, 1, 0, 1, 1]), SplitConfig(use_official=True), official)
    assert splits.train.tolist() == [0, 1, 2, 5] and splits.val.tolist() == [3] and splits.test.tolist() == [4, 6]


def test_official_split_missing_is_an_error():
    with pytest.raises(SplitError, match="no official split"):
        make_splits(np.zeros(10, int), SplitConfig(use_official=True), None)


def test_too_few_samples_of_a_class_names_it():
    with pytest.raises(SplitError, match=r"class\(es\) \[1\] have \{1: 2\}"):
        make_splits(np.array([0] * 30 + [1] * 2), SplitConfig())


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_folds_partition_train_and_are_stratified(seed):
    labels = np.array([0] * 200 + [1] * 50)
    train = np.arange(0, 250, 2)  # a subset of rows, as after splitting
    fold_of = make_folds(labels, train, 5, seed)
    assert sorted(np.unique(fold_of)) == [0, 1, 2, 3, 4]
    for k in range(5):
        held = train[fold_of == k]
        assert np.mean(labels[held] == 1) == pytest.approx(25 / 125, abs=0.05)


def test_more_folds_than_minority_samples_fails_with_counts():
    labels = np.array([0] * 40 + [1] * 3)
    with pytest.raises(SplitError, match=r"need at least 5 each \(all counts: \[40, 3\]\)"):
        make_folds(labels, np.arange(43), 5, 0)


def test_subsample_keeps_strata_and_limits_size():
    labels = np.array([0] * 600 + [1] * 200)
    splits = make_splits(labels, SplitConfig(seed=0))
    small = subsample_splits(labels, splits, SubsetConfig(train=100, test=40), seed=0)
    assert len(small.train) == 100 and len(small.test) == 40 and np.array_equal(small.val, splits.val)
    assert set(small.train) <= set(splits.train)
    assert np.mean(labels[small.train]) == pytest.approx(0.25, abs=0.03)


def _with_duplicates(rng, n=300, n_dups=40):
    """Random 4x4 images, labels 3:1, and ``n_dups`` extra copies of earlier images (same label)."""
    images = rng.integers(0, 255, (n, 4, 4, 1)).astype(np.uint8)
    labels = (rng.random(n) < 0.25).astype(np.int64)
    src = rng.choice(n, n_dups, replace=False)
    return np.concatenate([images, images[src]]), np.concatenate([labels, labels[src]])


def test_find_duplicate_groups_by_pixels(rng):
    images, labels = _with_duplicates(rng)
    groups = find_duplicate_groups(images)
    assert np.array_equal(groups[300:], groups[groups[300:]])  # each copy points at its original's group
    assert len(np.unique(groups)) == 300
    summary = describe_duplicates(groups, labels, {"all": np.arange(len(labels))})
    assert summary == {"groups": 40, "rows": 80, "crossing": 0, "conflicting_labels": 0}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_grouped_splits_and_folds_keep_duplicates_together(rng, seed):
    images, labels = _with_duplicates(rng)
    groups = find_duplicate_groups(images)
    plain = make_splits(labels, SplitConfig(seed=seed))
    assert describe_duplicates(groups, labels, plain.as_dict())["crossing"] > 0  # the leak grouping prevents
    splits = make_splits(labels, SplitConfig(seed=seed), groups=groups)
    assert describe_duplicates(groups, labels, splits.as_dict())["crossing"] == 0
    assert sum(map(len, splits.as_dict().values())) == len(labels)
    assert len(splits.test) == pytest.approx(0.1 * len(labels), abs=6)
    fold_of = make_folds(labels, splits.train, 4, seed, groups=groups)
    folds = {k: splits.train[fold_of == k] for k in range(4)}
    assert describe_duplicates(groups, labels, folds)["crossing"] == 0
    for rows in folds.values():
        assert np.mean(labels[rows]) == pytest.approx(np.mean(labels[splits.train]), abs=0.08)


def test_pneumoniamnist_duplicates_are_found_and_kept_out_of_other_folds(pneumonia_npz):
    from medstack import pipeline
    from medstack.config import RunConfig
    from medstack.data import load_npz

    dataset = load_npz(pneumonia_npz, "pneumoniamnist")
    official = RunConfig(split={"use_official": True, "folds": 5})
    prepared = pipeline.make_folds(dataset, pipeline.make_splits(dataset, official), official)
    # The shared README: 18 train images duplicate other train images, 8 train images reappear in val.
    assert prepared.duplicates["crossing_splits"] == 8  # the published split is kept and the overlap reported
    assert prepared.duplicates["crossing_folds"] == 0
    assert prepared.duplicates["groups"] >= 8 + 9
    assert any("exact-duplicate images" in note for note in prepared.notes)
    stratified = RunConfig(split={"use_official": False, "folds": 5})
    prepared = pipeline.make_folds(dataset, pipeline.make_splits(dataset, stratified), stratified)
    assert prepared.duplicates["crossing_splits"] == 0 and prepared.duplicates["crossing_folds"] == 0
