"""The registry of imbalance strategies.

A strategy decides three things and nothing else: how the fold's training part is resampled, which class
weights Keras applies, and which loss is used in which epochs. Adding a fifth strategy is one new
:class:`Strategy` entry in :data:`STRATEGIES` and its parameter schema in the config
(:data:`medstack.config_sections.STRATEGY_PARAMS`, which owns the names a config may use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from medstack.config import FocalParams, LDAMParams, StrategyParams
from medstack.models.smote import smote_resample

if TYPE_CHECKING:
    import keras

# Keras, the losses and scikit-learn are imported where they are used, not here: `medstack check-config` /
# `--help` / a config error must answer without paying TensorFlow's start-up (seconds).


@dataclass
class TrainingPlan:
    """The training data and loss schedule a strategy prepared for one fold."""

    x: np.ndarray
    y: np.ndarray
    source_rows: np.ndarray  # position in the fold's training part of every row; -1 for synthetic rows
    loss_phases: list[tuple[int, keras.losses.Loss]]  # (first epoch, loss) in increasing epoch order
    class_weight: dict[int, float] | None = None
    cosine_scale: float | None = None  # set: the model ends in scaled cosine logits (LDAM's classifier)
    notes: list[str] = field(default_factory=list)


def _cross_entropy(counts: list[int], params: StrategyParams, epochs: int) -> list[tuple[int, keras.losses.Loss]]:
    import keras

    return [(0, keras.losses.CategoricalCrossentropy(from_logits=True))]


def _ldam_drw(counts: list[int], params: LDAMParams, epochs: int) -> list[tuple[int, keras.losses.Loss]]:
    from medstack.models.losses import LDAMLoss, effective_number_weights

    plain = LDAMLoss(counts, max_m=params.max_m, s=params.s)
    weighted = LDAMLoss(counts, max_m=params.max_m, s=params.s, class_weights=effective_number_weights(counts, params.beta))
    if params.drw_epoch <= 0:
        return [(0, weighted)]
    if params.drw_epoch >= epochs:
        return [(0, plain)]
    return [(0, plain), (params.drw_epoch, weighted)]


def _class_balanced_focal(counts: list[int], params: FocalParams, epochs: int) -> list[tuple[int, keras.losses.Loss]]:
    from medstack.models.losses import ClassBalancedFocalLoss

    return [(0, ClassBalancedFocalLoss(counts, beta=params.beta, gamma=params.gamma))]


def _balanced_class_weight(y: np.ndarray, num_classes: int) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.arange(num_classes)
    weights = compute_class_weight("balanced", classes=classes, y=y)
    return {int(c): float(w) for c, w in zip(classes, weights)}


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    loss_phases: Callable[[list[int], StrategyParams, int], list[tuple[int, keras.losses.Loss]]]
    uses_class_weight: bool = False
    uses_smote: bool = False
    cosine_head: bool = False  # normalised last layer scaled by params.s

    def plan(self, x: np.ndarray, y: np.ndarray, num_classes: int, params: StrategyParams, epochs: int, seed: int) -> TrainingPlan:
        """Prepare one fold's training part. Only that part is ever given here: val, test and the held-out
        fold never reach resampling or weighting."""
        source_rows = np.arange(len(x))
        notes: list[str] = []
        if self.uses_smote:
            x, y, source_rows, notes = smote_resample(x, y, params.k_neighbors, seed)
        counts = np.bincount(y, minlength=num_classes).tolist()
        return TrainingPlan(
            x=x,
            y=y,
            source_rows=source_rows,
            loss_phases=self.loss_phases(counts, params, epochs),
            class_weight=_balanced_class_weight(y, num_classes) if self.uses_class_weight else None,
            cosine_scale=params.s if self.cosine_head else None,
            notes=notes,
        )


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("ldam", "LDAM loss with deferred re-weighting (Cao et al., 2019)", _ldam_drw, cosine_head=True),
        Strategy("class_weight", "cross-entropy with scikit-learn 'balanced' class weights", _cross_entropy, uses_class_weight=True),
        Strategy("smote", "cross-entropy on SMOTE-oversampled training folds", _cross_entropy, uses_smote=True),
        Strategy("custom_loss", "class-balanced focal loss (effective-number alpha, gamma 2)", _class_balanced_focal),
    )
}


# Not a base member (a config cannot list it): how a distilled student learns a teacher's soft targets
# (``CNNClassifier.fit(..., targets=...)``). The targets carry the teacher's view of the classes, so the rows are
# neither resampled nor re-weighted.
STUDENT = Strategy("student", "cross-entropy on a teacher's probabilities (no resampling, no class weights)",
                   _cross_entropy)


def get_strategy(name: str) -> Strategy:
    if name == STUDENT.name:
        return STUDENT
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; registered: {sorted(STRATEGIES)}") from None
