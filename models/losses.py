"""Imbalance-aware Keras losses: LDAM (with deferred re-weighting) and class-balanced focal loss.

Both take one-hot targets and raw logits, are written with ``keras.ops`` only (so they run on any Keras
backend) and are registered serialisable, so a saved ``.keras`` model reloads with its loss in safe mode.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops


def ldam_margins(class_counts: Sequence[int], max_m: float = 0.5) -> np.ndarray:
    """Per-class margins m_j proportional to n_j^(-1/4), scaled so the largest (rarest class) is ``max_m``."""
    counts = _positive_counts(class_counts)
    margins = counts**-0.25
    return margins * (max_m / margins.max())


def effective_number_weights(class_counts: Sequence[int], beta: float = 0.9999) -> np.ndarray:
    """Class weights (1-beta)/(1-beta^n_j) (Cui et al., 2019), normalised to sum to the number of classes."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _positive_counts(class_counts)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights / weights.sum() * len(counts)


def _positive_counts(class_counts: Sequence[int]) -> np.ndarray:
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError(f"class_counts must list at least two classes, got {list(class_counts)}")
    if np.any(counts <= 0):
        raise ValueError(f"every class needs at least one training sample, got counts {counts.astype(int).tolist()}")
    return counts


@keras.saving.register_keras_serializable(package="medstack")
class LDAMLoss(keras.losses.Loss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019): CE(s * (cos - m_y * onehot)).

    ``y_pred`` are the *scaled* cosine logits ``s * cos`` that :class:`models.network.CosineLogits` outputs, so
    predictions are plain ``softmax(y_pred)``; the loss lowers the true-class logit by ``s * m_y``, which is the
    paper's ``s * (cos_y - m_y)``. With ``class_weights`` (the DRW phase) each sample's loss is weighted by its
    class weight and the batch mean is normalised by the mean weight, as a weighted cross-entropy does.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        max_m: float = 0.5,
        s: float = 30.0,
        class_weights: Sequence[float] | None = None,
        reduction: str = "sum_over_batch_size",
        name: str = "ldam_loss",
        dtype: str | None = None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.class_counts = [int(c) for c in class_counts]
        self.max_m = float(max_m)
        self.s = float(s)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        if self.class_weights is not None and len(self.class_weights) != len(self.class_counts):
            raise ValueError("class_weights and class_counts must have the same length")
        self._margins = ldam_margins(self.class_counts, self.max_m).astype("float32")

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        margins = ops.cast(ops.convert_to_tensor(self._margins), y_pred.dtype)
        loss = ops.categorical_crossentropy(y_true, y_pred - self.s * y_true * margins, from_logits=True)
        if self.class_weights is None:
            return loss
        weights = ops.cast(ops.convert_to_tensor(np.asarray(self.class_weights, "float32")), y_pred.dtype)
        sample_w = ops.sum(y_true * weights, axis=-1)
        return loss * sample_w / ops.mean(sample_w)

    def get_config(self):
        config = super().get_config()
        config.update(
            class_counts=self.class_counts, max_m=self.max_m, s=self.s, class_weights=self.class_weights
        )
        return config


@keras.saving.register_keras_serializable(package="medstack")
class ClassBalancedFocalLoss(keras.losses.CategoricalFocalCrossentropy):
    """Keras' categorical focal loss with per-class alpha from the effective number of samples."""

    def __init__(
        self,
        class_counts: Sequence[int],
        beta: float = 0.9999,
        gamma: float = 2.0,
        from_logits: bool = True,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str = "sum_over_batch_size",
        name: str = "class_balanced_focal_loss",
        dtype: str | None = None,
    ):
        self.class_counts = [int(c) for c in class_counts]
        self.beta = float(beta)
        alpha = effective_number_weights(self.class_counts, self.beta).astype("float32").tolist()
        super().__init__(
            alpha=alpha,
            gamma=gamma,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )

    def call(self, y_true, y_pred):
        """Keras' focal formula on logits, computed through log-softmax.

        Keras' own ``from_logits`` path takes softmax and then clips probabilities to [eps, 1 - eps]; a sample
        whose probability falls under eps gets zero gradient through the clip, and in our trainings whole
        networks got stuck there after the first epochs (val loss frozen, AUC 0.5). Same loss value, no clip.
        """
        if not self.from_logits:
            return super().call(y_true, y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.label_smoothing:
            classes = ops.cast(ops.shape(y_true)[-1], y_pred.dtype)
            y_true = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        log_p = ops.log_softmax(y_pred, axis=self.axis)
        alpha = ops.cast(ops.convert_to_tensor(self.alpha), y_pred.dtype)
        focal = alpha * ops.power(1.0 - ops.exp(log_p), self.gamma) * (-y_true * log_p)
        return ops.sum(focal, axis=self.axis)

    def get_config(self):
        config = super().get_config()
        config.pop("alpha")  # derived from class_counts and beta
        config.update(class_counts=self.class_counts, beta=self.beta)
        return config
