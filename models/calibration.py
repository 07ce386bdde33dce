"""Temperature scaling (Guo et al., 2017): one scalar T per trained model, ``softmax(logits / T)``.

A CNN's softmax is rarely calibrated, and LDAM's cosine classifier (logits = s * cos, s = 30) makes it extreme: its
probabilities sit at 0 or 1, its decision threshold lands near 1e-11 and it outweighs the others in the soft vote.
Dividing the logits by one T fitted on held-out data (minimum negative log-likelihood) leaves every ranking, so
every ROC AUC, unchanged, and makes the probabilities mean what they say. T is fitted on the val split, which the
model has only used for early stopping; never on the OOF rows or the test split.
"""

from __future__ import annotations

import keras
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# T is searched on log scale within [e^-5, e^5] (about 0.007 to 148): wide enough for LDAM's s = 30, bounded so
# that separable val data (NLL falling forever as T -> 0) cannot push it to 0.
LOG_T_BOUNDS = (-5.0, 5.0)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of integer labels ``y`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-np.mean(logp[np.arange(len(y)), np.asarray(y, np.int64)]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of ``softmax(logits / T)`` on (``logits``, ``y``)."""
    logits = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    if logits.ndim != 2 or len(logits) != len(y) or len(y) == 0:
        raise ValueError(f"fit_temperature needs (N, K) logits and N labels, got {logits.shape} and {y.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("fit_temperature: logits contain NaN or inf")
    found = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=LOG_T_BOUNDS,
                            method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def prior_nll(y: np.ndarray, num_classes: int) -> float:
    """The NLL of always predicting the class frequencies of ``y``: what a model without information scores."""
    freq = np.bincount(np.asarray(y, np.int64), minlength=num_classes) / len(y)
    return float(-np.mean(np.log(freq[np.asarray(y, np.int64)])))


def calibration_note(temperature: float, nll_after: float, baseline: float) -> str | None:
    """A warning when even the best temperature leaves the val NLL at or above the class-frequency baseline."""
    if nll_after < baseline:
        return None
    return (f"temperature scaling on val (T={temperature:.3g}) leaves a log-loss of {nll_after:.3f}, no better than "
            f"predicting the class frequencies ({baseline:.3f}): this model's val predictions carry no information; "
            "look at its training curves")


def with_temperature(net: keras.Model, temperature: float) -> keras.Model:
    """``net`` with its logits divided by ``temperature`` (a built-in Rescaling layer, so the saved ``.keras`` file
    predicts calibrated logits and loads in safe mode). The layers and weights are ``net``'s own, not copies."""
    scaled = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name="temperature")(net.outputs[0])
    return keras.Model(net.inputs[0], scaled, name=net.name)  # one input tensor, not a list: called with an array
