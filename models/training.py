"""One base model's contract: build / fit / predict_proba / save / load, whatever its imbalance strategy.

Voting and stacking only ever see :meth:`CNNClassifier.predict_proba`, so no strategy is special-cased
downstream. Validation data drives early stopping and the learning-rate schedule and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from medstack.config import AugmentationConfig, ModelConfig, StrategyParams, TrainingConfig, array_sha
from medstack.models.calibration import calibration_note, fit_temperature, nll, prior_nll, with_temperature
from medstack.models.feed import training_input
from medstack.models.network import NETWORK_IMAGES, build_model, rows_per_call, tta_view_count, tta_views, with_tta
from medstack.models.recipe import Recipe, SoftmaxAUC, callbacks, learning_rate, resolve_recipe
from medstack.models.strategies import get_strategy


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
        positive_class: int = 1,
        on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
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
        self.positive_class = positive_class
        self.on_epoch = on_epoch  # (epoch done, 1-based; epochs planned; that epoch's logs) for progress listeners

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            targets: np.ndarray | None = None) -> "CNNClassifier":
        """Train on (x, y) with the strategy's resampling/weights/loss schedule, early-stopping on (x_val, y_val),
        for the step budget :func:`resolve_recipe` plans; then wrap test-time augmentation and temperature.

        ``targets`` (N, K probabilities) replace the one-hot labels as what the network learns: a distilled
        student learns its teacher's probabilities. ``y`` still gives the class counts, early stopping and
        calibration still use the labels of val, and the strategy may not resample the rows."""
        started = time.perf_counter()
        cfg = self.training
        plan = get_strategy(self.strategy).plan(x, y, self.num_classes, self.params, cfg.epochs, self.seed)
        if targets is not None:
            targets = _checked_targets(targets, len(x), self.num_classes)
            if not np.array_equal(plan.source_rows, np.arange(len(x))):
                raise ValueError(f"strategy {self.strategy!r} resamples its rows: it cannot learn given targets")
        learned = _one_hot(plan.y, self.num_classes) if targets is None else targets
        recipe = resolve_recipe(len(plan.x), cfg)
        self.plan_, self.recipe_ = plan, recipe
        mixed = cfg.mixed_precision and has_gpu()
        net = build_model(
            x.shape[1:],
            self.num_classes,
            self.model,
            self.augmentation,
            self.image_size,
            seed=self.seed,
            mixed_precision=mixed,
            cosine_scale=plan.cosine_scale,
            name=f"cnn_{self.strategy}",
        )
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate(cfg, recipe))
        if mixed:  # float16 gradients underflow unscaled; Keras scales only for a model-wide mixed policy, not ours
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Every variable exists before the first trace. Keras (TensorFlow backend, no distribution strategy) would
        # create the optimizer's slots and the metrics' counters inside the first trace of the training step, which
        # makes tf.function trace that step twice; the second trace was a quarter of a small fold's training CPU.
        optimizer.build(net.trainable_variables)
        feed = training_input(plan.x, learned, cfg.batch_size, self.seed, recipe.steps_per_epoch)
        val_data = (x_val, _one_hot(y_val, self.num_classes))
        lr_callbacks, early_stopping = callbacks(cfg, recipe)
        # Loss phases are given on the configured epoch scale (LDAM's DRW epoch) and stretch with the budget.
        phases = [(recipe.stretch(start, cfg.epochs), loss) for start, loss in plan.loss_phases]
        history: dict[str, list[float]] = {}
        for i, (start, loss) in enumerate(phases):
            end = phases[i + 1][0] if i + 1 < len(phases) else recipe.epochs
            last = i + 1 == len(phases)
            # Same optimizer object across phases: Adam moments and the LR schedule carry over the DRW switch.
            net.compile(optimizer=optimizer, loss=loss, metrics=self._metrics(), jit_compile=cfg.jit_compile)
            last_phase_start = len(history.get("loss", []))
            train_data, train_fit = feed.next_epochs(end - start)
            fitted = net.fit(
                train_data,
                validation_data=val_data,
                # Keras would validate in batches of 32 (fit sees no batch_size with a dataset); the training batch
                # halves the calls at a training batch's memory (on 2 CPU cores a val pass took 2% less CPU; the
                # calls matter more on a GPU).
                validation_batch_size=cfg.batch_size,
                epochs=end,
                initial_epoch=start,
                class_weight=plan.class_weight,
                callbacks=[*lr_callbacks, *self._progress(recipe), *([early_stopping] if last else [])],
                verbose=self.verbose,
                **train_fit,
            )
            for key, values in fitted.history.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            history.setdefault("loss_phase", []).extend([i] * len(fitted.history.get("loss", [])))
        views = tta_views(self.augmentation, x.shape[1:], cfg.tta)
        tta_net = with_tta(net, views)
        temperature = val_nll = None
        notes = list(plan.notes)
        if cfg.calibration == "temperature":
            val_logits = predict_logits(tta_net, x_val)  # calibration sees the same TTA as every prediction
            temperature = fit_temperature(val_logits, y_val)
            val_nll = (round(nll(val_logits, y_val), 4), round(nll(val_logits, y_val, temperature), 4))
            note = calibration_note(temperature, val_nll[1], prior_nll(y_val, self.num_classes))
            if note:
                notes.append(note)
        self.network_ = net  # as trained and compiled: raw logits of one view
        self.model_ = tta_net if temperature is None else with_temperature(tta_net, temperature)  # predicts, is saved
        self.history_ = history
        self.info_ = {
            "epochs_run": len(history.get("loss", [])),
            "steps_run": int(optimizer.iterations.numpy()) if hasattr(optimizer.iterations, "numpy") else None,
            "best_epoch": _best_epoch(history, recipe, last_phase_start),
            "seconds": round(time.perf_counter() - started, 2),
            "n_train": int(len(x)),
            "n_synthetic": int(np.sum(plan.source_rows < 0)),
            # what this model trained on, SMOTE samples included (and a student's targets)
            "train_inputs_sha": array_sha(plan.x, plan.y) if targets is None else array_sha(plan.x, plan.y, targets),
            "class_weight": plan.class_weight,
            "loss_phases": [{"epoch": start, "loss": loss.get_config()} for start, loss in phases],
            "recipe": recipe.as_dict(),
            "tta_views": len(views),
            "notes": notes,
            "temperature": temperature,
            "val_nll_before_after": val_nll,
        }
        return self

    def _metrics(self) -> list[keras.metrics.Metric]:
        """Fresh metric objects for one compile (one loss phase): Keras resets a compile's metrics only once they
        are built, so objects carried over from the previous phase would add its last epoch to the next one's.
        Objects, not names: their counters exist before the first trace (see ``optimizer.build`` in :meth:`fit`)."""
        positive = self.positive_class if self.num_classes == 2 else None
        # CategoricalAccuracy is what "accuracy" resolves to for one-hot labels.
        return [keras.metrics.CategoricalAccuracy(name="accuracy"), SoftmaxAUC(positive_class=positive, name="auc")]

    def _progress(self, recipe: Recipe) -> list[keras.callbacks.Callback]:
        """A callback that hands every finished epoch to ``on_epoch`` (none without it). It only reads the logs."""
        if self.on_epoch is None:
            return []
        on_epoch = self.on_epoch

        def on_epoch_end(epoch: int, logs: dict | None = None) -> None:
            on_epoch(epoch + 1, recipe.epochs, _floats(logs or {}))

        return [keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)]

    def predict_proba(self, x: np.ndarray, images: int = NETWORK_IMAGES) -> np.ndarray:
        return self.predict_proba_many([x], images)[0]

    def predict_proba_many(self, arrays: list[np.ndarray], images: int = NETWORK_IMAGES) -> list[np.ndarray]:
        """Class probabilities for each of ``arrays``, their rows batched together (:func:`predict_logits_many`)."""
        return [np.asarray(keras.ops.softmax(keras.ops.convert_to_tensor(logits, "float32"), axis=-1), np.float64)
                for logits in predict_logits_many(self.model_, arrays, images)]

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


def _floats(logs: dict) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):  # not a number: not a metric
            pass
    return out


def _checked_targets(targets: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Soft targets as float32, after checking they are one probability row per training row."""
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != (n, num_classes):
        raise ValueError(f"targets must be ({n}, {num_classes}): one probability per class per training row, "
                         f"got {targets.shape}")
    if not np.isfinite(targets).all() or (targets < 0).any() or not np.allclose(targets.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("targets must be finite, non-negative and sum to 1 in every row")
    return targets.astype(np.float32)


def _one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]


