"""Fast unit tests of the bundle's plain parts: the JSON meta-model, training statistics, drift checks."""

from __future__ import annotations

import numpy as np
import pytest

from medstack.inference.stacking import JsonStacking
from medstack.inference.stats import pixel_warnings, source_warnings, training_statistics
from medstack.models.ensemble import StackingMetaModel


def _fitted_meta(rng, num_classes: int, features: str) -> tuple[StackingMetaModel, dict[str, list[np.ndarray]]]:
    n, members = 300, ["a", "b", "c"]
    y = np.arange(n) % num_classes
    oof = {m: rng.dirichlet(np.ones(num_classes), size=n) for m in members}
    meta = StackingMetaModel([0.1, 1.0], inner_folds=3, features=features).fit(oof, y)
    folds = {m: [rng.dirichlet(np.ones(num_classes), size=50) for _ in range(2)] for m in members}
    for k in range(2):  # saturated rows too: log-odds clip them
        folds["a"][k][:3] = np.eye(num_classes)[[0, 1, num_classes - 1]]
    return meta, folds


@pytest.mark.parametrize("features", ["log_odds", "probabilities"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_json_meta_model_equals_the_fitted_one_per_fold(rng, num_classes, features):
    meta, folds = _fitted_meta(rng, num_classes, features)
    spec = JsonStacking.from_meta_model(meta).to_json()
    assert spec["inputs"] == features
    rebuilt = JsonStacking.from_json(spec)  # from plain JSON numbers only
    np.testing.assert_allclose(rebuilt.predict_proba_per_fold(folds), meta.predict_proba_per_fold(folds), atol=1e-12)


@pytest.mark.parametrize("features", ["log_odds", "probabilities"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_fused_stacking_head_equals_the_json_meta_model(rng, num_classes, features):
    """The exported Keras head computes what the NumPy path computes, saturated probabilities included."""
    import keras

    from medstack.inference.fused import StackingHead

    meta, folds = _fitted_meta(rng, num_classes, features)
    stack = JsonStacking.from_meta_model(meta)
    head = StackingHead(stack.coef.tolist(), stack.intercept.tolist(), num_classes, stack.inputs)
    head = keras.layers.deserialize(keras.layers.serialize(head))  # its config carries the inputs it reads
    for k in range(2):
        got = keras.ops.convert_to_numpy(head([folds[m][k].astype(np.float32) for m in stack.features]))
        np.testing.assert_allclose(got, stack.predict_proba({m: folds[m][k] for m in stack.features}), atol=2e-5)


def test_json_meta_model_of_schema_1_stacks_probabilities(rng):
    meta, folds = _fitted_meta(rng, 2, "probabilities")
    spec = JsonStacking.from_meta_model(meta).to_json()
    del spec["inputs"]  # schema-1 bundles name no inputs
    old = JsonStacking.from_json(spec)
    assert old.inputs == "probabilities"
    np.testing.assert_allclose(old.predict_proba_per_fold(folds), meta.predict_proba_per_fold(folds), atol=1e-12)
    with pytest.raises(ValueError, match="inputs must be one of"):
        JsonStacking.from_json({**spec, "inputs": "logits"})


def test_json_meta_model_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not fit 2 members and 2 classes"):
        JsonStacking.from_json({"kind": "logistic_regression", "features": ["a", "b"], "coef": [[1.0, 2.0, 3.0]],
                                "intercept": [0.0], "classes": [0, 1]})


def test_training_statistics_in_chunks_equal_the_whole(rng):
    x = rng.integers(0, 256, (2500, 6, 5, 3), dtype=np.uint8)
    stats = training_statistics(x, chunk=333)
    f = x.astype(np.float64)
    np.testing.assert_allclose(stats["pixel_mean"], f.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(stats["pixel_std"], f.std(axis=(0, 1, 2)), atol=1e-3)
    assert stats["shape"] == [6, 5, 3] and stats["n_images"] == 2500


def test_drift_checks_name_what_they_saw(rng):
    train = rng.integers(60, 200, (500, 28, 28, 1), dtype=np.uint8)
    stats = training_statistics(train)
    odd = np.stack([train[0], np.zeros((28, 28, 1), np.uint8), np.full((28, 28, 1), 250, np.uint8)])
    kinds = [[k for k, _ in found] for found in pixel_warnings(odd, stats)]
    assert kinds == [[], ["uniform", "brightness"], ["uniform", "brightness"]]
    assert [k for k, _ in source_warnings("RGB", (28, 28), True, stats)] == ["colour"]
    assert [k for k, _ in source_warnings("RGB", (28, 28), False, stats)] == []  # grey stored as RGB is fine
    assert [k for k, _ in source_warnings("I;16", (1024, 1024), None, stats)] == ["bit depth", "size"]
