"""The whole ensemble as ONE Keras model, and the per-member Python path it must equal.

:func:`fused_model` wires every fold model of every member into one graph: softmax of each fold's calibrated
logits, the mean over folds per member, the soft vote over members and the stacking meta-model applied per fold
(:class:`StackingHead`) and averaged. Its outputs are a dict ``{model name: (N, K) probabilities}``; one batch is
one call. :class:`MemberScorer` computes the same numbers fold model by fold model in NumPy (float64): it is the
reference the fused graph is tested against, and the slower path the benchmark compares with.

The fused model (and its export) outputs probabilities only: prediction sets, p-values and referral are applied to
its outputs from model.json's calibration (:func:`medstack.inference.trust.trust_columns`), never inside the graph.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import layers, ops

import medstack.models.losses  # noqa: F401  registered Keras objects the fold models name, so that an
import medstack.models.network  # noqa: F401  exported ensemble loads in safe mode after importing this module
import medstack.models.recipe  # noqa: F401
from medstack.inference.bundle import Bundle, softmax
from medstack.inference.schema import ENGINES
from medstack.models.ensemble import PROBA_CLIP
from medstack.models.network import rows_per_call, tta_view_count
from medstack.run_folder import STUDENT

Scores = dict[str, np.ndarray]


@keras.saving.register_keras_serializable(package="medstack")
class StackingHead(layers.Layer):
    """The stacking logistic regression on the fold-k probabilities of every member (inputs in feature order), read
    as ``features`` says: their log-odds or the probabilities (:func:`medstack.models.ensemble.stack_features`)."""

    def __init__(self, coef: list, intercept: list, num_classes: int, features: str = "probabilities", **kwargs):
        super().__init__(**kwargs)
        self.coef = [[float(v) for v in row] for row in coef]
        self.intercept = [float(v) for v in intercept]
        self.num_classes = int(num_classes)
        self.features = features

    def call(self, inputs):
        columns = list(inputs)
        if self.features == "log_odds":
            # log of the probability clipped to [PROBA_CLIP, 1 - PROBA_CLIP], as the log clipped to the bounds' logs
            low, high = float(np.log(PROBA_CLIP)), float(np.log1p(-PROBA_CLIP))
            columns = [ops.clip(ops.log(ops.maximum(p, 1e-30)), low, high) for p in columns]
            if self.num_classes == 2:
                columns = [p[:, 1:] - p[:, :1] for p in columns]
        elif self.num_classes == 2:
            columns = [p[:, 1:] for p in columns]
        features = ops.concatenate(columns, axis=-1)
        coef = ops.convert_to_tensor(np.asarray(self.coef, np.float32))
        z = ops.matmul(features, ops.transpose(coef)) + ops.convert_to_tensor(np.asarray(self.intercept, np.float32))
        if self.num_classes == 2:
            p1 = ops.sigmoid(z)
            return ops.concatenate([1.0 - p1, p1], axis=-1)
        return ops.softmax(z, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "coef": self.coef, "intercept": self.intercept, "num_classes": self.num_classes,
                "features": self.features}


def fused_model(bundle: Bundle) -> keras.Model:
    """One Keras model: raw pixels (N, H, W, C) in, every model's class probabilities out (a dict by name)."""
    members = bundle.member_models()
    inputs = keras.Input(shape=bundle.input_shape, dtype="float32", name="pixels")
    fold_probas: dict[str, list[Any]] = {}
    for strategy, models in members.items():
        fold_probas[strategy] = []
        for k, model in enumerate(models, start=1):
            # A fresh functional wrapper gives each fold model a unique name in the graph (every fold of one
            # strategy was saved under the same name); the layers and weights are the loaded ones. training=False
            # is pinned in the graph: a loaded fold model called with training=None runs its random augmentation.
            fold = keras.Model(model.inputs[0], model.outputs[0], name=f"{strategy}_fold{k}")
            fold_probas[strategy].append(layers.Softmax(name=f"p_{strategy}_fold{k}")(fold(inputs, training=False)))
    outputs = {s: _mean(p, s) for s, p in fold_probas.items()}
    outputs["soft_voting"] = _mean(list(outputs.values()), "soft_voting")
    stack = bundle.stacking
    n_folds = len(next(iter(fold_probas.values())))
    heads = [StackingHead(stack.coef.tolist(), stack.intercept.tolist(), stack.num_classes, stack.inputs,
                          name=f"stacking_fold{k + 1}")([fold_probas[name][k] for name in stack.features])
             for k in range(n_folds)]
    outputs["stacking"] = _mean(heads, "stacking")
    if bundle.has_student:
        outputs[STUDENT] = student_probabilities(bundle, inputs)
    return keras.Model(inputs, {name: outputs[name] for name in bundle.models}, name=f"medstack_{bundle.run_id}")


def student_probabilities(bundle: Bundle, inputs: Any) -> Any:
    """The student's class probabilities of ``inputs`` in a functional graph (inference mode pinned)."""
    model = bundle.student_model()
    network = keras.Model(model.inputs[0], model.outputs[0], name=STUDENT)
    return layers.Softmax(name=f"p_{STUDENT}")(network(inputs, training=False))


def student_network(bundle: Bundle) -> keras.Model:
    """The student alone, as :func:`fused_model` is the whole bundle: raw pixels in, ``{"student": probabilities}``
    out (one network's cost: ``--engine student`` of predict, serve-model and export)."""
    inputs = keras.Input(shape=bundle.input_shape, dtype="float32", name="pixels")
    outputs = {STUDENT: student_probabilities(bundle, inputs)}
    return keras.Model(inputs, outputs, name=f"medstack_{bundle.run_id}_student")