def predict_logits(model: keras.Model, x: np.ndarray, images: int = NETWORK_IMAGES) -> np.ndarray:
    """The model's logits for ``x`` (:func:`predict_logits_many` of one array)."""
    return predict_logits_many(model, [x], images)[0]


def predict_logits_many(model: keras.Model, arrays: list[np.ndarray], images: int = NETWORK_IMAGES) -> list[np.ndarray]:
    """The model's logits for each of ``arrays``, in batches called directly (eagerly) rather than through
    ``model.predict``: every fold model and wrapper would otherwise trace a new ``tf.function`` per input length,
    which is slow for small arrays and floods the log with TensorFlow's retracing warnings. A batch may span two
    arrays, so a fold predicts its held-out rows, val, test and calibration slice in as few calls as their rows
    need: an eager call has a fixed cost, and a row's logits do not depend on the rows beside it in its batch. A
    batch has as many rows as keep the network within ``images`` images, its test-time views included
    (:func:`medstack.models.network.rows_per_call`): an eager call keeps every view's activations until it returns."""
    if not arrays:
        return []
    batch_size = rows_per_call(tta_view_count(model), images)
    batches: list[list[np.ndarray]] = []
    batch: list[np.ndarray] = []
    room = batch_size
    for array in arrays:
        start = 0
        while start < len(array):
            stop = min(len(array), start + room)
            batch.append(array[start:stop])
            room -= stop - start
            start = stop
            if room == 0:
                batches.append(batch)
                batch, room = [], batch_size
    if batch:
        batches.append(batch)
    out = [keras.ops.convert_to_numpy(model(np.concatenate(b) if len(b) > 1 else b[0], training=False))
           for b in batches]
    logits = (np.concatenate(out) if out else np.zeros((0, int(model.output_shape[-1])))).astype(np.float32)
    return np.split(logits, np.cumsum([len(a) for a in arrays])[:-1])


