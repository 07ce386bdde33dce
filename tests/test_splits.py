from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medstack.config import SplitConfig, SubsetConfig
from medstack.splits import (
    SplitError,
    assign_folds,
    assign_group_folds,
    crossing_groups,
    describe_duplicates,
    describe_groups,
    find_duplicate_groups,
    merge_groups,
    split_group_indices,
    split_indices,
    subsample_splits,
)


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_splits_are_disjoint_complete_and_stratified(seed):
    labels = np.array([0] * 300 + [1] * 100 + [2] * 40)
    splits = split_indices(labels, SplitConfig(seed=seed))
    parts = splits.as_dict()
    assert sum(len(p) for p in parts.values()) == len(labels)
    assert len(np.unique(np.concatenate(list(parts.values())))) == len(labels)
    for name, frac in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
        assert len(parts[name]) == pytest.approx(frac * len(labels), abs=2)
        share = np.bincount(labels[parts[name]], minlength=3) / len(parts[name])
        assert share == pytest.approx([300 / 440, 100 / 440, 40 / 440], abs=0.03)


def test_same_seed_same_split_other_seed_other_split():
    labels = np.array([0] * 80 + [1] * 20)
    a, b = split_indices(labels, SplitConfig(seed=5)), split_indices(labels, SplitConfig(seed=5))
    c = split_indices(labels, SplitConfig(seed=6))
    assert np.array_equal(a.test, b.test) and not np.array_equal(a.test, c.test)


def test_official_split_is_used_verbatim():
    official = np.array([0, 0, 0, 1, 2, 0, 2])
    splits = split_indices(np.array([0, 1, 0, 1, 0, 1, 1]), SplitConfig(use_official=True), official)
    assert splits.train.tolist() == [0, 1, 2, 5] and splits.val.tolist() == [3] and splits.test.tolist() == [4, 6]


def test_official_split_missing_is_an_error():
    with pytest.raises(SplitError, match="no official split"):
        split_indices(np.zeros(10, int), SplitConfig(use_official=True), None)


def test_too_few_samples_of_a_class_names_it():
    with pytest.raises(SplitError, match=r"class\(es\) \[1\] have \{1: 2\}"):
        split_indices(np.array([0] * 30 + [1] * 2), SplitConfig())


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_folds_partition_train_and_are_stratified(seed):
    labels = np.array([0] * 200 + [1] * 50)
    train = np.arange(0, 250, 2)  # a subset of rows, as after splitting
    fold_of = assign_folds(labels, train, 5, seed)
    assert sorted(np.unique(fold_of)) == [0, 1, 2, 3, 4]
    for k in range(5):
        held = train[fold_of == k]
        assert np.mean(labels[held] == 1) == pytest.approx(25 / 125, abs=0.05)


def test_more_folds_than_minority_samples_fails_with_counts():
    labels = np.array([0] * 40 + [1] * 3)
    with pytest.raises(SplitError, match=r"need at least 5 each \(all counts: \[40, 3\]\)"):
        assign_folds(labels, np.arange(43), 5, 0)


def test_subsample_keeps_strata_and_limits_size():
    labels = np.array([0] * 600 + [1] * 200)
    splits = split_indices(labels, SplitConfig(seed=0))
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
    plain = split_indices(labels, SplitConfig(seed=seed))
    assert describe_duplicates(groups, labels, plain.as_dict())["crossing"] > 0  # the leak grouping prevents
    splits = split_indices(labels, SplitConfig(seed=seed), groups=groups)
    assert describe_duplicates(groups, labels, splits.as_dict())["crossing"] == 0
    assert sum(map(len, splits.as_dict().values())) == len(labels)
    assert len(splits.test) == pytest.approx(0.1 * len(labels), abs=6)
    fold_of = assign_folds(labels, splits.train, 4, seed, groups=groups)
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
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, official), official)
    # The shared README: 18 train images duplicate other train images, 8 train images reappear in val.
    assert prepared.duplicates["crossing_splits"] == 8  # the published split is kept and the overlap reported
    assert prepared.duplicates["crossing_folds"] == 0
    assert prepared.duplicates["groups"] >= 8 + 9
    assert any("exact-duplicate images" in note for note in prepared.notes)
    stratified = RunConfig(split={"use_official": False, "folds": 5})
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, stratified), stratified)
    assert prepared.duplicates["crossing_splits"] == 0 and prepared.duplicates["crossing_folds"] == 0


