"""The code that runs only on a GPU, exercised on CPU: mixed precision (float16 compute, float32 logits and
variables, only when a GPU is seen) and memory growth on every GPU TensorFlow lists. The third GPU path, one
training per GPU on a Dask cluster, is tests/test_cluster.py's."""

import keras
import numpy as np
import pytest

from medstack.config import ModelConfig, NoParams, TrainingConfig
from medstack.models import training as training_module
from medstack.models.network import build_model
from medstack.models.training import CNNClassifier, configure_accelerators, has_gpu

pytestmark = pytest.mark.slow

SMALL = ModelConfig(filters=[4, 8], convs_per_block=1, dense_units=8, batch_norm=True, head="gap")
TWO_STEPS = TrainingConfig(epochs=2, jit_compile=False, batch_size=16, min_steps=0, min_epoch_steps=0,
                           mixed_precision=True)


def _compute_dtypes(net: keras.Model) -> dict[str, str]:
    return {layer.name: layer.dtype_policy.compute_dtype for layer in net.layers if layer.weights}


def test_a_mixed_precision_network_computes_in_float16_and_keeps_float32_logits_and_weights(rng, tmp_path):
    net = build_model((8, 8, 1), 2, SMALL, None, seed=1, mixed_precision=True)
    dtypes = _compute_dtypes(net)
    assert {dtypes[name] for name in dtypes if name.startswith("block")} == {"float16"}, dtypes
    assert dtypes[net.layers[-1].name] == "float32"  # the logits layer: softmax and losses see float32
    assert {w.dtype for w in net.weights} == {"float32"}  # master weights stay float32
    x = rng.integers(0, 255, (6, 8, 8, 1)).astype("uint8")
    logits = net.predict(x, verbose=0)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()

    path = tmp_path / "mixed.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    assert _compute_dtypes(loaded) == dtypes
    assert np.array_equal(loaded.predict(x, verbose=0), logits)


@pytest.mark.parametrize("gpu", [True, False])
def test_training_uses_mixed_precision_only_when_a_gpu_is_seen(rng, monkeypatch, tmp_path, gpu):
    """``training.mixed_precision: true`` is honoured where :func:`has_gpu` says yes (stood in for here, so the
    float16 network really trains on this CPU, its loss scaled against underflow) and ignored on a CPU; the model
    saves and loads either way."""
    monkeypatch.setattr(training_module, "has_gpu", lambda: gpu)
    x = rng.integers(0, 255, (48, 8, 8, 1)).astype("uint8")
    y = np.array([0] * 36 + [1] * 12)
    clf = CNNClassifier("class_weight", NoParams(), 2, SMALL, None, TWO_STEPS, seed=0).fit(x, y, x[:16], y[:16])
    convs = {d for name, d in _compute_dtypes(clf.network_).items() if "conv" in name}
    assert convs == ({"float16"} if gpu else {"float32"})
    assert type(clf.network_.optimizer).__name__ == ("LossScaleOptimizer" if gpu else "Adam")
    assert clf.info_["steps_run"] == 6 and np.isfinite(clf.history_["loss"]).all()
    proba = clf.predict_proba(x[:5])
    assert proba.dtype == np.float64 and np.allclose(proba.sum(axis=1), 1.0)
    clf.save(tmp_path / "model.keras")
    assert np.array_equal(CNNClassifier.load(tmp_path / "model.keras").predict_proba(x[:5]), proba)


class _FakeGPU:
    def __init__(self, name: str):
        self.name, self.device_type = name, "GPU"


def test_memory_growth_is_turned_on_for_every_gpu_even_one_already_initialised(monkeypatch):
    import tensorflow as tf

    gpus = [_FakeGPU("/physical_device:GPU:0"), _FakeGPU("/physical_device:GPU:1")]
    grown = []

    def set_memory_growth(device, enable):
        if device is gpus[1]:  # a device this process already used: TensorFlow refuses to change it
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        grown.append((device.name, enable))

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", set_memory_growth)
    assert configure_accelerators() == [g.name for g in gpus]
    assert grown == [("/physical_device:GPU:0", True)]


def test_a_gpu_is_seen_where_tensorflow_lists_one(monkeypatch):
    """What turns mixed precision on: the devices TensorFlow lists (Keras' own device list holds names, not
    objects, and reading it as objects once made this always false)."""
    import tensorflow as tf

    real = tf.config.list_physical_devices
    assert has_gpu() == bool(real("GPU"))
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [_FakeGPU("/physical_device:GPU:0")] if kind == "GPU" else real(kind))
    assert has_gpu()