def _best_epoch(history: dict[str, list[float]], recipe: Recipe, last_phase_start: int) -> int | None:
    """0-based epoch whose weights early stopping kept: the monitor's best in the last phase, from the earliest
    epoch it watches (as ``EarlyStopping(start_from_epoch=...)``)."""
    values = history.get(recipe.monitor, [])
    first = max(last_phase_start, recipe.stop_from_epoch)
    watched = values[first:]
    if not watched:
        return None
    pick = np.argmax if recipe.monitor == "val_auc" else np.argmin
    return int(first + int(pick(watched)))


def _gpus() -> list:
    """The GPUs the backend sees, listed without initialising them: TensorFlow's physical devices; for another
    backend, the names Keras gives its devices ("gpu:0", "cuda:0")."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    return [d for d in keras.distribution.list_devices() if "gpu" in d.lower() or "cuda" in d.lower()]


def has_gpu() -> bool:
    """Whether the backend sees a GPU (mixed precision is used only there)."""
    return bool(_gpus())


def configure_accelerators() -> list[str]:
    """Turn on TensorFlow GPU memory growth (so several trainings share one GPU); returns the GPUs seen."""
    gpus = _gpus()
    if keras.backend.backend() != "tensorflow":
        return gpus
    import tensorflow as tf

    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth was set earlier in this process
            pass
    return [g.name for g in gpus]
