"""Two runs compared on the test images both scored: the paired bootstrap of a test ROC AUC difference.

``medstack compare`` pairs each model with itself across two runs; the auto-promotion pairs the champion's
recommended model with the candidate's. Both go through :func:`shared_test`, which reads the runs' test predictions
(:mod:`medstack.run_folder`) and pairs them only when the two runs scored the same images (dataset rows) with the
same labels: a difference of two figures on different images mixes the images into the models' difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medstack.run_folder import read_positive_class, read_test_predictions

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class SharedTest:
    """Run A's and run B's test probabilities on the same images, aligned row by row."""

    labels: np.ndarray
    positive_class: int  # run B's (the newer run's, where the two are a baseline and a candidate)
    a: dict[str, np.ndarray]  # model -> (N, K) probabilities of run A
    b: dict[str, np.ndarray]

    def roc_auc_difference(self, model_a: str, model_b: str) -> dict[str, Any] | None:
        """B's ``model_b`` test ROC AUC minus A's ``model_a``, both scored on the same resampled images: the figures
        ``a``, ``b``, ``difference``, the 95% paired bootstrap interval ``ci`` and ``b_not_better``
        (:func:`medstack.models.metrics.paired_auc_difference`); None when the difference is undefined (no resample
        holds every class, or a probability is not finite)."""
        from medstack.models.metrics import paired_auc_difference

        try:
            return paired_auc_difference(self.labels, self.a[model_a], self.b[model_b], self.positive_class)
        except ValueError:
            return None


def shared_test(dir_a: str | Path, dir_b: str | Path) -> SharedTest | None:
    """Both runs' test predictions, paired; None when they did not score the same test images with the same labels.
    A missing or unreadable file raises (OSError, ValueError, KeyError), as reading it does."""
    a, b = read_test_predictions(dir_a), read_test_predictions(dir_b)
    if not a.same_images(b):
        return None
    return SharedTest(labels=b.labels, positive_class=read_positive_class(dir_b), a=a.probas, b=b.probas)