def _mean(tensors: list[Any], name: str) -> Any:
    if len(tensors) == 1:
        return layers.Identity(name=name)(tensors[0])
    return layers.Average(name=name)(tensors)


def compiled_call(model: keras.Model) -> Callable[[np.ndarray], Any]:
    """``model`` called in inference mode, traced once for any batch size under TensorFlow (eager otherwise)."""
    if keras.backend.backend() != "tensorflow":
        return lambda x: model(x, training=False)
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def scoring_rows(bundle: Bundle, student: bool = False) -> int:
    """Rows of one scoring call, so that no network of the bundle (or its student's) sees more than
    :data:`medstack.models.network.NETWORK_IMAGES` images at once, its test-time views included."""
    networks = [bundle.student_model()] if student else [m for ms in bundle.member_models().values() for m in ms]
    return rows_per_call(max(tta_view_count(m) for m in networks))


def _in_chunks(score: Callable[[np.ndarray], Scores], images: np.ndarray, rows: int) -> Scores:
    """``score`` of ``images`` (float32) in calls of at most ``rows`` rows, the outputs joined in order."""
    x = np.asarray(images, np.float32)
    if len(x) <= rows:
        return score(x)
    parts = [score(x[start:start + rows]) for start in range(0, len(x), rows)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class FusedScorer:
    """Scores batches through the fused model (or the student's network, ``student=True``): one graph call per
    :func:`scoring_rows` rows of a batch."""

    def __init__(self, bundle: Bundle, model: keras.Model | None = None, student: bool = False):
        self.model = model or (student_network(bundle) if student else fused_model(bundle))
        self.rows = scoring_rows(bundle, student)
        self._call = compiled_call(self.model)

    def __call__(self, images: np.ndarray) -> Scores:
        return _in_chunks(self._score, images, self.rows)

    def _score(self, x: np.ndarray) -> Scores:
        return {name: np.asarray(ops.convert_to_numpy(value), np.float64) for name, value in self._call(x).items()}


class MemberScorer:
    """The per-member Python path: every fold model called on its own, softmax, means and stacking in NumPy."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.rows = scoring_rows(bundle)
        self._calls = {s: [compiled_call(m) for m in ms] for s, ms in bundle.member_models().items()}
        self._student = compiled_call(bundle.student_model()) if bundle.has_student else None

    def __call__(self, images: np.ndarray) -> Scores:
        return _in_chunks(self._score, images, self.rows)

    def _score(self, x: np.ndarray) -> Scores:
        by_fold = {s: [softmax(ops.convert_to_numpy(call(x))) for call in calls] for s, calls in self._calls.items()}
        out = {s: np.mean(p, axis=0) for s, p in by_fold.items()}
        out["soft_voting"] = np.mean([out[s] for s in by_fold], axis=0)
        out["stacking"] = self.bundle.stacking.predict_proba_per_fold(by_fold)
        if self._student is not None:
            out[STUDENT] = softmax(ops.convert_to_numpy(self._student(x)))
        return {name: out[name] for name in self.bundle.models}


def make_scorer(bundle: Bundle, engine: str = "fused") -> Callable[[np.ndarray], Scores]:
    """``fused``: every model in one graph; ``members``: fold model by fold model in NumPy (the reference);
    ``student``: the one-network model alone (its probabilities only). Built and traced once per loaded bundle and
    engine: a second predict or evaluate with the same :class:`Bundle` reuses it."""
    if engine == "fused":
        return bundle.once("scorer:fused", lambda: FusedScorer(bundle))
    if engine == "members":
        return bundle.once("scorer:members", lambda: MemberScorer(bundle))
    if engine == STUDENT:
        bundle.student_model()  # a bundle without one: a BundleError that says so, before any graph is built
        return bundle.once("scorer:student", lambda: FusedScorer(bundle, student=True))
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def export_fused(bundle: Bundle, keras_path: str, saved_model_dir: str | None = None, engine: str = "fused"
                 ) -> keras.Model:
    """Write the fused model (or, ``engine="student"``, the student's network alone) as one ``.keras`` file
    (atomically) and, optionally, a SavedModel (``serve``)."""
    import shutil
    import tempfile
    from pathlib import Path

    from medstack.storage import atomic_directory, atomic_file

    model = student_network(bundle) if engine == STUDENT else fused_model(bundle)
    target = Path(keras_path)
    if target.suffix != ".keras":
        raise ValueError(f"{target}: the one-file export must end in .keras")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as scratch, atomic_file(target, mode=0o644) as handle:
        model.save(Path(scratch) / "ensemble.keras")  # Keras picks the format by extension; copied in atomically
        with open(Path(scratch) / "ensemble.keras", "rb") as saved:
            shutil.copyfileobj(saved, handle)
    if saved_model_dir:
        with atomic_directory(saved_model_dir) as tmp_dir:
            _saved_model_archive(model).write_out(str(tmp_dir / "model"), verbose=False)
            for item in (tmp_dir / "model").iterdir():
                item.rename(tmp_dir / item.name)
            (tmp_dir / "model").rmdir()
    return model


def _saved_model_archive(model: keras.Model) -> keras.export.ExportArchive:
    """What ``model.export(format="tf_saved_model")`` writes (a ``serve`` endpoint, also ``serving_default``, and
    the variables), without its walk of every tracked object for lookup tables: the fused model has none, and the
    walk traced a default signature for each of its nested fold models (the smoke bundle's SavedModel took 10.4
    CPU-s to write with it, 4.3 without it, with the same outputs and variables)."""
    archive = keras.export.ExportArchive()
    spec = keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")
    archive.add_endpoint("serve", lambda pixels: model(pixels, training=False), input_signature=[spec])
    archive.add_variable_collection("variables", model.variables)
    return archive
