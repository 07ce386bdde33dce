"""The model-side sections of a run's config: network, augmentation, training recipe, strategies, ensembles, report.

They are part of :class:`medstack.config.RunConfig` (import them from there); they live here so that each config
module can be read in one sitting. The config owns every schema, strategy parameters included
(:data:`STRATEGY_PARAMS`): ``medstack.models`` receives these sections and never the other way round.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    filters: list[int] = Field(default=[32, 64, 128], min_length=1)
    convs_per_block: int = Field(default=2, ge=1)
    batch_norm: bool = True
    head: Literal["flatten", "gap"] = "flatten"
    dense_units: int = Field(default=256, ge=1)
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    l2: float = Field(default=1e-4, ge=0.0)


class AugmentationConfig(Section):
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: float = Field(default=0.05, ge=0.0, le=0.5, description="Fraction of a full turn.")
    zoom: float = Field(default=0.1, ge=0.0, lt=1.0)
    shift: float = Field(default=0.1, ge=0.0, lt=1.0)


class PlateauSchedule(Section):
    kind: Literal["plateau"] = "plateau"
    factor: float = Field(default=0.5, gt=0.0, lt=1.0)
    patience: int = Field(default=2, ge=1)
    min_lr: float = Field(default=1e-6, ge=0.0)


class InverseTimeSchedule(Section):
    kind: Literal["inverse_time"] = "inverse_time"
    decay_steps: int = Field(default=100, ge=1)
    decay_rate: float = Field(default=0.5, gt=0.0)


class CosineSchedule(Section):
    """Linear warm-up from a tenth of ``training.learning_rate`` to it, then cosine decay to ``final_fraction`` of it,
    over the steps the recipe plans (Keras' ``CosineDecay`` with warm-up)."""

    kind: Literal["cosine"] = "cosine"
    warmup_fraction: float = Field(default=0.05, ge=0.0, lt=1.0, description="Share of the planned steps spent warming up.")
    final_fraction: float = Field(default=0.01, ge=0.0, le=1.0, description="Learning rate at the end, as a share of the peak.")


class TrainingConfig(Section):
    """The training recipe. Budgets are in optimiser steps so that one recipe fits a few hundred images and tens of
    thousands: a small dataset trains more epochs, a large one is not slowed down. The values resolved for each
    fold (epochs, steps, patience) are recorded in the report and the manifest."""

    epochs: int = Field(default=30, ge=1, description="Passes over the training rows planned when they give at least "
                                                      "min_steps steps.")
    min_steps: int = Field(
        default=500, ge=0,
        description="Optimiser steps planned at least: max(epochs passes, min_steps) steps. Loss phases (LDAM's "
                    "DRW epoch) keep their share of the budget.",
    )
    min_epoch_steps: int = Field(
        default=50, ge=0,
        description="An epoch (one validation and early-stopping check) is at least this many steps: a small "
                    "training set is passed over several times per epoch instead of validating every few steps.",
    )
    stop_after_steps: int = Field(
        default=250, ge=0,
        description="Early stopping neither stops nor picks its best weights before this many steps.",
    )
    patience_steps: int = Field(
        default=200, ge=1, description="Early-stopping patience in optimiser steps (whole epochs, at least one)."
    )
    monitor: Literal["val_auc", "val_loss"] = Field(
        default="val_auc",
        description="What early stopping watches: val ROC AUC (rank-based, comparable across the strategies' "
                    "losses and steady on small val splits) or the strategy's own val loss.",
    )
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    lr_schedule: CosineSchedule | PlateauSchedule | InverseTimeSchedule = Field(
        default=CosineSchedule(), discriminator="kind"
    )
    tta: Literal["auto", "none"] = Field(
        default="auto",
        description="Test-time augmentation: auto averages the logits of the image, its flips that the augmentation "
                    "allows and, when augmentation.shift > 0, four one-step shifts; none predicts the image alone. "
                    "Applied identically to OOF, val (so calibration sees it), test and new images.",
    )
    mixed_precision: bool = Field(default=False, description="float16 compute on GPU; ignored on CPU.")
    jit_compile: Literal["auto"] | bool = Field(
        default="auto",
        description="XLA compilation of the training step. auto: Keras' rule (XLA when every layer supports it, so "
                    "not with the random augmentation layers). XLA costs seconds of compilation per training: "
                    "on 2 CPU cores a tiny network without augmentation took 9.0 CPU-s to train 4 steps with it "
                    "and 2.2 without; false suits many tiny trainings.",
    )
    calibration: Literal["temperature", "none"] = Field(
        default="temperature",
        description="temperature: divide each fold model's logits by one T fitted on the val split (minimum NLL), "
                    "so probabilities, thresholds and the soft vote are not dominated by an overconfident model; "
                    "rankings (ROC AUC) are unchanged. none: plain softmax.",
    )


class EnsembleConfig(Section):
    threshold_policy: Literal["f1", "youden", "sensitivity"] = Field(
        default="f1", description="Binary tasks: how each model's decision threshold is chosen on OOF predictions."
    )
    target_sensitivity: float = Field(default=0.9, gt=0.0, le=1.0)
    multiclass_policy: Literal["balanced_accuracy", "argmax"] = Field(
        default="balanced_accuracy",
        description="Multi-class tasks: per-class offsets on the log-probabilities that maximise OOF balanced "
                    "accuracy (rare classes are not drowned by the majority), or plain argmax.",
    )
    critical_classes: dict[str, float] = Field(
        default_factory=dict,
        description="Multi-class tasks: class name -> minimum recall on OOF predictions (e.g. {melanoma: 0.8}); "
                    "that class's offset is raised until its OOF recall reaches the target.",
    )
    meta_features: Literal["log_odds", "probabilities"] = Field(
        default="log_odds",
        description="What the stacking logistic regression reads of each member: log-odds (binary log(p/(1-p)), "
                    "multi-class log p of every class) or the probabilities themselves.",
    )
    meta_Cs: list[float] = Field(default=[0.001, 0.01, 0.1, 1.0, 10.0, 100.0], min_length=1)
    inner_folds: int = Field(default=5, ge=2)

    @field_validator("critical_classes")
    @classmethod
    def _recall_targets(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {name: target for name, target in value.items() if not 0.0 < target <= 1.0}
        if bad:
            raise ValueError(f"ensemble.critical_classes targets must lie in (0, 1], got {bad}")
        return value


class ReportConfig(Section):
    bootstrap: int = Field(default=1000, ge=0, description="Bootstrap resamples for test CIs; 0 disables.")
    ci: float = Field(default=0.95, gt=0.0, lt=1.0)


class StrategyParams(Section):
    """Parameters of one imbalance strategy (``strategies.<name>`` in a config)."""


class NoParams(StrategyParams):
    pass


class LDAMParams(StrategyParams):
    max_m: float = Field(default=0.5, gt=0.0)
    s: float = Field(default=30.0, gt=0.0)
    drw_epoch: int = Field(default=10, ge=0, description="Epoch (0-based) from which class re-weighting starts.")
    beta: float = Field(default=0.9999, ge=0.0, lt=1.0)


class SmoteParams(StrategyParams):
    k_neighbors: int = Field(default=5, ge=1)


class FocalParams(StrategyParams):
    gamma: float = Field(default=2.0, ge=0.0)
    beta: float = Field(default=0.9999, ge=0.0, lt=1.0)


# Every strategy name a config may use, with its parameter schema; ``medstack.models.strategies`` implements each
# name (a test keeps the two in step). A fifth strategy is one entry here and one Strategy there.
STRATEGY_PARAMS: dict[str, type[StrategyParams]] = {
    "ldam": LDAMParams,
    "class_weight": NoParams,
    "smote": SmoteParams,
    "custom_loss": FocalParams,
}
