"""Calibration measured: expected calibration error (ECE) and the reliability table behind its plot.

What is binned, and why. A binary model is judged on what its decision reads, P(positive class): the bins hold
images by that probability and compare its mean with the observed share of positives. A model of K > 2 classes is
judged on its top-label confidence, max_k p_k, against the share of images whose most probable class is right
("top-label" calibration, Guo et al., 2017); note that this is plain argmax, whatever class offsets a decision adds.

Bins are equal-width on [0, 1] (:data:`N_BINS` of them, the last one closed at 1), and

    ECE = sum over bins b of (n_b / N) * |observed_b - predicted_b|,

empty bins weigh nothing. Equal-width bins are the common definition, so numbers compare with published ones; a
model whose probabilities sit near 0 and 1 puts most images in the two end bins, which the table shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_BINS = 10
BINARY_SCORE = "P(positive class)"
TOP_LABEL_SCORE = "top-label confidence (max class probability, right when argmax is the true class)"


def calibration_target(y_true: np.ndarray, proba: np.ndarray, positive_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(score, outcome) per image: binary P(positive) and whether the image is positive; K > 2 the top-label
    confidence and whether argmax is the true class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != y_true.shape[0]:
        raise ValueError(f"calibration needs (N, K) probabilities for N labels, got {proba.shape} and {y_true.shape}")
    if proba.shape[1] == 2:
        return proba[:, positive_class], (y_true == positive_class).astype(np.float64)
    return proba.max(axis=1), (proba.argmax(axis=1) == y_true).astype(np.float64)


def score_name(n_classes: int) -> str:
    """What the bins hold for a model of ``n_classes`` classes (for tables and plot labels)."""
    return BINARY_SCORE if n_classes == 2 else TOP_LABEL_SCORE


def _bin_of(score: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((np.clip(score, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)


def reliability_table(y_true: np.ndarray, proba: np.ndarray, positive_class: int = 1, n_bins: int = N_BINS
                      ) -> list[dict[str, Any]]:
    """One row per equal-width bin: its edges, images, mean predicted score and observed frequency (None when
    the bin is empty)."""
    score, outcome = calibration_target(y_true, proba, positive_class)
    which = _bin_of(score, n_bins)
    n = np.bincount(which, minlength=n_bins)
    predicted = np.bincount(which, weights=score, minlength=n_bins)
    observed = np.bincount(which, weights=outcome, minlength=n_bins)
    return [{"low": b / n_bins, "high": (b + 1) / n_bins, "n": int(n[b]),
             "predicted": float(predicted[b] / n[b]) if n[b] else None,
             "observed": float(observed[b] / n[b]) if n[b] else None} for b in range(n_bins)]


def _ece(score: np.ndarray, outcome: np.ndarray, n_bins: int) -> float:
    which = _bin_of(score, n_bins)
    gap = np.bincount(which, weights=score, minlength=n_bins) - np.bincount(which, weights=outcome, minlength=n_bins)
    return float(np.abs(gap).sum() / len(score))


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, positive_class: int = 1,
                               n_bins: int = N_BINS) -> float:
    """ECE over equal-width bins (see the module docstring for what is binned)."""
    score, outcome = calibration_target(y_true, proba, positive_class)
    if not len(score):
        raise ValueError("expected calibration error needs at least one image")
    return _ece(score, outcome, n_bins)


def ece_interval(y_true: np.ndarray, proba: np.ndarray, positive_class: int = 1, n_bins: int = N_BINS,
                 n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ECE over resampled images (the same resampling as
    :func:`medstack.models.metrics.bootstrap_ci`: ``seed``, ``n_boot`` rows of N draws); None when ``n_boot`` is 0."""
    if n_boot <= 0:
        return None
    score, outcome = calibration_target(y_true, proba, positive_class)
    idx = np.random.default_rng(seed).integers(0, len(score), size=(n_boot, len(score)))
    values = np.array([_ece(score[i], outcome[i], n_bins) for i in idx])
    alpha = (1 - ci) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
