"""Tests for medstack.data: npz / folder / digits loading, validation messages, fingerprints, downloads."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medstack import data as data_module
from medstack.data import images as images_module
from medstack import storage
from medstack.config import BreakHisGroups, CsvGroups, DataConfig, FilenameRegexGroups
from medstack.data import (
    DataError,
    Dataset,
    KnownDataset,
    assign_groups,
    check_breakhis_classes,
    default_data_dir,
    download_file,
    fetch_known_dataset,
    read_dataset,
    load_digits_dataset,
    load_image_folder,
    load_npz,
)

SHARED_PNEUMONIA = Path(__file__).parents[1].parent / "shared/data/pneumoniamnist.npz"


# --------------------------------------------------------------------------------------------- fixtures


def _medmnist_arrays(rgb: bool = False, counts: tuple[int, int, int] = (6, 3, 3)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        shape = (n, 5, 7, 3) if rgb else (n, 5, 7)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    return arrays


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _save_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _gray(value: int, shape: tuple[int, int] = (12, 10)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def _rgb(value: tuple[int, int, int], shape: tuple[int, int] = (9, 14)) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.uint8), (*shape, 3)).copy()


@pytest.fixture
def breakhis(tmp_path: Path) -> Path:
    """BreakHis-like tree: nested magnification folders, mixed extensions, gray and RGB, junk files."""
    root = tmp_path / "breakhis"
    _save_image(root / "benign/adenosis/40X/b1.png", _rgb((200, 10, 10)))
    _save_image(root / "benign/adenosis/100X/b2.JPG", _gray(90), quality=100)
    _save_image(root / "benign/b0.tif", _gray(30))
    _save_image(root / "malignant/ductal/m1.bmp", _rgb((0, 0, 255)))
    _save_image(root / "malignant/m0.jpeg", _rgb((0, 255, 0)), quality=100)
    (root / "benign/.DS_Store").write_bytes(b"\x00\x01junk")
    (root / "malignant/notes.txt").write_text("not an image")
    (root / "malignant/._m1.png").write_bytes(b"macOS resource fork")  # hidden: ignored
    (root / "README.md").write_text("top-level files are not classes")
    return root


# --------------------------------------------------------------------------------------------- npz


def test_load_npz_medmnist_gray_concatenates_splits(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    ds = load_npz(_save_npz(tmp_path / "m.npz", **arrays), "toy")

    assert ds.images.shape == (12, 5, 7, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (12,)
    assert ds.official_split.dtype == np.int8
    assert np.bincount(ds.official_split).tolist() == [6, 3, 3]
    np.testing.assert_array_equal(ds.images[6:9, ..., 0], arrays["val_images"])
    assert ds.class_names == ("class_0", "class_1") and ds.num_classes == 2
    assert ds.sources is None and ds.skipped == ()


def test_load_npz_rgb_and_known_class_names(tmp_path: Path) -> None:
    ds = load_npz(_save_npz(tmp_path / "m.npz", **_medmnist_arrays(rgb=True)), "PneumoniaMNIST")
    assert ds.images.shape == (12, 5, 7, 3)
    assert ds.class_names == ("normal", "pneumonia")


def test_load_npz_plain_has_no_official_split(tmp_path: Path) -> None:
    path = _save_npz(tmp_path / "p.npz", images=np.zeros((4, 3, 3, 1), np.uint8), labels=np.array([0, 1, 2, 1]))
    ds = load_npz(path, "plain", class_names=["a", "b", "c"])
    assert ds.official_split is None
    assert ds.class_names == ("a", "b", "c")
    assert ds.labels.tolist() == [0, 1, 2, 1]


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.array([0.0, 0.5, 1.0], np.float32), [0, 128, 255]),
        (np.array([0.0, 127.6, 255.0], np.float64), [0, 128, 255]),
        (np.array([0, 256, 65535], np.uint16), [0, 1, 255]),
    ],
    ids=["float-unit", "float-255", "uint16"],
)
def test_load_npz_scales_non_uint8_pixels(tmp_path: Path, pixels: np.ndarray, expected: list[int]) -> None:
    images = np.broadcast_to(pixels, (2, 2, 3)).copy()
    ds = load_npz(_save_npz(tmp_path / "f.npz", images=images, labels=np.array([0, 1])), "f")
    assert ds.images[0, 0, :, 0].tolist() == expected


def _npz_case(name: str) -> dict[str, np.ndarray]:
    arrays = _medmnist_arrays()
    if name == "missing":
        del arrays["val_labels"]
    elif name == "mismatch":
        arrays["test_labels"] = arrays["test_labels"][:2]
    elif name == "rank":
        arrays["train_images"] = arrays["train_images"][:, 0, 0]
    elif name == "float_labels":
        arrays["train_labels"] = arrays["train_labels"].astype(np.float32)
    elif name == "negative":
        arrays["val_labels"] = -arrays["val_labels"].astype(np.int64) - 1
    elif name == "nan":
        images = arrays["test_images"].astype(np.float32)
        images[0, 0, 0] = np.nan
        arrays["test_images"] = images
    elif name == "float_range":
        arrays["train_images"] = arrays["train_images"].astype(np.float32) * 2
    elif name == "shapes":
        arrays["val_images"] = np.zeros((3, 6, 7), np.uint8)
    elif name == "multilabel":
        arrays["train_labels"] = np.zeros((6, 3), np.uint8)
    elif name == "nothing":
        arrays = {"x": np.zeros(3), "y": np.zeros(3)}
    return arrays


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", r"missing keys \['val_labels'\]; the file has \[.*'train_images'"),
        ("nothing", r"missing keys: expected 'images' \+ 'labels'.*the file has \['x', 'y'\]"),
        ("mismatch", r"key 'test_labels' has 2 labels but its images key has 3 images"),
        ("rank", r"key 'train_images' must be \(N, H, W\).*got shape \(6,\)"),
        ("float_labels", r"key 'train_labels' must hold integer class indices, got dtype float32"),
        ("negative", r"key 'val_labels' has negative labels"),
        ("nan", r"key 'test_images' contains 1 NaN/inf"),
        ("float_range", r"key 'train_images' float pixels must lie in \[0, 1\] or \[0, 255\]"),
        ("shapes", r"key 'val_images' has images of shape \(6, 7, 1\)"),
        ("multilabel", r"key 'train_labels'.*multi-label"),
    ],
)
def test_load_npz_errors_name_file_and_key(tmp_path: Path, case: str, match: str) -> None:
    path = _save_npz(tmp_path / "bad.npz", **_npz_case(case))
    with pytest.raises(DataError, match=match) as info:
        load_npz(path, "bad")
    assert str(path) in str(info.value)


def test_load_npz_label_beyond_class_names(tmp_path: Path) -> None:
    path = _save_npz(tmp_path / "p.npz", images=np.zeros((3, 2, 2), np.uint8), labels=np.array([0, 1, 2]))
    with pytest.raises(DataError, match=r"label 2 found but only 2 class names given \['a', 'b'\]"):
        load_npz(path, "p", class_names=("a", "b"))


def test_load_npz_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="npz file not found: .*nope.npz"):
        load_npz(tmp_path / "nope.npz", "x")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: cannot read as npz"):
        load_npz(tmp_path / "junk.npz", "x")


# --------------------------------------------------------------------------------------------- folder


def test_load_image_folder_nested_mixed_extensions(breakhis: Path) -> None:
    ds = load_image_folder(breakhis, (6, 4), channels=3)

    assert ds.class_names == ("benign", "malignant")
    assert ds.images.shape == (5, 6, 4, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    names = [Path(s).relative_to(breakhis).as_posix() for s in ds.sources]
    # sorted by path within each class; junk, hidden and top-level files ignored
    assert names == ["benign/adenosis/100X/b2.JPG", "benign/adenosis/40X/b1.png", "benign/b0.tif",
                     "malignant/ductal/m1.bmp", "malignant/m0.jpeg"]
    assert ds.name == "breakhis" and ds.official_split is None and ds.skipped == ()
    assert ds.images[1, 0, 0].tolist() == [200, 10, 10]
    assert ds.images[2, 0, 0].tolist() == [30, 30, 30]  # gray promoted to RGB


def test_load_image_folder_converts_to_gray(breakhis: Path) -> None:
    ds = load_image_folder(breakhis, (3, 5), channels=1, name="bh")
    assert ds.images.shape == (5, 3, 5, 1) and ds.name == "bh"
    assert ds.images[3, 1, 1, 0] == round(0.114 * 255)  # pure blue through ITU-R 601 luma


def test_load_image_folder_class_names_reorder(breakhis: Path) -> None:
    ds = load_image_folder(breakhis, (4, 4), 3, class_names=["malignant", "benign"])
    assert ds.class_names == ("malignant", "benign")
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(DataError, match=r"class_names \['benign', 'tumour'\] do not match the class folders"):
        load_image_folder(breakhis, (4, 4), 3, class_names=["benign", "tumour"])


def _corrupt_png(path: Path) -> Path:
    _save_image(path, _gray(7, (16, 16)))
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])  # truncated
    return path


def test_load_image_folder_corrupt_image_error_names_file(breakhis: Path) -> None:
    bad = _corrupt_png(breakhis / "malignant/ductal/broken.png")
    with pytest.raises(DataError, match=rf"{bad}: unreadable image .*on_bad_image: skip"):
        load_image_folder(breakhis, (4, 4), 3)


def test_load_image_folder_corrupt_image_skipped(breakhis: Path) -> None:
    bad = _corrupt_png(breakhis / "malignant/ductal/broken.png")
    ds = load_image_folder(breakhis, (4, 4), 3, on_bad_image="skip")
    assert len(ds.images) == len(ds.labels) == len(ds.sources) == 5
    assert str(bad) not in ds.sources
    assert [path for path, _ in ds.skipped] == [str(bad)]
    assert ds.skipped[0][1]  # a reason is recorded


def test_load_image_folder_all_skipped_class_is_error(tmp_path: Path) -> None:
    _save_image(tmp_path / "a/x.png", _gray(1))
    _corrupt_png(tmp_path / "b/y.png")
    with pytest.raises(DataError, match=r"every image of class 'b' was skipped"):
        load_image_folder(tmp_path, (4, 4), 1, on_bad_image="skip")


def test_load_image_folder_16bit_tiff_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    _save_image(tmp_path / "a/x16.tif", values)
    _save_image(tmp_path / "b/y.png", _gray(3, (2, 2)))
    ds = load_image_folder(tmp_path, (2, 2), 1)
    assert ds.images[0, ..., 0].tolist() == [[0, 3], [156, 255]]


def _make_tree(root: Path, layout: str) -> Path:
    if layout == "one_class":
        _save_image(root / "benign/a.png", _gray(1))
    elif layout == "empty_class":
        _save_image(root / "benign/a.png", _gray(1))
        (root / "malignant/sub").mkdir(parents=True)
        (root / "malignant/notes.txt").write_text("x")
    elif layout == "no_classes":
        root.mkdir()
        _save_image(root / "loose.png", _gray(1))
    elif layout == "file":
        root.parent.mkdir(parents=True, exist_ok=True)
        root.write_text("x")
    elif layout == "loop":
        _save_image(root / "benign/a.png", _gray(1))
        _save_image(root / "malignant/b.png", _gray(2))
        os.symlink(root / "malignant", root / "malignant/again")
    elif layout == "duplicate_link":
        _save_image(root / "benign/a.png", _gray(1))
        _save_image(root / "malignant/b.png", _gray(2))
        os.symlink(root / "benign", root / "malignant/benign_link")
    return root


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("missing", r"image folder not found: .*tree"),
        ("file", r"tree: expected a folder with one sub-folder per class, found a file"),
        ("no_classes", r"tree: no class folders"),
        ("one_class", r"tree: only one class folder \('benign'\)"),
        ("empty_class", r"tree/malignant: class 'malignant' has no images"),
        ("loop", r"malignant/again: reached a folder twice via symlinks"),
        ("duplicate_link", r"benign_link: reached a folder twice via symlinks \(also reached as .*tree/benign\)"),
    ],
)
def test_load_image_folder_layout_errors(tmp_path: Path, layout: str, match: str) -> None:
    root = _make_tree(tmp_path / "tree", layout)
    with pytest.raises(DataError, match=match):
        load_image_folder(root, (4, 4), 3)


def test_load_image_folder_rejects_bad_arguments(breakhis: Path) -> None:
    with pytest.raises(DataError, match="channels must be 1, 3 or None"):
        load_image_folder(breakhis, (4, 4), 2)
    with pytest.raises(DataError, match="image_size must be"):
        load_image_folder(breakhis, (0, 4), 3)


# --------------------------------------------------------------------------------------------- digits, Dataset


def test_load_digits_dataset() -> None:
    ds = load_digits_dataset()
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.images.max() == 255 and ds.images.min() == 0
    assert ds.class_names == tuple("0123456789") and ds.official_split is None
    assert np.bincount(ds.labels).min() > 150


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    first = load_npz(_save_npz(tmp_path / "a.npz", **arrays), "a")
    again = load_npz(_save_npz(tmp_path / "b.npz", **arrays), "other-name")
    assert first.fingerprint() == again.fingerprint() == first.fingerprint()
    assert len(first.fingerprint()) == 64

    arrays["test_images"] = arrays["test_images"].copy()
    arrays["test_images"][2, 4, 6] ^= 1
    changed = load_npz(_save_npz(tmp_path / "c.npz", **arrays), "a")
    assert changed.fingerprint() != first.fingerprint()
    renamed = dataclasses.replace(first, class_names=("x", "y"))
    assert renamed.fingerprint() != first.fingerprint()


def test_dataset_arrays_are_read_only() -> None:
    ds = load_digits_dataset()
    with pytest.raises(ValueError, match="read-only"):
        ds.images[0, 0, 0, 0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"images": np.zeros((2, 3, 3), np.uint8)}, "images must be a 4-D uint8 array"),
        ({"images": np.zeros((2, 3, 3, 2), np.uint8)}, "images must have 1 or 3 channels"),
        ({"labels": np.array([0, 1], np.int32)}, r"labels must be int64 of shape \(2,\)"),
        ({"labels": np.array([0, 2])}, r"labels must lie in 0..1"),
        ({"official_split": np.array([0, 3], np.int8)}, "official_split values must be"),
        ({"sources": ("a",)}, "1 sources for 2 images"),
        ({"groups": ("p1",)}, "groups must be a tuple of 2 group ids, got 1"),
        ({"groups": ("p1", "")}, "every group id must be a non-empty string"),
    ],
)
def test_dataset_validates_its_arrays(changes: dict, match: str) -> None:
    fields = dict(name="t", images=np.zeros((2, 3, 3, 1), np.uint8), labels=np.array([0, 1], np.int64),
                  class_names=("a", "b"), official_split=None, sources=None)
    with pytest.raises(DataError, match=match):
        Dataset(**{**fields, **changes})


# --------------------------------------------------------------------------------------------- groups

ROOT = Path("/data/breast")


@pytest.mark.parametrize(("name", "patient"), [
    ("SOB_B_A-14-22549AB-40-001.png", "14-22549AB"),
    ("SOB_M_DC-14-2523-400-012.png", "14-2523"),
    ("SOB_B_PT-14-21998AB-100-005.png", "14-21998AB"),
    ("SOB_M_MC-14-13418DE-200-010.png", "14-13418DE"),
    ("SOB_B_F-14-9133-40-001.png", "14-9133"),
    ("SOB_M_PC-15-190EF-40-001.png", "15-190EF"),
    ("SOB_M_LC-14-12204-40-001.PNG", "14-12204"),  # extension case does not matter
])
def test_breakhis_names_give_the_patient_id(name: str, patient: str) -> None:
    ids, rule = assign_groups(BreakHisGroups(), [ROOT / "malignant" / "SOB" / name], ROOT)
    assert ids == (patient,) and "SOB_<B|M>_<type>-<patient>-<mag>-<seq>.png" in rule


@pytest.mark.parametrize("bad", [
    "SOB_B_A-14-22549AB-40.png",  # no sequence number
    "SOB_X_A-14-22549AB-40-001.png",  # neither B nor M
    "sob_b_a-14-22549AB-40-001.png",  # lower case prefix
    "SOB_B_A_14-22549AB-40-001.png",  # folder-style underscore before the patient
    "SOB_B_A-14-22549AB-40-001.png.bak.png",
    "x-SOB_B_A-14-22549AB-40-001.png",  # the whole name must match
    "image_0001.png",
])
def test_breakhis_bad_names_are_errors_naming_the_file_and_the_pattern(bad: str) -> None:
    files = [ROOT / "benign" / "SOB_B_A-14-22549AB-40-001.png", ROOT / "benign" / bad]
    with pytest.raises(DataError, match=re.escape(f"{ROOT / 'benign' / bad}: no group id: {bad!r} does not match "
                                                  "the BreakHis pattern SOB_<B|M>_<type>-<patient>-<mag>-<seq>.png")):
        assign_groups(BreakHisGroups(), files, ROOT)


def test_breakhis_error_counts_every_unmatched_file() -> None:
    files = [ROOT / "benign" / f"img{i}.png" for i in range(4)] + [ROOT / "benign" / "SOB_B_A-14-1-40-001.png"]
    with pytest.raises(DataError, match=r"4 of 5 images have no group id, e\.g\. \['img0\.png', 'img1\.png', "
                                        r"'img2\.png'\]"):
        assign_groups(BreakHisGroups(), files, ROOT)


def test_breakhis_class_in_the_name_must_match_the_class_folder() -> None:
    benign = [ROOT / "Benign" / "SOB_B_A-14-1-40-001.png", ROOT / "Benign" / "SOB_M_DC-14-2-40-001.png"]
    malignant = [ROOT / "Malignant" / "SOB_M_DC-14-3-40-001.png", ROOT / "Malignant" / "SOB_B_F-14-4-40-002.png"]
    check_breakhis_classes({"Benign": benign[:1], "Malignant": malignant[:1]})  # consistent: no error
    with pytest.raises(DataError, match=re.escape(f"{benign[1]}: its BreakHis name says malignant but it is in the "
                                                  "class folder 'Benign'; 2 files disagree with their class folder, "
                                                  "e.g. ['SOB_M_DC-14-2-40-001.png', 'SOB_B_F-14-4-40-002.png']")):
        check_breakhis_classes({"Benign": benign, "Malignant": malignant})
    # Tumour-type folders say nothing about B/M placement: nothing to compare, no error.
    check_breakhis_classes({"adenosis": [benign[1]], "ductal_carcinoma": [malignant[1]]})


def test_filename_regex_group_named_or_only_and_on_the_relative_path() -> None:
    files = [ROOT / "benign" / "p12_scan3.png", ROOT / "malignant" / "p7_scan1.png"]
    only = FilenameRegexGroups(pattern=r"^(p\d+)_")
    named = FilenameRegexGroups(pattern=r"(?P<group>p\d+)_scan(\d+)")
    assert assign_groups(only, files, ROOT)[0] == assign_groups(named, files, ROOT)[0] == ("p12", "p7")
    nested = [ROOT / "benign" / "patient-3" / "a.png", ROOT / "malignant" / "patient-9" / "b.png"]
    on_path = FilenameRegexGroups(pattern=r"/(patient-\d+)/", match="relative_path")
    assert assign_groups(on_path, nested, ROOT)[0] == ("patient-3", "patient-9")
    with pytest.raises(DataError, match=r"a\.png: no group id: 'a\.png' does not match the regex '/\(patient"):
        assign_groups(FilenameRegexGroups(pattern=r"/(patient-\d+)/"), nested, ROOT)  # the bare name has no folder


def test_filename_regex_empty_capture_is_no_group_id() -> None:
    with pytest.raises(DataError, match=r"/p_x\.png: no group id"):
        assign_groups(FilenameRegexGroups(pattern=r"^p(\d*)_"), [ROOT / "a" / "p1_x.png", ROOT / "a" / "p_x.png"], ROOT)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_groups_by_relative_path_or_unique_file_name(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    files = [root / "benign" / "a.png", root / "benign" / "sub" / "b.png", root / "malignant" / "c.png"]
    table = _csv(tmp_path / "g.csv", "\ufefffile,patient,site\n./benign/a.png,P1,x\nbenign\\sub\\b.png,P1,x\n"
                                     "c.png,P2,y\n\nother.png,P9,z\n")  # BOM, ./ and \ tolerated; unused row ignored
    spec = CsvGroups(path=str(table), group_column="patient")
    ids, rule = assign_groups(spec, files, root)
    assert ids == ("P1", "P1", "P2") and rule == f"csv {table} (file -> patient)"


@pytest.mark.parametrize(("text", "spec", "match"), [
    ("file,group\nbenign/a.png,P1\n", {}, r"benign/sub/b\.png: not listed in group_by csv .*g\.csv \(column 'file'\)"),
    ("name,group\na.png,P1\n", {}, r"g\.csv: no column\(s\) \['file'\] .*the CSV has columns \['name', 'group'\]"),
    ("file,group\n", {}, r"g\.csv: no rows"),
    ("file,group\nbenign/a.png,P1\nbenign/a.png,P2\n", {}, r"file 'benign/a\.png' is listed with two groups: 'P1' "
                                                           r"\(line 2\) and 'P2' \(line 3\)"),
    ("file,group\nbenign/a.png,\n", {}, r"g\.csv: line 2: empty 'group' for file 'benign/a\.png'"),
    ("file,group\na.png,P1\nb.png,P1\n", {"dup_name": True}, r"file name 'a\.png' matches 2 images"),
])
def test_csv_group_errors_name_the_file_and_the_csv(tmp_path: Path, text: str, spec: dict, match: str) -> None:
    root = tmp_path / "imgs"
    files = [root / "benign" / "a.png", root / "benign" / "sub" / "b.png"]
    if spec.get("dup_name"):
        files.append(root / "malignant" / "a.png")
    with pytest.raises(DataError, match=match):
        assign_groups(CsvGroups(path=str(_csv(tmp_path / "g.csv", text))), files, root)


def test_csv_not_found_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"group_by csv not found: .*nope\.csv"):
        assign_groups(CsvGroups(path=str(tmp_path / "nope.csv")), [tmp_path / "a" / "x.png"], tmp_path)


def _breakhis_tree(root: Path) -> Path:
    for cls, code, patients in (("benign", "B", ("14-100AB", "14-101")), ("malignant", "M", ("14-200", "15-9CD"))):
        for patient in patients:
            for seq in (1, 2):
                _save_image(root / cls / f"SOB_{code}_{code}X_{patient}" / "40X" /
                            f"SOB_{code}_TA-{patient}-40-{seq:03d}.png", _gray(seq * 40 + len(patient)))
    return root


def test_load_image_folder_attaches_group_ids_aligned_with_sources(tmp_path: Path) -> None:
    root = _breakhis_tree(tmp_path / "bh")
    (root / "benign" / "SOB_B_TA-14-100AB-40-009.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # skipped below
    ds = load_image_folder(root, (4, 4), 1, on_bad_image="skip", group_by=BreakHisGroups())
    assert len(ds.groups) == len(ds.sources) == 8 and len(ds.skipped) == 1
    for source, group in zip(ds.sources, ds.groups):
        assert Path(source).name.split("-40-")[0].split("-", 1)[1] == group
    assert ds.grouped_by.startswith("BreakHis file names")
    assert load_image_folder(root, (4, 4), 1, on_bad_image="skip").groups is None


def test_bad_group_name_fails_before_any_image_is_decoded(tmp_path: Path, monkeypatch) -> None:
    root = _breakhis_tree(tmp_path / "bh")
    _save_image(root / "malignant" / "scan.png", _gray(1))
    monkeypatch.setattr(images_module, "decode_image", lambda *a: pytest.fail("decoded before the names were checked"))
    with pytest.raises(DataError, match=r"scan\.png: no group id"):
        read_dataset(DataConfig(source="folder", path=str(root), image_size=(4, 4), group_by={"kind": "breakhis"}))


def test_a_patient_in_two_classes_is_allowed_and_logged(tmp_path: Path, caplog) -> None:
    root = _breakhis_tree(tmp_path / "bh")
    _save_image(root / "malignant" / "SOB_M_DC-14-101-40-001.png", _gray(250))  # benign patient 14-101 again
    ds = load_image_folder(root, (4, 4), 1, group_by=BreakHisGroups())
    assert sorted(set(ds.labels[np.asarray(ds.groups) == "14-101"].tolist())) == [0, 1]
    assert "1 group(s) have images in more than one class" in caplog.text and "14-101" in caplog.text


def test_npz_group_key_plain_and_medmnist(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    plain = _save_npz(tmp_path / "p.npz", images=rng.integers(0, 255, (4, 5, 5), dtype=np.uint8),
                      labels=np.array([0, 1, 0, 1]), patient=np.array(["a", "a", "b", "c"]))
    ds = read_dataset(DataConfig(source="npz", path=str(plain), group_by={"kind": "npz_key", "key": "patient"}))
    assert ds.groups == ("a", "a", "b", "c") and ds.grouped_by == "npz key 'patient'"
    arrays = _medmnist_arrays()
    arrays.update(train_groups=np.arange(6) // 2, val_groups=np.array([[7], [7], [8]]), test_groups=np.arange(3) + 9)
    medmnist = load_npz(_save_npz(tmp_path / "m.npz", **arrays), "m", group_key="groups")
    assert medmnist.groups == ("0", "0", "1", "1", "2", "2", "7", "7", "8", "9", "10", "11")


@pytest.mark.parametrize(("groups", "match"), [
    ({}, r"missing group key\(s\) \['groups'\] \(data.group_by: npz_key"),
    ({"groups": np.arange(3)}, r"key 'groups' must hold one group id per image \(4,\), got shape \(3,\)"),
    ({"groups": np.linspace(0, 1, 4)}, "must hold integer or string group ids, got dtype float64"),
    ({"groups": np.array(["a", " ", "b", "c"])}, "1 empty group id"),
])
def test_npz_group_key_errors(tmp_path: Path, groups: dict, match: str) -> None:
    path = _save_npz(tmp_path / "p.npz", images=np.zeros((4, 5, 5), np.uint8), labels=np.array([0, 1, 0, 1]), **groups)
    with pytest.raises(DataError, match=match):
        load_npz(path, "p", group_key="groups")


def test_fingerprint_follows_the_grouping_partition_not_the_group_names() -> None:
    fields = dict(name="t", images=np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1), labels=np.array([0, 1, 0, 1]),
                  class_names=("a", "b"), official_split=None, sources=None)
    plain = Dataset(**fields)
    by_patient = Dataset(**fields, groups=("p1", "p1", "p2", "p3"))
    renamed = Dataset(**fields, groups=("x", "x", "y", "z"))
    regrouped = Dataset(**fields, groups=("p1", "p2", "p2", "p3"))
    singletons = Dataset(**fields, groups=("p1", "p2", "p3", "p4"))
    assert by_patient.fingerprint() == renamed.fingerprint()
    assert len({plain.fingerprint(), by_patient.fingerprint(), regrouped.fingerprint(), singletons.fingerprint()}) == 4


# --------------------------------------------------------------------------------------------- downloads


class _Server:
    """A loopback HTTP server over a folder that counts the requests it answers."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path):
    """(server, md5) serving a small MedMNIST-style npz as /toy.npz."""
    folder = tmp_path / "www"
    folder.mkdir()
    path = _save_npz(folder / "toy.npz", **_medmnist_arrays())
    server = _Server(folder)
    yield server, hashlib.md5(path.read_bytes()).hexdigest()
    server.close()


