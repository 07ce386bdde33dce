"""The model-side sections of a run's config: network, augmentation, training recipe, strategies, ensembles,
prediction sets and referral (conformal), report; and where a run is tracked (MLflow).

They are part of :class:`medstack.config.RunConfig` (import them from there); they live here so that each config
module can be read in one sitting. The config owns every schema, strategy parameters included
(:data:`STRATEGY_PARAMS`): ``medstack.models`` receives these sections and never the other way round.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    """The CNN. The defaults are configs/pneumoniamnist.yaml's half-width network (docs/benchmarks.md, "A leaner
    default")."""

    filters: list[int] = Field(default=[16, 32, 64], min_length=1)
    convs_per_block: int = Field(default=2, ge=1)
    batch_norm: bool = True
    head: Literal["flatten", "gap"] = "gap"
    dense_units: int = Field(default=128, ge=1)
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
        default=400, ge=0,
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


class SetReferral(Section):
    """Refer an image whose prediction set at ``level`` is not one class (two or more: ambiguous; empty: unlike
    every class). Nothing is fitted."""

    rule: Literal["set"] = "set"
    level: float = Field(default=0.9, gt=0.0, lt=1.0, description="One of conformal.levels.")


class CertaintyReferral(Section):
    """Refer the least certain images (conformal confidence below a threshold chosen on the calibration rows) and
    empty sets at ``level``, at most ``max_referral`` of the calibration rows, the least referral that keeps the
    recall of ``target_class`` at ``target_sensitivity`` or more (else the best recall within the budget)."""

    rule: Literal["certainty"] = "certainty"
    level: float = Field(default=0.9, gt=0.0, lt=1.0, description="One of conformal.levels: empty sets at this "
                                                                   "level are referred too.")
    max_referral: float = Field(default=0.2, ge=0.0, lt=1.0, description="Most of the calibration rows referred.")
    target_sensitivity: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Kept-case recall of target_class to reach; None refers the least certain max_referral.")
    target_class: str | None = Field(
        default=None, description="Class name whose kept recall is targeted; None: the positive class (binary). "
                                  "Required with target_sensitivity for K > 2.")


class ConformalConfig(Section):
    """Class-conditional (Mondrian) conformal prediction sets and the referral rule of every model of a run
    (medstack.models.conformal, medstack.models.referral; docs/how-it-works.md)."""

    levels: list[float] = Field(default=[0.9, 0.95], min_length=1,
                                description="Coverage levels of the sets (per class), each strictly in (0, 1).")
    calibration: Literal["split", "oof"] = Field(
        default="split",
        description="split: a held-out stratified slice of the training split (calibration_share), carved before "
                    "the folds and seen by no fitted part of the run: the exact split-conformal guarantee holds for "
                    "the deployed models (the K-fold average, the vote, the stack). oof: the out-of-fold "
                    "predictions, no slice, but they calibrate single fold models: empirical coverage only.")
    calibration_share: float = Field(
        default=0.1, gt=0.0, le=0.5,
        description="split: the share of the training split held out for calibration (groups kept whole). A class "
                    "needs ceil(level / (1 - level)) calibration rows for a level (9 for 90%, 19 for 95%); below "
                    "that the level is refused for it and the report says so.")
    referral: SetReferral | CertaintyReferral = Field(default=SetReferral(), discriminator="rule")

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < v < 1.0 for v in value) or len(set(value)) != len(value):
            raise ValueError(f"conformal.levels must be distinct and strictly between 0 and 1, got {value}")
        return sorted(value)

    @field_validator("referral", mode="before")
    @classmethod
    def _set_rule_by_default(cls, value: object) -> object:
        return {"rule": "set", **value} if isinstance(value, dict) and "rule" not in value else value

    @model_validator(mode="after")
    def _referral_level_is_calibrated(self) -> "ConformalConfig":
        if self.referral.level not in self.levels:
            raise ValueError(f"conformal.referral.level {self.referral.level} must be one of conformal.levels "
                             f"{self.levels}")
        return self


class DistillConfig(Section):
    """The run's one-network model, ``student`` (medstack.pipeline.student; docs/how-it-works.md): the run's network
    trained once on the whole training split, on the labels with balanced class weights, early-stopped and
    temperature-scaled on val; its decision, prediction sets and referral point come from the calibration slice.
    It serves at one network's cost (``--engine student``). Learning the ensemble's out-of-fold probabilities
    instead was measured worse than the labels (docs/benchmarks.md), so the labels are what it learns."""

    enabled: bool = Field(default=True, description="Train the student (one more training per run); false: none.")
    tta: Literal["none", "auto"] = Field(
        default="none",
        description="The student's test-time views: none, one network pass an image (its serving cost); auto, the "
                    "views of training.tta: auto. Measured on PneumoniaMNIST, one view ranked test images within 0.002 "
                    "ROC AUC of five at 4.3-4.4x the images a second (docs/benchmarks.md).",
    )


class ReportConfig(Section):
    bootstrap: int = Field(default=1000, ge=0, description="Bootstrap resamples for test CIs; 0 disables.")
    ci: float = Field(default=0.95, gt=0.0, lt=1.0)


class MlflowTracking(Section):
    """Where a run is logged in MLflow (medstack.tracking; docs/mlflow.md). Needs the mlflow extra."""

    uri: str | None = Field(default=None, description=(
        "Tracking URI (http://host:5000, sqlite:////abs/mlflow.db, databricks); None: $MLFLOW_TRACKING_URI, else "
        "medstack's own store, sqlite in medstack's user data folder (~/.local/share/medstack/mlflow on Linux)."))
    experiment: str | None = Field(default=None, description="Experiment name; None: the config's name.")
    artifact_location: str | None = Field(default=None, description=(
        "Where an experiment medstack creates keeps its artifacts; None: the server's choice (http), else an "
        "'artifacts' folder beside a sqlite database."))


class TrackingConfig(Section):
    """Experiment tracking beside the run folder (medstack.tracking)."""

    mlflow: MlflowTracking | None = Field(default=None, description=(
        "Log every run to MLflow ({} takes every default); None: only when $MLFLOW_TRACKING_URI is set or "
        "registry.backend is mlflow."))


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
