"""One base model's contract: build / fit / predict_proba / save / load, whatever its imbalance strategy.

Voting and stacking only ever see :meth:`CNNClassifier.predict_proba`, so no strategy is special-cased
downstream. Validation data drives early stopping and the learning-rate schedule and nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medstack.config import AugmentationConfig, ModelConfig, TrainingConfig, array_sha
from medstack.models.calibration import calibration_note, fit_temperature, nll, prior_nll, with_temperature
from medstack.models.network import build_model
from medstack.models.strategies import StrategyParams, get_strategy


class CNNClassifier:
    """A configurable CNN trained with one imbalance strategy. Fitted state ends in ``_``."""

    def __init__(
        self,
        strategy: str,
        params: StrategyParams,
        num_classes: int,
        model: ModelConfig,
        augmentation: AugmentationConfig | None,
        training: TrainingConfig,
        image_size: tuple[int, int] | None = None,
        seed: int = 0,
        verbose: int = 0,
    ):
        self.strategy = strategy
        self.params = params
        self.num_classes = num_classes
        self.model = model
        self.augmentation = augmentation
        self.training = training
        self.image_size = image_size
        self.seed = seed
        self.verbose = verbose

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> "CNNClassifier":
        """Train on (x, y) with the strategy's resampling/weights/loss schedule, early-stopping on (x_val, y_val)."""
        started = time.perf_counter()
        cfg = self.training
        plan = get_strategy(self.strategy).plan(x, y, self.num_classes, self.params, cfg.epochs, self.seed)
        self.plan_ = plan
        net = build_model(
            x.shape[1:],
            self.num_classes,
            self.model,
            self.augmentation,
            self.image_size,
            seed=self.seed,
            mixed_precision=cfg.mixed_precision and _has_gpu(),
            cosine_scale=plan.cosine_scale,
            name=f"cnn_{self.strategy}",
        )
        optimizer = keras.optimizers.Adam(learning_rate=_learning_rate(cfg))
        train_batches = _ShuffledBatches(plan.x, _one_hot(plan.y, self.num_classes), cfg.batch_size, self.seed)
        val_data = (x_val, _one_hot(y_val, self.num_classes))
        history: dict[str, list[float]] = {}
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True
        )
        phases = plan.loss_phases
        for i, (start, loss) in enumerate(phases):
            end = phases[i + 1][0] if i + 1 < len(phases) else cfg.epochs
            last = i + 1 == len(phases)
            # Same optimizer object across phases: Adam moments and the LR schedule carry over the DRW switch.
            net.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
            callbacks = _lr_callbacks(cfg) + ([early_stopping] if last else [])
            last_phase_start = len(history.get("loss", []))
            fitted = net.fit(
                train_batches,
                validation_data=val_data,
                epochs=end,
                initial_epoch=start,
                class_weight=plan.class_weight,
                callbacks=callbacks,
                shuffle=False,  # train_batches shuffles itself, seeded
                verbose=self.verbose,
            )
            for key, values in fitted.history.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            history.setdefault("loss_phase", []).extend([i] * len(fitted.history.get("loss", [])))
        temperature = val_nll = None
        notes = list(plan.notes)
        if cfg.calibration == "temperature":
            val_logits = net.predict(x_val, batch_size=256, verbose=0)
            temperature = fit_temperature(val_logits, y_val)
            val_nll = (round(nll(val_logits, y_val), 4), round(nll(val_logits, y_val, temperature), 4))
            note = calibration_note(temperature, val_nll[1], prior_nll(y_val, self.num_classes))
            if note:
                notes.append(note)
        self.network_ = net  # as trained and compiled: raw logits
        self.model_ = net if temperature is None else with_temperature(net, temperature)  # predicts, is saved
        self.history_ = history
        val_tail = history.get("val_loss", [])[last_phase_start:]
        self.info_ = {
            "epochs_run": len(history.get("loss", [])),
            "best_epoch": int(last_phase_start + int(np.argmin(val_tail))) if val_tail else None,
            "seconds": round(time.perf_counter() - started, 2),
            "n_train": int(len(x)),
            "n_synthetic": int(np.sum(plan.source_rows < 0)),
            "train_inputs_sha": array_sha(plan.x, plan.y),  # what this model trained on, SMOTE samples included
            "class_weight": plan.class_weight,
            "loss_phases": [{"epoch": start, "loss": loss.get_config()} for start, loss in phases],
            "notes": notes,
            "temperature": temperature,
            "val_nll_before_after": val_nll,
        }
        return self

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        logits = self.model_.predict(x, batch_size=batch_size, verbose=0)
        return np.asarray(keras.ops.softmax(keras.ops.convert_to_tensor(logits, "float32"), axis=-1), dtype=np.float64)

    def save(self, path: str | Path) -> None:
        self.model_.save(path)

    @classmethod
    def load(cls, path: str | Path) -> "CNNClassifier":
        """A classifier that predicts with a saved ``.keras`` model (loaded in Keras' safe mode)."""
        net = keras.saving.load_model(path, safe_mode=True)
        obj = cls.__new__(cls)
        obj.model_ = net
        obj.num_classes = int(net.output_shape[-1])
        return obj


def _one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]


class _ShuffledBatches(keras.utils.PyDataset):
    """Training batches in a new order every epoch, the same orders for the same seed.

    ``fit(shuffle=True)`` on arrays draws its order from the backend's unseeded global RNG, so two trainings of
    one fold with one seed ended far apart (LDAM probabilities up to 0.5 apart on the tiny test config). A global
    seed would not fix it: trainings run in parallel threads and share that state. A ``PyDataset`` keeps this
    backend-neutral (no TensorFlow needed under ``KERAS_BACKEND=jax``) and slices the arrays without copying them.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.x[rows], self.y[rows]

    def on_epoch_end(self) -> None:
        self._order = self._rng.permutation(len(self.x))


def _learning_rate(cfg: TrainingConfig) -> Any:
    schedule = cfg.lr_schedule
    if schedule.kind == "inverse_time":
        return keras.optimizers.schedules.InverseTimeDecay(cfg.learning_rate, schedule.decay_steps, schedule.decay_rate)
    return cfg.learning_rate


def _lr_callbacks(cfg: TrainingConfig) -> list[keras.callbacks.Callback]:
    schedule = cfg.lr_schedule
    if schedule.kind != "plateau":
        return []
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=schedule.factor, patience=schedule.patience, min_lr=schedule.min_lr
        )
    ]


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in keras.distribution.list_devices())
    except Exception:  # some backends list no devices before first use
        return False


def configure_accelerators() -> list[str]:
    """Turn on TensorFlow GPU memory growth (so several trainings share one GPU); returns the GPUs seen."""
    if keras.backend.backend() != "tensorflow":
        return [d for d in keras.distribution.list_devices() if "gpu" in d.lower() or "cuda" in d.lower()]
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth was set earlier in this process
            pass
    return [g.name for g in gpus]
