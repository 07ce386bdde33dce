import numpy as np
import pytest

from medstack.models.losses import LDAMLoss
from medstack.config import LDAMParams, NoParams, SmoteParams
from medstack.models.strategies import STRATEGIES, get_strategy, smote_resample


def _images(n, value_range, rng, shape=(6, 6, 1)):
    lo, hi = value_range
    return rng.integers(lo, hi + 1, size=(n,) + shape).astype(np.uint8)


def test_registry_has_the_four_strategies_and_rejects_unknown():
    assert set(STRATEGIES) == {"ldam", "class_weight", "smote", "custom_loss"}
    with pytest.raises(ValueError, match="unknown strategy 'focal'"):
        get_strategy("focal")


@pytest.mark.parametrize(
    "drw_epoch, epochs, expected",
    [(3, 10, [(0, None), (3, "w")]), (0, 10, [(0, "w")]), (10, 10, [(0, None)]), (12, 10, [(0, None)])],
)
def test_ldam_drw_switch_epoch(drw_epoch, epochs, expected, rng):
    x, y = _images(30, (0, 255), rng), np.array([0] * 25 + [1] * 5)
    plan = get_strategy("ldam").plan(x, y, 2, LDAMParams(drw_epoch=drw_epoch), epochs, seed=0)
    got = [(start, None if loss.class_weights is None else "w") for start, loss in plan.loss_phases]
    assert got == expected
    assert all(isinstance(loss, LDAMLoss) for _, loss in plan.loss_phases)
    weighted = [loss for _, loss in plan.loss_phases if loss.class_weights is not None]
    if weighted:  # the rare class gets the larger weight
        assert weighted[0].class_weights[1] > weighted[0].class_weights[0]


def test_class_weight_is_sklearn_balanced(rng):
    y = np.array([0] * 30 + [1] * 10)
    plan = get_strategy("class_weight").plan(_images(40, (0, 255), rng), y, 2, NoParams(), 5, seed=0)
    # balanced: n / (k * n_c) = 40 / (2 * 30), 40 / (2 * 10)
    assert plan.class_weight == pytest.approx({0: 40 / 60, 1: 2.0})


def test_smote_only_uses_the_training_part(rng):
    # Training-part minority images are dark (0..40); anything else is bright (200..255). A synthetic sample is an
    # interpolation of two training minority samples, so every synthetic pixel must stay <= 40 and every original
    # row must be one of the training rows, unchanged.
    x_train = np.concatenate([_images(40, (200, 255), rng), _images(8, (0, 40), rng)])
    y_train = np.array([0] * 40 + [1] * 8)
    plan = get_strategy("smote").plan(x_train, y_train, 2, SmoteParams(k_neighbors=3), 5, seed=1)
    originals = plan.source_rows >= 0
    assert np.array_equal(plan.x[originals], x_train[plan.source_rows[originals]])
    synthetic = plan.x[~originals]
    assert len(synthetic) == 32 and np.all(plan.y[~originals] == 1)
    assert synthetic.max() <= 40
    assert np.bincount(plan.y).tolist() == [40, 40]


def test_smote_lowers_k_and_says_so(rng):
    x, y = _images(23, (0, 255), rng), np.array([0] * 20 + [1] * 3)
    _, y_res, _, notes = smote_resample(x, y, k_neighbors=5, seed=0)
    assert np.bincount(y_res).tolist() == [20, 20]
    assert any("lowered from 5 to 2" in n for n in notes)


def test_smote_refuses_a_class_of_one(rng):
    with pytest.raises(ValueError, match="at least 2 samples per class"):
        smote_resample(_images(11, (0, 255), rng), np.array([0] * 10 + [1]), k_neighbors=5, seed=0)


def test_smote_is_deterministic(rng):
    x, y = _images(30, (0, 255), rng), np.array([0] * 24 + [1] * 6)
    a = smote_resample(x, y, 5, seed=4)[0]
    b = smote_resample(x, y, 5, seed=4)[0]
    assert np.array_equal(a, b)
