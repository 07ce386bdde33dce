import math

import keras
import numpy as np
import pytest

from medstack.models.losses import ClassBalancedFocalLoss, LDAMLoss, effective_number_weights, ldam_margins


def test_ldam_margins_hand_computed():
    # m_j = C * n_j^(-1/4), C chosen so the largest margin is max_m.
    # n = [100, 10]: 100^-0.25 = 0.316228, 10^-0.25 = 0.562341 -> scale 0.5 / 0.562341 = 0.889140
    margins = ldam_margins([100, 10], max_m=0.5)
    assert margins[1] == pytest.approx(0.5)
    assert margins[0] == pytest.approx(0.316228 * 0.889140, abs=1e-6)


def test_effective_number_weights_hand_computed():
    # beta = 0.9: w_j = (1 - 0.9) / (1 - 0.9^n_j); n = [1, 2] -> [0.1/0.1, 0.1/0.19] = [1, 0.526316]
    # normalised to sum to 2 classes: [1, 0.526316] * 2 / 1.526316 = [1.310345, 0.689655]
    assert effective_number_weights([1, 2], beta=0.9) == pytest.approx([1.310345, 0.689655], abs=1e-6)


@pytest.mark.parametrize("bad", [[5], [0, 3], [-1, 3]])
def test_counts_must_be_positive_and_two_classes(bad):
    with pytest.raises(ValueError, match="class"):
        ldam_margins(bad)


def test_ldam_loss_matches_hand_computation_unweighted():
    # counts [100, 10] -> margins [0.281171, 0.5]; s = 2; the model hands over scaled cosines s * cos.
    # cos A = [2, 1], cos B = [0.5, 1] (values need not be real cosines for the arithmetic).
    # sample A: true 0, logits [2, 1]  -> adjusted [1.718829, 1]   -> scaled [3.437658, 2]
    #   CE = log(1 + exp(2 - 3.437658)) = log(1 + 0.237559) = 0.213080
    # sample B: true 1, logits [0.5, 1] -> adjusted [0.5, 0.5]      -> scaled [1, 1]
    #   CE = log(2) = 0.693147
    loss = LDAMLoss([100, 10], max_m=0.5, s=2.0)
    y = np.array([[1, 0], [0, 1]], "float32")
    z = 2.0 * np.array([[2.0, 1.0], [0.5, 1.0]], "float32")
    per_sample = keras.ops.convert_to_numpy(loss.call(y, z))
    assert per_sample == pytest.approx([0.213080, 0.693147], abs=1e-5)
    assert float(loss(y, z)) == pytest.approx((0.213080 + 0.693147) / 2, abs=1e-5)


def test_ldam_loss_weighted_is_weighted_mean():
    # weights [0.2, 1.8]: weighted mean = (0.2 * 0.213080 + 1.8 * 0.693147) / (0.2 + 1.8) = 0.645140
    loss = LDAMLoss([100, 10], max_m=0.5, s=2.0, class_weights=[0.2, 1.8])
    y = np.array([[1, 0], [0, 1]], "float32")
    z = 2.0 * np.array([[2.0, 1.0], [0.5, 1.0]], "float32")
    assert float(loss(y, z)) == pytest.approx(0.645140, abs=1e-5)


def test_ldam_margin_hurts_rare_class_more():
    # Same logits margin for both classes: the rare class (bigger margin) must get the bigger loss.
    loss = LDAMLoss([1000, 10], s=1.0)
    z = np.array([[2.0, 0.0], [0.0, 2.0]], "float32")
    y = np.eye(2, dtype="float32")
    common, rare = keras.ops.convert_to_numpy(loss.call(y, z))
    assert rare > common


def test_class_balanced_focal_matches_hand_computation():
    # counts [3, 1], beta 0.5: raw w = [0.5/0.875, 0.5/0.5] = [0.571429, 1] -> normalised [0.727273, 1.272727]
    # logits [0, 0] -> p = [0.5, 0.5]; true class 1: loss = alpha_1 * (1 - 0.5)^2 * -log(0.5) = 1.272727*0.25*0.693147
    loss = ClassBalancedFocalLoss([3, 1], beta=0.5, gamma=2.0)
    value = keras.ops.convert_to_numpy(loss.call(np.array([[0, 1]], "float32"), np.zeros((1, 2), "float32")))
    assert value[0] == pytest.approx(1.272727 * 0.25 * math.log(2), abs=1e-5)
    assert isinstance(loss, keras.losses.CategoricalFocalCrossentropy)  # Keras' own focal loss underneath


@pytest.mark.parametrize(
    "loss",
    [LDAMLoss([50, 5], max_m=0.4, s=10.0, class_weights=[0.3, 1.7]), ClassBalancedFocalLoss([50, 5], beta=0.99, gamma=1.5)],
    ids=["ldam", "cb_focal"],
)
def test_losses_round_trip_through_keras_serialisation(loss):
    rebuilt = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(rebuilt) is type(loss)
    assert rebuilt.get_config() == loss.get_config()
    y = np.array([[1, 0], [0, 1]], "float32")
    z = np.array([[0.3, -0.2], [1.0, 0.1]], "float32")
    assert float(rebuilt(y, z)) == pytest.approx(float(loss(y, z)))


def test_cosine_logits_are_scaled_cosines_and_serialise():
    from medstack.models.network import CosineLogits

    layer = CosineLogits(2, scale=30.0)
    x = np.array([[3.0, 4.0], [-1.0, 0.0]], "float32")
    out = keras.ops.convert_to_numpy(layer(x))
    w = keras.ops.convert_to_numpy(layer.kernel)
    expected = 30.0 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    assert out == pytest.approx(expected, abs=1e-4)
    assert np.all(np.abs(out) <= 30.0 + 1e-4)
    rebuilt = CosineLogits.from_config(layer.get_config())
    assert rebuilt.units == 2 and rebuilt.scale == 30.0


def test_class_balanced_focal_equals_keras_focal_where_keras_is_stable_and_keeps_gradients_where_not():
    counts = [30, 10]
    ours = ClassBalancedFocalLoss(counts, beta=0.99)
    reference = keras.losses.CategoricalFocalCrossentropy(alpha=ours.alpha, gamma=2.0, from_logits=True, reduction=None)
    y = np.array([[1, 0], [0, 1], [0, 1]], "float32")
    z = np.array([[0.3, -0.2], [1.0, 0.1], [-2.0, 2.0]], "float32")
    assert keras.ops.convert_to_numpy(ours.call(y, z)) == pytest.approx(keras.ops.convert_to_numpy(reference(y, z)), rel=1e-4)
    # A confidently wrong sample (p(true) ~ e^-40): the loss is large and finite, not clipped at -log(eps).
    far = keras.ops.convert_to_numpy(ours.call(np.array([[1, 0]], "float32"), np.array([[0.0, 40.0]], "float32")))
    assert far[0] == pytest.approx(ours.alpha[0] * 40.0, rel=1e-3)