# --------------------------------------------------------------------------------------------- patient groups
# Property checks over many seeds on synthetic patients: group sizes 1..24 images, three classes over patients
# 60/30/10, and about 3% of images labelled with another class than their patient's (mixed-class patients).
# Tolerances, measured with margin over these seeds: a split's or fold's class shares within 0.10 (splits) and
# 0.08 (folds) of the overall shares, split sizes within 0.05 of split.fractions.
SPLIT_SHARE_TOL, FOLD_SHARE_TOL, SIZE_TOL = 0.10, 0.08, 0.05


def _patients(seed: int, n_groups: int = 120, mixed: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 25, n_groups)
    labels = np.repeat(rng.choice(3, n_groups, p=[0.6, 0.3, 0.1]), sizes)
    flip = rng.random(len(labels)) < mixed
    labels[flip] = rng.integers(0, 3, flip.sum())
    groups = np.repeat(np.array([f"14-{1000 + 7 * g}AB" for g in range(n_groups)]), sizes)
    order = rng.permutation(len(labels))  # a patient's images are not contiguous rows
    return labels[order].astype(np.int64), groups[order]


def _shares(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.bincount(labels[rows], minlength=3) / len(rows)


def _assert_group_pure(groups: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    """Every group that appears in ``parts`` appears in exactly one of them (checked by brute force)."""
    home: dict[str, str] = {}
    for name, rows in parts.items():
        for g in set(groups[rows].tolist()):
            assert home.setdefault(g, name) == name, f"group {g} in {home[g]} and {name}"
    assert len(crossing_groups(groups, parts)) == 0


@pytest.mark.parametrize("seed", range(25))
def test_group_splits_are_disjoint_covering_group_pure_and_stratified(seed):
    labels, groups = _patients(seed)
    splits = split_group_indices(labels, SplitConfig(seed=seed), groups)
    parts = splits.as_dict()
    everything = np.concatenate(list(parts.values()))
    assert len(everything) == len(labels) and np.array_equal(np.sort(everything), np.arange(len(labels)))
    _assert_group_pure(groups, parts)
    assert set().union(*(set(groups[p].tolist()) for p in parts.values())) == set(groups.tolist())
    for name, fraction in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
        assert abs(len(parts[name]) / len(labels) - fraction) <= SIZE_TOL, name
        assert np.abs(_shares(labels, parts[name]) - _shares(labels, np.arange(len(labels)))).max() <= SPLIT_SHARE_TOL


@pytest.mark.parametrize("seed", range(25))
def test_group_folds_partition_train_and_are_group_pure_and_stratified(seed):
    labels, groups = _patients(seed)
    splits = split_group_indices(labels, SplitConfig(seed=seed), groups)
    fold_of = assign_group_folds(labels, splits.train, 5, seed, groups)
    assert fold_of.shape == splits.train.shape and sorted(np.unique(fold_of)) == [0, 1, 2, 3, 4]
    folds = {str(k): splits.train[fold_of == k] for k in range(5)}
    _assert_group_pure(groups, folds)
    _assert_group_pure(groups, {**splits.as_dict(), **folds, "train": np.array([], dtype=np.int64)})
    for rows in folds.values():
        assert np.abs(_shares(labels, rows) - _shares(labels, splits.train)).max() <= FOLD_SHARE_TOL


def test_group_splits_are_reproducible_and_the_seed_matters():
    labels, groups = _patients(0)
    a, b = (split_group_indices(labels, SplitConfig(seed=5), groups) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))
    tests = {tuple(split_group_indices(labels, SplitConfig(seed=s), groups).test) for s in range(8)}
    assert len(tests) > 1


def test_image_level_split_leaks_patients_that_the_group_split_keeps_whole():
    labels, groups = _patients(1)
    leaky = split_indices(labels, SplitConfig(seed=1))
    assert len(crossing_groups(groups, leaky.as_dict())) > 50  # most patients straddle train/val/test
    assert len(crossing_groups(groups, split_group_indices(labels, SplitConfig(seed=1), groups).as_dict())) == 0


def test_group_split_with_custom_fractions():
    labels, groups = _patients(3, n_groups=200)
    splits = split_group_indices(labels, SplitConfig(fractions=(0.6, 0.2, 0.2), seed=3), groups)
    for name, fraction in zip(("train", "val", "test"), (0.6, 0.2, 0.2)):
        assert abs(len(splits.as_dict()[name]) / len(labels) - fraction) <= SIZE_TOL
    _assert_group_pure(groups, splits.as_dict())


def test_group_split_uses_the_official_split_verbatim():
    official = np.array([0, 0, 0, 1, 2, 0, 2])
    splits = split_group_indices(np.array([0, 1, 0, 1, 0, 1, 1]), SplitConfig(use_official=True), np.arange(7), official)
    assert splits.train.tolist() == [0, 1, 2, 5] and splits.test.tolist() == [4, 6]


def test_merge_groups_joins_patients_linked_by_a_duplicate():
    patients = np.array(["a", "a", "b", "b", "c", "d", "d", "e"])
    duplicates = np.array([0, 1, 2, 1, 4, 5, 6, 5])  # row 3 (patient b) copies row 1 (a); row 7 (e) copies row 5 (d)
    merged = merge_groups(patients, duplicates)
    assert merged.tolist() == [0, 0, 0, 0, 4, 5, 5, 5]  # ids are each merged group's first row
    assert merge_groups(patients).tolist() == [0, 0, 2, 2, 4, 5, 5, 7]


def test_describe_groups_counts_sizes_mixed_labels_and_crossings():
    groups = np.array(["p1", "p1", "p1", "p2", "p3", "p3"])
    labels = np.array([0, 0, 1, 1, 0, 0])
    summary = describe_groups(groups, labels, {"train": np.array([0, 1, 3]), "test": np.array([2, 4, 5])})
    assert summary == {"groups": 3, "images_per_group": {"min": 1, "median": 2.0, "max": 3}, "mixed_labels": 1,
                       "crossing": 1}
    assert crossing_groups(groups, {"train": np.array([0, 1, 3]), "test": np.array([2, 4, 5])}).tolist() == ["p1"]


def test_too_few_groups_of_a_class_to_split_names_the_class_and_its_group_counts():
    labels = np.array([0] * 40 + [1] * 30)
    groups = np.concatenate([np.arange(40) // 2, 100 + np.arange(30) // 15])  # class 1: 30 images, 2 patients
    with pytest.raises(SplitError, match=r"class\(es\) \[1\] have images of only \{1: 2\} groups, need at least 3 "
                                         r"groups each \(groups per class: \{0: 20, 1: 2\}\)"):
        split_group_indices(labels, SplitConfig(), groups)


@pytest.mark.parametrize("class0_groups, match", [
    (7, r"cannot carve a test split holding every class: none of the 10 group folds .*"
        r"\(groups per class: \{0: 7, 1: 3\}\)"),
    (3, r"cannot carve the test split \(about 1/10 of the rows\) from 6 groups; need at least 10 "
        r"\(groups per class: \{0: 3, 1: 3\}\)"),
])
def test_too_few_groups_for_a_test_fold_holding_every_class_is_a_clear_error(class0_groups, match):
    labels = np.array([0] * (10 * class0_groups) + [1] * 9)
    groups = np.concatenate([np.arange(10 * class0_groups) // 10, 100 + np.arange(9) // 3])  # class 1: 3 patients
    with pytest.raises(SplitError, match=match):
        split_group_indices(labels, SplitConfig(fractions=(0.8, 0.1, 0.1)), groups)


def test_more_folds_than_groups_of_a_class_names_the_class():
    labels = np.array([0] * 40 + [1] * 40)
    groups = np.concatenate([np.arange(40) // 2, 100 + np.arange(40) // 10])  # class 1: 4 patients
    with pytest.raises(SplitError, match=r"train split \(folds\): class\(es\) \[1\] have images of only \{1: 4\} "
                                         r"groups, need at least 5"):
        assign_group_folds(labels, np.arange(80), 5, 0, groups)


# --------------------------------------------------------------------------------------------- groups, pipeline


def _breakhis_folder(root: Path, rng: np.random.Generator, patients: tuple[int, int] = (10, 14)) -> None:
    """Tiny random 6x6 PNGs named like BreakHis: 2-5 sequence numbers x 2 magnifications per patient."""
    for cls, code, n in (("benign", "B", patients[0]), ("malignant", "M", patients[1])):
        for p in range(n):
            patient = f"14-{100 + p}{'AB' if p % 3 == 0 else ''}{code}"
            for seq in range(int(rng.integers(2, 6))):
                for mag in (40, 100):
                    name = f"SOB_{code}_TA-{patient}-{mag}-{seq:03d}.png"
                    path = root / cls / f"SOB_{code}_TA_{patient}" / f"{mag}X" / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(path)


def _patient_of(source: str) -> str:
    """An independent parse of the BreakHis name: SOB_B_TA-14-100AB-40-001.png -> 14-100AB."""
    return "-".join(Path(source).stem.split("-")[1:3])


def test_breakhis_folder_through_load_split_and_fold_keeps_every_patient_whole(tmp_path, rng):
    from medstack import pipeline
    from medstack.config import RunConfig
    from medstack.data import read_dataset

    _breakhis_folder(tmp_path / "breast", rng)
    # Patient 14-101B's first image copied under patient 14-102B: the duplicate joins the two patients.
    (tmp_path / "breast/benign/SOB_B_TA_14-102B/40X/SOB_B_TA-14-102B-40-009.png").write_bytes(
        (tmp_path / "breast/benign/SOB_B_TA_14-101B/40X/SOB_B_TA-14-101B-40-000.png").read_bytes())
    # Patient 14-104B (benign) also has a malignant image: allowed, and reported.
    mixed = tmp_path / "breast/malignant/SOB_M_DC-14-104B-400-001.png"
    Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(mixed)
    tree = {"data": {"source": "folder", "path": str(tmp_path / "breast"), "image_size": [6, 6], "channels": 1,
                     "group_by": {"kind": "breakhis"}},
            "split": {"folds": 3, "fractions": [0.6, 0.2, 0.2]}}
    dataset = read_dataset(RunConfig.model_validate(tree).data)
    patients = np.array([_patient_of(s) for s in dataset.sources])
    assert patients.tolist() == list(dataset.groups)
    for seed in range(6):
        cfg = RunConfig.model_validate({**tree, "split": {**tree["split"], "seed": seed}})
        splits = pipeline.split_rows(dataset, cfg)
        prepared = pipeline.prepare_folds(dataset, splits, cfg)
        folds = {str(k): splits.train[prepared.fold_of == k] for k in range(3)}
        _assert_group_pure(patients, splits.as_dict())
        _assert_group_pure(patients, folds)
        for parts in (splits.as_dict(), folds):  # the two patients joined by a duplicate share a split and a fold
            holding = [name for name, rows in parts.items() if {"14-101B", "14-102B"} & set(patients[rows].tolist())]
            assert len(holding) <= 1 and (holding or parts is folds)
            if holding:
                assert {"14-101B", "14-102B"} <= set(patients[parts[holding[0]]].tolist())
        assert prepared.grouping["crossing_splits"] == prepared.grouping["crossing_folds"] == 0
    grouping = prepared.grouping
    assert grouping["kind"] == "breakhis" and grouping["groups"] == 24
    assert grouping["merged_by_duplicates"] == 1 and grouping["mixed_class_groups"] == 1
    sizes = np.unique(patients, return_counts=True)[1]
    assert grouping["images_per_group"] == {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                            "max": int(sizes.max())}
    note = next(n for n in prepared.notes if n.startswith("grouping by BreakHis file names"))
    assert "24 groups" in note and "0 cross train/val/test, 0 cross folds" in note
    assert "1 merged with another group through exact-duplicate images" in note and "14-104B (benign+malignant)" in note


def test_grouping_changes_the_fingerprint_and_every_fold_cache_key(tmp_path, rng):
    from medstack import pipeline
    from medstack.config import RunConfig
    from medstack.data import read_dataset

    _breakhis_folder(tmp_path / "breast", rng)
    data = {"source": "folder", "path": str(tmp_path / "breast"), "image_size": [6, 6], "channels": 1}
    prepared = {}
    for kind in ("none", "breakhis", "regex"):
        group_by = {"none": None, "breakhis": {"kind": "breakhis"},
                    "regex": {"kind": "filename_regex", "pattern": r"-(\d+-\d+)"}}[kind]  # drops the AB/B/M suffix
        cfg = RunConfig.model_validate({"data": {**data, "group_by": group_by}, "split": {"folds": 2}})
        dataset = read_dataset(cfg.data)
        prepared[kind] = (pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg), cfg)
    assert prepared["none"][0].grouping["kind"] == "none"
    assert len({p.fingerprint for p, _ in prepared.values()}) == 3
    keys = {pipeline.fold_cache_key(p, cfg, "ldam", 0, "v") for p, cfg in prepared.values()}
    assert len(keys) == 3


def test_official_split_with_groups_keeps_it_and_reports_crossing_patients(tmp_path):
    from medstack import pipeline
    from medstack.config import RunConfig
    from medstack.data import load_npz

    rng = np.random.default_rng(1)
    arrays = {}
    for split, n, first in (("train", 60, 0), ("val", 12, 29), ("test", 12, 40)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 5, 5), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 4 == 0).astype(np.uint8)
        arrays[f"{split}_patient"] = first + np.arange(n) // 2  # val starts at patient 29, also in train
    np.savez(tmp_path / "m.npz", **arrays)
    dataset = load_npz(tmp_path / "m.npz", "m", group_key="patient")
    cfg = RunConfig(data={"source": "npz", "path": str(tmp_path / "m.npz"),
                          "group_by": {"kind": "npz_key", "key": "patient"}},
                    split={"use_official": True, "folds": 3})
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg)
    assert len(prepared.train_idx) + len(prepared.cal_idx) == 60 and len(prepared.val_idx) == 12  # calibration from train
    assert prepared.grouping["crossing_splits"] == 1 and prepared.grouping["crossing_folds"] == 0
    assert "official split is used as published" in prepared.grouping["handling"]


def test_group_by_without_group_ids_in_the_dataset_is_refused():
    from medstack import pipeline
    from medstack.config import RunConfig
    from medstack.data import load_digits_dataset

    cfg = RunConfig(data={"source": "folder", "path": "x", "image_size": [8, 8], "group_by": {"kind": "breakhis"}})
    with pytest.raises(ValueError, match="data.group_by is 'breakhis' but dataset 'digits' has no group ids"):
        pipeline.split_rows(load_digits_dataset(), cfg)


@pytest.mark.parametrize("by_patient", [False, True])
def test_calibration_slice_is_stratified_disjoint_and_keeps_groups_whole(by_patient):
    """conformal.calibration split: a slice of about calibration_share of train, every class in proportion, no
    group (patient or exact duplicate) on both sides, val and test untouched, folds drawn on the rest only."""
    from medstack.splits import carve_calibration

    rng = np.random.default_rng(4)
    labels = (rng.random(2000) < 0.25).astype(np.int64)
    groups = np.arange(2000) // (4 if by_patient else 1)
    groups[10:14] = 10  # a few duplicate-like groups either way
    labels[groups == 10] = labels[10]
    splits = (split_group_indices(labels, SplitConfig(seed=2), groups) if by_patient
              else split_indices(labels, SplitConfig(seed=2), groups=groups))
    carved = carve_calibration(labels, splits, 0.1, 2, groups, by_patient=by_patient)
    assert np.array_equal(carved.val, splits.val) and np.array_equal(carved.test, splits.test)
    assert np.array_equal(np.sort(np.concatenate([carved.train, carved.calibration])), splits.train)
    assert not set(carved.train) & set(carved.calibration)
    assert abs(len(carved.calibration) / len(splits.train) - 0.1) < 0.02
    share = labels[carved.calibration].mean()
    assert abs(share - labels[splits.train].mean()) < 0.03  # stratified
    _assert_group_pure(groups, carved.as_dict())
    fold_of = assign_folds(labels, carved.train, 3, 2, groups)
    assert len(fold_of) == len(carved.train)  # folds cover the rest of train, never the slice