def test_download_file_success(served, tmp_path: Path) -> None:
    server, md5 = served
    dest = download_file(server.url("toy.npz"), tmp_path / "cache/sub/toy.npz", md5)
    assert dest.is_file() and hashlib.md5(dest.read_bytes()).hexdigest() == md5
    assert sorted(p.name for p in dest.parent.iterdir()) == ["toy.npz"]


def test_download_file_md5_mismatch_leaves_nothing(served, tmp_path: Path) -> None:
    server, md5 = served
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"md5 mismatch, expected {'0' * 32}, got {md5}"):
        download_file(server.url("toy.npz"), cache / "toy.npz", "0" * 32)
    assert list(cache.iterdir()) == []


def test_download_file_http_error_leaves_nothing(served, tmp_path: Path) -> None:
    server, md5 = served
    with pytest.raises(OSError, match=r"download of http://127.0.0.1:\d+/missing.npz failed"):
        download_file(server.url("missing.npz"), tmp_path / "toy.npz", md5)
    assert list(tmp_path.glob("*toy.npz*")) == []


def test_download_file_sweeps_what_a_killed_download_left(served, tmp_path: Path) -> None:
    server, md5 = served
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a finished process: its pid is free, as after a SIGKILL
    leftover = cache / f".toy.npz.{storage._host_tag()}-{dead.pid}-abc123.tmp"
    leftover.write_bytes(b"half a download")
    running = cache / f"{storage.temporary_prefix('toy.npz')}xyz789.tmp"  # this process: alive, kept
    running.write_bytes(b"in progress")
    download_file(server.url("toy.npz"), cache / "toy.npz", md5)
    assert sorted(p.name for p in cache.iterdir()) == sorted([running.name, "toy.npz"])


