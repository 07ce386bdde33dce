"""The classifier contract: augmentation only while training, LR schedules, input validation."""

import numpy as np
import pytest

from medstack.config import AugmentationConfig, ModelConfig, NoParams, TrainingConfig
from medstack.models.network import build_model, with_tta
from medstack.models.training import CNNClassifier, predict_logits_many

pytestmark = pytest.mark.slow

SMALL = ModelConfig(filters=[4], convs_per_block=1, dense_units=8, batch_norm=False, head="gap")
STRONG_AUG = AugmentationConfig(flip="horizontal_and_vertical", rotation=0.4, zoom=0.5, shift=0.4)


def test_augmentation_is_active_in_training_only(rng):
    model = build_model((12, 12, 1), 2, SMALL, STRONG_AUG, seed=1)
    x = rng.integers(0, 255, (8, 12, 12, 1)).astype("float32")
    inference = [np.asarray(model(x, training=False)) for _ in range(2)]
    assert np.array_equal(inference[0], inference[1])
    assert np.allclose(model.predict(x, verbose=0), inference[0], atol=1e-5)
    training = np.asarray(model(x, training=True))
    assert not np.allclose(training, inference[0])  # random flips/rotations/zooms changed the input


def test_resizing_happens_inside_the_model(rng):
    model = build_model((10, 14, 3), 3, SMALL, None, image_size=(16, 16))
    assert model.get_layer("resize").output.shape[1:3] == (16, 16)
    assert model.predict(rng.integers(0, 255, (2, 10, 14, 3)).astype("uint8"), verbose=0).shape == (2, 3)


def test_inverse_time_schedule_trains_and_decays(rng):
    x = rng.integers(0, 255, (64, 8, 8, 1)).astype("uint8")
    y = np.array([0] * 48 + [1] * 16)
    training = TrainingConfig(epochs=2, jit_compile=False, batch_size=16, learning_rate=0.01, min_steps=0, min_epoch_steps=0, lr_schedule={"kind": "inverse_time", "decay_steps": 1, "decay_rate": 1.0})
    clf = CNNClassifier("class_weight", NoParams(), 2, SMALL, None, training, seed=0).fit(x, y, x[:16], y[:16])
    lr = clf.network_.optimizer.learning_rate
    assert float(np.asarray(lr)) < 0.01 / 5  # 8 steps of 1/(1 + t): well below the start value
    assert clf.info_["epochs_run"] == 2 and len(clf.history_["val_loss"]) == 2


def test_batches_that_span_arrays_give_each_array_its_own_logits(rng):
    model = build_model((8, 8, 1), 3, SMALL, STRONG_AUG, seed=2)
    arrays = [rng.integers(0, 255, (n, 8, 8, 1)).astype("uint8") for n in (5, 0, 11, 2)]
    many = predict_logits_many(model, arrays, images=4)  # batches of 4 rows cross every boundary
    assert [m.shape for m in many] == [(5, 3), (0, 3), (11, 3), (2, 3)] and predict_logits_many(model, []) == []
    for array, logits in zip(arrays, many):
        if len(array):
            np.testing.assert_array_equal(logits, np.asarray(model(array, training=False)))


class _RowsSeen:
    """A real model, and the rows of every call made to it."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, **kwargs):
        self.rows.append(len(x))
        return self.model(x, **kwargs)


def test_a_call_holds_at_most_the_images_asked_for_test_time_views_included(rng):
    """Stacked views multiply a call's images (and its activations' memory) by the view count: 3 views and at most
    7 images a call means 2 rows a call."""
    net = build_model((8, 8, 1), 3, SMALL, None, seed=2)
    model = with_tta(net, [{"flip": f, "dy": 0, "dx": 0} for f in ("none", "horizontal", "vertical")])
    x = rng.integers(0, 255, (9, 8, 8, 1)).astype("uint8")
    seen = _RowsSeen(model)
    [logits] = predict_logits_many(seen, [x], images=7)
    assert seen.rows == [2, 2, 2, 2, 1]
    np.testing.assert_allclose(logits, np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)


def test_num_classes_must_be_two_or_more():
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model((8, 8, 1), 1, SMALL)


def test_same_seed_trains_bitwise_the_same_and_another_seed_does_not(rng):
    # Measured on CPU (TF 2.21, oneDNN on): with the seeded shuffle, trainings of one fold are bitwise equal in
    # one process, across processes and in two parallel threads; before it, LDAM probabilities differed by 0.5.
    x = rng.integers(0, 255, (96, 8, 8, 1)).astype("uint8")
    y = np.array([0] * 72 + [1] * 24)
    training = TrainingConfig(epochs=2, batch_size=16, min_steps=0, min_epoch_steps=0)

    def fit(seed):
        return CNNClassifier("class_weight", NoParams(), 2, SMALL, STRONG_AUG, training, seed=seed).fit(x, y, x[:16], y[:16])

    a, b, c = fit(0), fit(0), fit(1)
    assert np.array_equal(a.predict_proba(x), b.predict_proba(x)) and a.history_ == b.history_
    assert not np.array_equal(a.predict_proba(x), c.predict_proba(x))


def test_given_targets_are_what_a_student_learns(rng):
    """One-hot targets train the very model the labels do: the targets replace the feed's labels and nothing else.
    Targets that are not one probability row per image, or a strategy that resamples its rows, are refused before
    any training."""
    x = rng.integers(0, 255, (64, 8, 8, 1)).astype("uint8")
    y = np.array([0] * 48 + [1] * 16)
    training = TrainingConfig(epochs=2, jit_compile=False, batch_size=16, min_steps=0, min_epoch_steps=0)

    def fit(targets, strategy="student"):
        return CNNClassifier(strategy, NoParams(), 2, SMALL, None, training, seed=3).fit(x, y, x[:16], y[:16],
                                                                                       targets=targets)

    labels, onehot = fit(None), fit(np.eye(2)[y])
    assert np.array_equal(labels.predict_proba(x), onehot.predict_proba(x)) and labels.history_ == onehot.history_
    assert labels.info_["train_inputs_sha"] != onehot.info_["train_inputs_sha"]  # the record says targets were given
    for bad, message in ((np.eye(2)[y][:10], r"targets must be \(64, 2\)"), (np.full((64, 2), 0.7), "sum to 1")):
        with pytest.raises(ValueError, match=message):
            fit(bad)
    from medstack.config import SmoteParams

    with pytest.raises(ValueError, match="'smote' resamples its rows"):
        CNNClassifier("smote", SmoteParams(), 2, SMALL, None, training, seed=3).fit(x, y, x[:16], y[:16],
                                                                                   targets=np.eye(2)[y])
