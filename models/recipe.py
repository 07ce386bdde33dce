"""The training recipe resolved for one fold: budgets given in optimiser steps turned into epochs, plus the learning
rate schedule and early stopping that follow from them.

Why steps: 437 training images at batch 64 are 7 steps an epoch, so "20 epochs" is 140 updates, too few for a CNN,
while the same 20 epochs are 1,180 updates on 3,766 images. Planning at least ``min_steps`` updates gives small data
enough training and leaves large data exactly as its epoch count says. Patience and the earliest stop are steps too,
so a tiny val split cannot end training after a handful of updates (and restore-best cannot go back to them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import keras

from medstack.config import TrainingConfig


@dataclass(frozen=True)
class Recipe:
    """What one fold's training plans; every count is resolved from the number of training rows."""

    batch_size: int
    steps_per_epoch: int
    epochs: int  # planned (early stopping may end sooner)
    planned_steps: int
    patience_epochs: int
    stop_from_epoch: int  # 0-based: early stopping watches (and keeps best weights) from this epoch on
    warmup_steps: int
    monitor: str
    lr_schedule: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stretch(self, epoch: int, configured_epochs: int) -> int:
        """An epoch index given on the configured scale (LDAM's DRW epoch), at the same share of this budget."""
        if self.epochs == configured_epochs:
            return epoch
        return min(self.epochs, round(epoch * self.epochs / configured_epochs))


def resolve_recipe(n_train: int, cfg: TrainingConfig) -> Recipe:
    """Epochs, patience and the earliest stop for ``n_train`` training rows (after any resampling).

    One pass over the rows is ``ceil(n_train / batch_size)`` steps. The planned steps are max(epochs passes,
    min_steps). An epoch (one validation, one early-stopping check) is one pass, or ``min_epoch_steps`` when a pass
    is shorter: 7-step epochs would spend more time validating than training."""
    if n_train < 1:
        raise ValueError(f"cannot plan training on {n_train} rows")
    steps_per_pass = math.ceil(n_train / cfg.batch_size)
    steps_per_epoch = max(steps_per_pass, cfg.min_epoch_steps)
    planned = max(cfg.epochs * steps_per_pass, cfg.min_steps)
    epochs = max(1, math.ceil(planned / steps_per_epoch))
    cosine = cfg.lr_schedule.kind == "cosine"
    return Recipe(
        batch_size=cfg.batch_size,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        planned_steps=epochs * steps_per_epoch,
        patience_epochs=max(1, math.ceil(cfg.patience_steps / steps_per_epoch)),
        stop_from_epoch=min(epochs - 1, math.ceil(cfg.stop_after_steps / steps_per_epoch)),
        warmup_steps=round(cfg.lr_schedule.warmup_fraction * epochs * steps_per_epoch) if cosine else 0,
        monitor=cfg.monitor,
        lr_schedule=cfg.lr_schedule.kind,
    )


def learning_rate(cfg: TrainingConfig, recipe: Recipe) -> Any:
    """A constant (plateau: its callback lowers it), or a per-step schedule over the planned steps."""
    schedule = cfg.lr_schedule
    if schedule.kind == "inverse_time":
        return keras.optimizers.schedules.InverseTimeDecay(cfg.learning_rate, schedule.decay_steps, schedule.decay_rate)
    if schedule.kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg.learning_rate * (0.1 if recipe.warmup_steps else 1.0),
            decay_steps=max(1, recipe.planned_steps - recipe.warmup_steps),
            alpha=schedule.final_fraction,
            warmup_target=cfg.learning_rate if recipe.warmup_steps else None,
            warmup_steps=recipe.warmup_steps,
        )
    return cfg.learning_rate


def callbacks(cfg: TrainingConfig, recipe: Recipe) -> tuple[list[keras.callbacks.Callback], keras.callbacks.EarlyStopping]:
    """The LR callback (plateau schedules only) and early stopping on the recipe's monitor, patience and start."""
    mode = "max" if recipe.monitor == "val_auc" else "min"
    lr: list[keras.callbacks.Callback] = []
    if cfg.lr_schedule.kind == "plateau":
        lr.append(keras.callbacks.ReduceLROnPlateau(monitor=recipe.monitor, mode=mode, factor=cfg.lr_schedule.factor,
                                                    patience=cfg.lr_schedule.patience, min_lr=cfg.lr_schedule.min_lr))
    stop = keras.callbacks.EarlyStopping(monitor=recipe.monitor, mode=mode, patience=recipe.patience_epochs,
                                         start_from_epoch=recipe.stop_from_epoch, restore_best_weights=True)
    return lr, stop


@keras.saving.register_keras_serializable(package="medstack")
class SoftmaxAUC(keras.metrics.AUC):
    """ROC AUC of the softmax of logits (Keras' ``from_logits`` applies a sigmoid per class, which ranks a binary
    model's two logits differently from its probabilities). Binary tasks: the positive class's column; multi-class:
    micro-averaged over the one-hot columns."""

    def __init__(self, positive_class: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.positive_class = positive_class

    def update_state(self, y_true, y_pred, sample_weight=None):
        proba = keras.ops.softmax(keras.ops.cast(y_pred, "float32"), axis=-1)
        if self.positive_class is not None:
            y_true, proba = y_true[:, self.positive_class], proba[:, self.positive_class]
        return super().update_state(y_true, proba, sample_weight)

    def get_config(self):
        return {**super().get_config(), "positive_class": self.positive_class}