def test_fetch_known_dataset_downloads_once(served, tmp_path: Path) -> None:
    server, md5 = served
    first = fetch_known_dataset("toy", tmp_path, url=server.url("toy.npz"), md5=md5)
    assert first == tmp_path / "toy.npz" and len(server.requests) == 1
    second = fetch_known_dataset("toy", tmp_path, url=server.url("toy.npz"), md5=md5)
    assert second == first and len(server.requests) == 1  # good existing file: no request

    first.write_bytes(b"corrupted")
    fetch_known_dataset("toy", tmp_path, url=server.url("toy.npz"), md5=md5)
    assert len(server.requests) == 2 and hashlib.md5(first.read_bytes()).hexdigest() == md5


def test_fetch_known_dataset_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'chestmnist'; downloadable: \['pneumoniamnist'\]"):
        fetch_known_dataset("chestmnist", tmp_path)


def test_default_data_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSTACK_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("MEDSTACK_DATA_DIR")
    assert default_data_dir().name == "medstack"


# --------------------------------------------------------------------------------------------- read_dataset


def test_load_dataset_dispatches(tmp_path: Path, breakhis: Path) -> None:
    npz = _save_npz(tmp_path / "m.npz", **_medmnist_arrays())
    from_npz = read_dataset(DataConfig(source="npz", name="toy", path=str(npz), image_size=(64, 64)))
    assert from_npz.images.shape[1:] == (5, 7, 1)  # image_size is not applied to npz at load time

    from_folder = read_dataset(DataConfig(source="folder", name="bh", path=str(breakhis), image_size=(8, 6)))
    assert from_folder.images.shape == (5, 8, 6, 3) and from_folder.name == "bh"

    digits = read_dataset(DataConfig(source="digits", name="digits"))
    assert digits.num_classes == 10

    with pytest.raises(DataError, match=r"data.path is not set and data.name 'mystery'"):
        read_dataset(DataConfig(source="npz", name="mystery"))


