import json

import numpy as np
import pytest

from medstack.storage import FoldCache, FoldResult, atomic_directory, atomic_write_json, atomic_write_text


def _result(key="k1") -> FoldResult:
    return FoldResult(
        strategy="smote",
        fold=1,
        cache_key=key,
        oof_index=np.array([3, 5]),
        oof_proba=np.array([[0.2, 0.8], [0.6, 0.4]]),
        val_proba=np.array([[0.5, 0.5]]),
        test_proba=np.array([[0.1, 0.9]]),
        history={"loss": [1.0, 0.5]},
        info={"epochs_run": 2},
    )


def _fake_model(path):
    path.write_bytes(b"model")


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "m.json"
    atomic_write_json(target, {"x": np.float32(1.5), "arr": np.arange(2)})
    atomic_write_text(target, '{"x": 2}')
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_atomic_directory_removes_everything_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "run") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash mid-run")
    assert list(tmp_path.iterdir()) == []


def test_cache_round_trip(tmp_path):
    cache = FoldCache(tmp_path)
    assert cache.load("k1") is None
    saved = cache.save(_result(), _fake_model)
    loaded = cache.load("k1")
    assert loaded.from_cache and not saved.from_cache
    assert np.array_equal(loaded.oof_proba, saved.oof_proba) and loaded.history == {"loss": [1.0, 0.5]}
    assert loaded.model_path.endswith("model.keras")


@pytest.mark.parametrize("damage", ["truncate_npz", "drop_model", "wrong_format", "bad_json"])
def test_broken_cache_entry_is_discarded_with_a_warning(tmp_path, caplog, damage):
    cache = FoldCache(tmp_path)
    cache.save(_result(), _fake_model)
    entry = cache.entry("k1")
    if damage == "truncate_npz":
        data = (entry / "predictions.npz").read_bytes()
        (entry / "predictions.npz").write_bytes(data[: len(data) // 2])
    elif damage == "drop_model":
        (entry / "model.keras").unlink()
    elif damage == "wrong_format":
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**meta, "format": 999}))
    else:
        (entry / "meta.json").write_text("{not json")
    assert cache.load("k1") is None
    assert "discarding broken cache entry" in caplog.text
    assert not entry.exists()


def test_failed_model_write_leaves_no_entry(tmp_path):
    cache = FoldCache(tmp_path)

    def explode(path):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.save(_result(), explode)
    assert cache.load("k1") is None
    assert list((tmp_path / "folds").iterdir()) == []
