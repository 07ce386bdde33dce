"""Tests for medstack.models.smote: the same samples as imbalanced-learn's SMOTE, in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from imblearn.over_sampling import SMOTE

from medstack.models.smote import smote_resample


def _imblearn_smote(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What medstack did before: imbalanced-learn on float32 flattened pixels, rounded back to uint8."""
    x_res, y_res = SMOTE(k_neighbors=k, random_state=seed).fit_resample(x.reshape(len(x), -1).astype(np.float32), y)
    return np.clip(np.rint(x_res), 0, 255).astype(np.uint8).reshape((-1,) + x.shape[1:]), y_res


def _data(counts: tuple[int, ...], shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(c, label) for label, c in enumerate(counts)])
    return rng.integers(0, 256, (len(y),) + shape, dtype=np.uint8), rng.permutation(y)


@pytest.mark.parametrize(("counts", "shape", "k", "chunk_bytes"), [
    ((40, 8), (6, 6, 1), 3, 1 << 26),  # binary, everything in one chunk
    ((40, 8), (6, 6, 1), 3, 1),  # one synthetic row per chunk
    ((50, 12, 7), (5, 4, 3), 5, 500),  # two minority classes: a fresh random stream each, as in imbalanced-learn
    ((23, 3), (6, 6, 1), 2, 100),  # k already lowered to the smallest class
    ((30, 30, 9), (4, 4, 3), 2, 1000),  # a tie for the majority
])
@pytest.mark.parametrize("seed", [0, 11])
def test_samples_equal_imbalanced_learns_smote_exactly(counts, shape, k, chunk_bytes, seed):
    x, y = _data(counts, shape)
    expected_x, expected_y = _imblearn_smote(x, y, k, seed)
    x_res, y_res, source_rows, _ = smote_resample(x, y, k, seed, chunk_bytes=chunk_bytes)
    assert x_res.dtype == np.uint8 and y_res.dtype == np.int64
    assert np.array_equal(x_res, expected_x) and np.array_equal(y_res, expected_y)
    assert np.array_equal(source_rows, np.r_[np.arange(len(x)), np.full(len(x_res) - len(x), -1)])


def test_another_seed_gives_other_samples_and_the_same_seed_the_same():
    x, y = _data((60, 15), (8, 8, 3))
    a, b, c = (smote_resample(x, y, 5, seed)[0] for seed in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a[:75], x) and np.array_equal(c[:75], x)


def test_working_memory_is_the_output_plus_one_float32_copy_of_the_minority_class():
    # 600 images of 32x32x3, a quarter of them the minority: 300 synthetic rows to make.
    x, y = _data((450, 150), (32, 32, 3))
    minority_bytes = 150 * x[0].nbytes
    tracemalloc.start()
    try:
        x_res, *_ = smote_resample(x, y, 5, seed=1, chunk_bytes=1 << 18)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(x_res) == 900
    # The result (1.5x the input) and the minority class as float32 (4 bytes a pixel), plus chunks of 256 KiB and
    # small index arrays; imbalanced-learn on the same input peaks at 18x the input.
    assert peak < x_res.nbytes + 4 * minority_bytes + 4 * (1 << 18) + (1 << 20)
    assert peak < 4 * x.nbytes  # less than one float32 copy of the training set


@pytest.mark.parametrize(("x", "y", "kwargs", "match"), [
    (np.zeros((4, 3, 3), np.float32), np.array([0, 0, 1, 1]), {}, r"expects uint8 images .* got float32 \(4, 3, 3\)"),
    (np.zeros((4, 3, 3), np.uint8), np.array([0, 1, 1]), {}, r"and 3 labels"),
    (np.zeros((4, 3, 3), np.uint8), np.array([0, 0, 1, 1]), {"chunk_bytes": 0}, "chunk_bytes must be positive"),
])
def test_bad_input_is_an_error_naming_it(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        smote_resample(x, y, 1, seed=0, **kwargs)