def test_load_dataset_downloads_known_name(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, md5 = served
    entry = KnownDataset(url=server.url("toy.npz"), md5=md5, class_names=("normal", "pneumonia"),
                         filename="pneumoniamnist.npz")
    monkeypatch.setitem(data_module.KNOWN_DATASETS, "pneumoniamnist", entry)
    monkeypatch.setenv("MEDSTACK_DATA_DIR", str(tmp_path / "cache"))
    ds = read_dataset(DataConfig(source="npz", name="pneumoniamnist"))
    assert (tmp_path / "cache/pneumoniamnist.npz").is_file()
    assert ds.class_names == ("normal", "pneumonia") and len(ds.labels) == 12


@pytest.mark.skipif(not SHARED_PNEUMONIA.is_file(), reason=f"shared dataset not present at {SHARED_PNEUMONIA}")
def test_shared_pneumoniamnist_official_split() -> None:
    ds = load_npz(SHARED_PNEUMONIA, "pneumoniamnist")
    assert ds.images.shape[1:] == (28, 28, 1)
    assert np.bincount(ds.official_split).tolist() == [4708, 524, 624]
    assert ds.class_names == ("normal", "pneumonia")
    assert np.bincount(ds.labels[ds.official_split == 0]).tolist() == [1214, 3494]


@pytest.mark.parametrize(
    "name, class_names, labels, message",
    [
        # The case: a two-class dataset's labels stored as 5/6 (not a seven-class problem).
        ("pneumoniamnist", None, [5, 6, 5, 6], r"labels \(with counts\) \{5: 2, 6: 2\} found, but data.name "
         r"'pneumoniamnist' has 2 classes \['normal', 'pneumonia'\] \(labels 0\.\.1\)"),
        ("toy", None, [5, 6, 5, 6], r"class\(es\) 0 \('class_0'\), 1 .* of labels 0\.\.6 have no images; labels "
         r"found \(with counts\): \{5: 2, 6: 2\}.*remap them \(e\.g\. \{5: 0, 6: 1\}\)"),
        ("toy", None, [1, 2, 1, 2], r"class\(es\) 0 \('class_0'\) of labels 0\.\.2 have no images"),
        ("toy", ["a", "b", "c"], [0, 1, 0, 1], r"class\(es\) 2 \('c'\) of data.class_names \['a', 'b', 'c'\] have "
         r"no images"),
        ("toy", ["a", "b"], [0, 0, 0, 0], r"every image has label 0 \('a'\); a classifier needs at least two"),
        ("toy", ["a", "b"], [0, 1, 2, 1], r"label 2 found but only 2 class names given \['a', 'b'\]: labels must be "
         r"class indices 0\.\.1; labels found \(with counts\): \{0: 1, 1: 2, 2: 1\}"),
    ],
)
def test_labels_are_checked_against_the_classes_at_load_time(tmp_path, name, class_names, labels, message):
    path = _save_npz(tmp_path / "l.npz", images=np.zeros((4, 3, 3), np.uint8), labels=np.array(labels))
    with pytest.raises(DataError, match=message) as info:
        load_npz(path, name, class_names)
    assert str(path) in str(info.value)
