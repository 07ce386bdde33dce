"""The prepared dataset stored once under the cache and passed to tasks by reference (medstack.pipeline.store)."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from medstack.config import RunConfig
from medstack.data import Dataset
from medstack.pipeline import StoreError, open_prepared, prepare_folds, split_rows, store_prepared


def _prepared(n: int, side: int = 28, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    images = rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8)
    dataset = Dataset(name="synthetic", images=images, labels=labels, class_names=("normal", "rare"),
                      official_split=None, sources=None)
    cfg = RunConfig.model_validate({"split": {"folds": 3, "seed": 1}})
    return prepare_folds(dataset, split_rows(dataset, cfg), cfg), cfg


def _folder(prepared) -> Path:
    return Path(prepared.store)


def test_stored_dataset_is_the_same_data_memory_mapped_read_only(tmp_path):
    prepared, _ = _prepared(300)
    stored = store_prepared(prepared, tmp_path)
    assert stored.store == str(tmp_path.resolve() / "data" / prepared.fingerprint)
    assert isinstance(stored.images, np.memmap) and not stored.images.flags.writeable
    for name in ("images", "train_idx", "val_idx", "test_idx", "fold_of", "y_train", "y_val"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(prepared, name))
    np.testing.assert_array_equal(stored.test_labels.reveal(), prepared.test_labels.reveal())
    for field in ("name", "class_names", "counts", "fingerprint", "positive_class", "duplicates", "grouping", "notes"):
        assert getattr(stored, field) == getattr(prepared, field), field
    for fold in range(prepared.n_folds):
        a, b = prepared.fold_data(fold), stored.fold_data(fold)
        for name in ("x_train", "y_train", "x_holdout", "holdout_rows", "x_val", "y_val", "x_test"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match="read-only"):
        stored.images[0, 0, 0, 0] = 1
    with pytest.raises(TypeError, match="sealed"):
        np.asarray(stored.test_labels)


def test_a_dataset_is_written_once_and_reused_by_later_runs(tmp_path):
    prepared, _ = _prepared(200)
    first = store_prepared(prepared, tmp_path)
    stamp = {p.name: p.stat().st_mtime_ns for p in _folder(first).iterdir()}
    again = store_prepared(prepared, tmp_path)
    assert again.store == first.store
    assert {p.name: p.stat().st_mtime_ns for p in _folder(again).iterdir()} == stamp
    other = store_prepared(_prepared(200, seed=1)[0], tmp_path)
    assert other.store != first.store  # content-addressed: other pixels, other folder
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted([_folder(first).name, _folder(other).name])


def test_pickling_a_stored_dataset_carries_its_path_not_its_pixels(tmp_path):
    """What every task submission serialises (processes and Dask runners cloudpickle the parameters): at 2,000 and
    at 20,000 images of 64x64 the stored dataset pickles to the same few hundred bytes, the in-memory one to more
    than its pixels; the whole training-task parameter set stays under 1 MB whatever the dataset size."""
    sizes = {}
    for n in (2_000, 20_000):
        prepared, cfg = _prepared(n, side=64)
        stored = store_prepared(prepared, tmp_path)
        params = {"prepared": stored, "cfg": cfg, "strategy": "smote", "fold": 0}
        sizes[n] = len(cloudpickle.dumps(params))
        assert sizes[n] < 1_000_000
        assert len(cloudpickle.dumps(prepared)) > prepared.images.nbytes
        back = pickle.loads(pickle.dumps(stored))
        assert back.store == stored.store and isinstance(back.images, np.memmap)
        np.testing.assert_array_equal(back.fold_data(1).x_train, prepared.fold_data(1).x_train)
    assert abs(sizes[20_000] - sizes[2_000]) < 200  # the same path-sized payload (only the fingerprint differs)


def test_unstored_dataset_still_pickles_whole():
    prepared, _ = _prepared(60)
    back = pickle.loads(pickle.dumps(prepared))
    assert type(back) is type(prepared) and not isinstance(back.images, np.memmap)
    np.testing.assert_array_equal(back.images, prepared.images)


def test_a_missing_or_mismatched_store_is_a_clear_error(tmp_path):
    prepared, _ = _prepared(120)
    stored = store_prepared(prepared, tmp_path)
    with pytest.raises(StoreError, match="same path"):
        open_prepared(tmp_path / "data" / "0123456789abcdef")
    meta = _folder(stored) / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "feedfacefeedface"}))
    with pytest.raises(StoreError, match="does not match its folder"):
        open_prepared(_folder(stored))
    with pytest.raises(ValueError, match="lowercase hex"):
        store_prepared(dataclasses.replace(prepared, fingerprint="../x"), tmp_path)


def test_an_interrupted_write_leaves_no_half_written_store(tmp_path, monkeypatch):
    """A failure while writing (disk full, a kill) leaves no folder that a later run would trust."""
    prepared, _ = _prepared(120)
    real_save = np.save

    def failing_save(path, arr, **kwargs):
        if str(path).endswith("fold_of.npy"):
            raise OSError(28, "No space left on device")
        return real_save(path, arr, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        store_prepared(prepared, tmp_path)
    assert list((tmp_path / "data").iterdir()) == []
    monkeypatch.undo()
    assert store_prepared(prepared, tmp_path).fold_data(0).x_train.shape[0] > 0
