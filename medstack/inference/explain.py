"""Grad-CAM heatmaps of a bundle's model (Selvaraju et al., 2017), averaged over its fold models, as PNG overlays.

For each fold model, the gradient of the target class's logit with respect to the last convolutional feature map
of the trained CNN (inside the test-time-augmentation and temperature wrappers) weights that map's channels; the
ReLU of the weighted sum, upsampled to the input size and scaled to [0, 1], is the heatmap. A member's map is the
mean over its folds; soft voting and stacking use the mean over every member's folds (stacking weights are not
applied: they act on probabilities, not on image regions); the student's is its one network's. The target class is
the label the model predicted.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np

from medstack.inference.bundle import Bundle
from medstack.run_folder import STUDENT


def gradcam(bundle: Bundle, model: str, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] of ``model`` for class ``targets`` (N,) on raw ``images`` (N, H, W, C)."""
    if model == STUDENT:  # one network: its own map
        maps = [_fold_cam(_cam_model(bundle.student_model()), images, targets)]
    else:
        members = bundle.member_models()
        strategies = [model] if model in members else list(members)
        maps = [_fold_cam(_cam_model(fold), images, targets) for s in strategies for fold in members[s]]
    return np.mean(maps, axis=0)


def _cam_model(fold: keras.Model) -> keras.Model:
    """pixels -> (last conv feature map, logits) of the CNN nested in a saved fold model."""
    nested = [layer for layer in fold.layers if isinstance(layer, keras.Model)]
    base = nested[0] if nested else fold
    spatial = [layer for layer in base.layers
               if len(layer.output.shape) == 4 and isinstance(layer, (keras.layers.Conv2D, keras.layers.Activation))]
    if not spatial:
        raise ValueError(f"{fold.name}: no convolutional layer to explain")
    return keras.Model(base.inputs, [spatial[-1].output, base.outputs[0]])


def _fold_cam(cam_model: keras.Model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    with tf.GradientTape() as tape:
        features, logits = cam_model(x, training=False)
        chosen = tf.gather(logits, tf.convert_to_tensor(np.asarray(targets, np.int32)), axis=1, batch_dims=1)
    grads = tape.gradient(chosen, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0)


def overlay(image: np.ndarray, heat: np.ndarray, min_side: int = 224, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the image in grey or colour with the heatmap (jet) blended over it, enlarged."""
    from matplotlib import colormaps
    from PIL import Image

    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    colours = (colormaps["jet"](heat)[..., :3] * 255).astype(np.float64)
    blended = ((1 - alpha) * rgb.astype(np.float64) + alpha * colours).clip(0, 255).astype(np.uint8)
    scale = max(1, int(np.ceil(min_side / min(image.shape[:2]))))
    size = (image.shape[1] * scale, image.shape[0] * scale)
    return np.asarray(Image.fromarray(blended).resize(size, Image.Resampling.NEAREST))


class OverlayWriter:
    """``predict``'s per-batch hook: Grad-CAM overlays of the first ``limit`` images, one PNG each."""

    def __init__(self, bundle: Bundle, model: str, folder: str | Path, limit: int = 100):
        self.bundle, self.model, self.folder, self.limit = bundle, model, Path(folder), limit
        self.written: int = 0
        self.files: list[Path] = []
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, batch, scores: dict[str, np.ndarray], labels: np.ndarray) -> None:
        from PIL import Image

        from medstack.storage import atomic_file

        take = min(self.limit - self.written, len(batch.ids))
        if take <= 0:
            return
        heat = gradcam(self.bundle, self.model, batch.images[:take], labels[:take])
        for i in range(take):
            label = self.bundle.classes[int(labels[i])]
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(batch.ids[i]).name)[-80:]
            path = self.folder / f"{self.written + 1:05d}_{name}_{label}.png"
            with atomic_file(path) as handle:
                Image.fromarray(overlay(batch.images[i], heat[i])).save(handle, format="PNG")
            self.files.append(path)
            self.written += 1
