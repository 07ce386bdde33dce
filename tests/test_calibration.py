"""Temperature scaling: the fitted T, what it changes (probabilities, NLL) and what it must not (rankings)."""

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medstack.config import ModelConfig, NoParams, TrainingConfig
from medstack.models.calibration import calibration_note, fit_temperature, nll, prior_nll, with_temperature
from medstack.models.training import CNNClassifier


def _overconfident(rng, n=4000, true_t=8.0):
    """Labels drawn from softmax(z); the model reports z * true_t, so T = true_t undoes its overconfidence."""
    z = rng.normal(0.0, 1.5, (n, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    return z * true_t, y


def test_fit_temperature_recovers_a_known_overconfidence(rng):
    logits, y = _overconfident(rng, true_t=8.0)
    t = fit_temperature(logits, y)
    assert 8.0 / 1.15 < t < 8.0 * 1.15
    assert nll(logits, y, t) < nll(logits, y) / 2  # the raw softmax pays dearly for its confident mistakes


def test_fit_temperature_leaves_a_calibrated_model_near_one(rng):
    logits, y = _overconfident(rng, true_t=1.0)
    assert 0.85 < fit_temperature(logits, y) < 1.15


def test_separable_data_keeps_t_inside_its_bounds():
    logits = np.array([[0.0, 1.0], [1.0, 0.0]] * 20)
    y = np.array([1, 0] * 20)
    t = fit_temperature(logits, y)  # NLL keeps falling as T -> 0 (flat once it underflows): a finite, small T
    assert np.exp(-5.0) <= t < 0.05 and nll(logits, y, t) < 1e-6


def test_a_model_no_better_than_the_class_frequencies_gets_a_warning(rng):
    y = np.array([0] * 75 + [1] * 25)
    baseline = prior_nll(y, 2)
    assert baseline == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    inverted = np.stack([y * 3.0, (1 - y) * 3.0], axis=1)  # confidently wrong on every image
    t = fit_temperature(inverted, y)
    note = calibration_note(t, nll(inverted, y, t), baseline)
    assert note and "no better than predicting the class frequencies (0.562)" in note
    informative, y_good = _overconfident(rng, n=500, true_t=3.0)
    t = fit_temperature(informative, y_good)
    assert calibration_note(t, nll(informative, y_good, t), prior_nll(y_good, 3)) is None


@pytest.mark.parametrize("logits, y, message", [
    (np.zeros((4,)), np.zeros(4, int), r"needs \(N, K\) logits and N labels"),
    (np.zeros((4, 2)), np.zeros(3, int), r"needs \(N, K\) logits and N labels"),
    (np.zeros((0, 2)), np.zeros(0, int), r"needs \(N, K\) logits and N labels"),
    (np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]), "NaN or inf"),
])
def test_bad_input_is_a_clear_error(logits, y, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, y)


@pytest.mark.slow
def test_with_temperature_divides_the_logits_and_survives_a_safe_mode_reload(rng, tmp_path):
    inputs = keras.Input((3,))
    net = keras.Model(inputs, keras.layers.Dense(2, name="logits")(inputs))
    x = rng.normal(size=(50, 3)).astype("float32")
    raw = net.predict(x, verbose=0)
    scaled = with_temperature(net, 4.0)
    assert np.allclose(scaled.predict(x, verbose=0), raw / 4.0, atol=1e-6)
    scaled.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert np.allclose(again.predict(x, verbose=0), raw / 4.0, atol=1e-6)


@pytest.mark.slow
def test_classifier_calibrates_on_val_without_changing_its_ranking(rng):
    x = rng.integers(0, 255, (160, 8, 8, 1)).astype("uint8")
    y = np.array([0] * 120 + [1] * 40)
    x[y == 1, :4] = 255  # learnable: bright top half for the minority class
    small = ModelConfig(filters=[4], convs_per_block=1, dense_units=8, batch_norm=False, head="gap")
    x_val, y_val = x[::4], y[::4]

    def fit(calibration):
        training = TrainingConfig(epochs=3, jit_compile=False, batch_size=16, learning_rate=0.01, calibration=calibration, min_steps=0, min_epoch_steps=0, tta="none")
        return CNNClassifier("class_weight", NoParams(), 2, small, None, training, seed=3).fit(x, y, x_val, y_val)

    plain, calibrated = fit("none"), fit("temperature")
    assert plain.info_["temperature"] is None and plain.model_ is plain.network_
    t = calibrated.info_["temperature"]
    before, after = calibrated.info_["val_nll_before_after"]
    assert t > 0 and after <= before + 1e-6  # T minimises the val NLL, T = 1 included
    raw = plain.predict_proba(x)
    cal = calibrated.predict_proba(x)
    assert np.allclose(raw, CNNClassifier.predict_proba(_uncalibrated(calibrated), x), atol=1e-6)  # same training
    assert roc_auc_score(y, cal[:, 1]) == pytest.approx(roc_auc_score(y, raw[:, 1]), abs=1e-9)
    logits = calibrated.network_.predict(x, verbose=0)
    expected = np.exp(logits / t) / np.exp(logits / t).sum(axis=1, keepdims=True)
    assert np.allclose(cal, expected, atol=1e-5)


def _uncalibrated(clf: CNNClassifier) -> CNNClassifier:
    view = CNNClassifier.__new__(CNNClassifier)
    view.model_ = clf.network_
    return view
