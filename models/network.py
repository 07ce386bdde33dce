"""The configurable CNN shared by every strategy: a pure builder, no training, no global state.

The model takes raw pixel values (0..255) at the stored image size and does resizing, scaling to [0, 1] and
augmentation itself, so the saved ``.keras`` file is self-contained and augmentation is active only while
training (Keras' random preprocessing layers are the identity at inference).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from medstack.config import AugmentationConfig, ModelConfig


def build_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    config: ModelConfig,
    augmentation: AugmentationConfig | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    mixed_precision: bool = False,
    cosine_scale: float | None = None,
    name: str = "cnn",
) -> keras.Model:
    """Conv blocks (3x3 ReLU convs, 2x2 max-pool) -> Flatten/GAP -> Dense -> Dropout -> ``num_classes`` logits.

    With ``cosine_scale`` the last layer is :class:`CosineLogits` (normalised features and class weights, times
    the scale), the classifier LDAM was designed for; otherwise a plain Dense layer.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    dtype = "mixed_float16" if mixed_precision else None
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))  # one fixed seed per random layer: thread-safe determinism

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = inputs
    if image_size is not None and tuple(image_size) != tuple(input_shape[:2]):
        x = layers.Resizing(*image_size, name="resize")(x)
    x = layers.Rescaling(1.0 / 255.0, name="scale")(x)
    for layer in _augmentation_layers(augmentation, seeds):
        x = layer(x)
    for block, filters in enumerate(config.filters, start=1):
        for conv in range(1, config.convs_per_block + 1):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not config.batch_norm,
                kernel_initializer=keras.initializers.HeNormal(seed=next(seeds)),
                kernel_regularizer=regularizer,
                dtype=dtype,
                name=f"block{block}_conv{conv}",
            )(x)
            if config.batch_norm:
                x = layers.BatchNormalization(dtype=dtype, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", dtype=dtype, name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, padding="same", dtype=dtype, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x) if config.head == "flatten" else layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(
        config.dense_units,
        activation="relu",
        kernel_initializer=keras.initializers.HeNormal(seed=next(seeds)),
        kernel_regularizer=regularizer,
        dtype=dtype,
        name="dense",
    )(x)
    x = layers.Dropout(config.dropout, seed=next(seeds), name="dropout")(x)
    # Logits stay float32 under mixed precision for a stable softmax/loss.
    init = keras.initializers.GlorotUniform(seed=next(seeds))
    if cosine_scale is None:
        logits = layers.Dense(num_classes, kernel_initializer=init, dtype="float32", name="logits")(x)
    else:
        logits = CosineLogits(num_classes, scale=cosine_scale, kernel_initializer=init, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


@keras.saving.register_keras_serializable(package="medstack")
class CosineLogits(layers.Layer):
    """``scale * cos(feature, class weight)``: L2-normalised features times L2-normalised weight columns."""

    def __init__(self, units: int, scale: float = 30.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.scale = float(scale)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(int(input_shape[-1]), self.units), initializer=self.kernel_initializer, name="kernel"
        )

    def call(self, inputs):
        features = ops.normalize(ops.cast(inputs, self.compute_dtype), axis=-1)
        weights = ops.normalize(ops.cast(self.kernel, self.compute_dtype), axis=0)
        return self.scale * ops.matmul(features, weights)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            scale=self.scale,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def _augmentation_layers(cfg: AugmentationConfig | None, seeds) -> list[keras.layers.Layer]:
    if cfg is None:
        return []
    out: list[keras.layers.Layer] = []
    if cfg.flip != "none":
        out.append(layers.RandomFlip(cfg.flip, seed=next(seeds), name="aug_flip"))
    if cfg.rotation > 0:
        out.append(layers.RandomRotation(cfg.rotation, fill_mode="constant", seed=next(seeds), name="aug_rotation"))
    if cfg.zoom > 0:
        out.append(layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=next(seeds), name="aug_zoom"))
    if cfg.shift > 0:
        out.append(
            layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=next(seeds), name="aug_shift")
        )
    return out


VIEW_FLIPS = ("none", "horizontal", "vertical", "both")


def _checked_flip(flip: str) -> str:
    if flip not in VIEW_FLIPS:
        raise ValueError(f"a test-time view's flip must be none, horizontal, vertical or both, got {flip!r}")
    return flip


def shifted_view(x, flip: str = "none", dy: int = 0, dx: int = 0):
    """One deterministic test-time view of a batch of raw images (N, H, W, C): optional flips, then a shift by whole
    pixels with black (0) fill, as the training augmentation's constant fill."""
    if _checked_flip(flip) in ("horizontal", "both"):
        x = ops.flip(x, axis=2)
    if flip in ("vertical", "both"):
        x = ops.flip(x, axis=1)
    if dy or dx:
        height, width = x.shape[1], x.shape[2]
        pads = [(0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0)]
        top, left = max(-dy, 0), max(-dx, 0)
        x = ops.pad(x, pads)[:, top : top + height, left : left + width, :]
    return x


@keras.saving.register_keras_serializable(package="medstack")
class TTAViews(layers.Layer):
    """Every test-time view of a batch, stacked on the batch axis view by view: (N, H, W, C) in, (V * N, H, W, C)
    out, so the network runs once on all views (:class:`ViewMean` averages its outputs back to N rows)."""

    def __init__(self, views: list[dict], **kwargs):
        super().__init__(**kwargs)
        self.views = [{"flip": _checked_flip(v["flip"]), "dy": int(v["dy"]), "dx": int(v["dx"])} for v in views]

    def call(self, inputs):
        return ops.concatenate([shifted_view(inputs, **view) for view in self.views], axis=0)

    def compute_output_shape(self, input_shape):
        rows = None if input_shape[0] is None else input_shape[0] * len(self.views)
        return (rows, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package="medstack")
class ViewMean(layers.Layer):
    """The mean over ``count`` views of outputs stacked view by view on the batch axis (:class:`TTAViews`)."""

    def __init__(self, count: int, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, inputs):
        return ops.mean(ops.reshape(inputs, (self.count, -1, inputs.shape[-1])), axis=0)

    def compute_output_shape(self, input_shape):
        rows = None if input_shape[0] is None else input_shape[0] // self.count
        return (rows, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "count": self.count}


@keras.saving.register_keras_serializable(package="medstack")
class TTAView(layers.Layer):
    """One test-time view as a layer of its own: fold models saved before the views were stacked into one batch
    (:class:`TTAViews`) hold one per view, and still load and predict with it."""

    def __init__(self, flip: str = "none", dy: int = 0, dx: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.flip, self.dy, self.dx = _checked_flip(flip), int(dy), int(dx)

    def call(self, inputs):
        return shifted_view(inputs, self.flip, self.dy, self.dx)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "dy": self.dy, "dx": self.dx}


def tta_views(augmentation: AugmentationConfig | None, image_shape: tuple[int, ...], mode: str) -> list[dict]:
    """The views ``training.tta`` asks for: the image itself; with ``auto`` also every flip the augmentation allows
    and, when it shifts, a shift of max(1, round(shift * side / 2)) pixels up, down, left and right (about half the
    largest training shift, so each view is one the model saw while training)."""
    views = [{"flip": "none", "dy": 0, "dx": 0}]
    if mode == "none" or augmentation is None:
        return views
    flips = {"horizontal": ["horizontal"], "vertical": ["vertical"],
             "horizontal_and_vertical": ["horizontal", "vertical", "both"]}.get(augmentation.flip, [])
    views += [{"flip": flip, "dy": 0, "dx": 0} for flip in flips]
    if augmentation.shift > 0:
        dy = max(1, round(augmentation.shift * image_shape[0] / 2))
        dx = max(1, round(augmentation.shift * image_shape[1] / 2))
        views += [{"flip": "none", "dy": d, "dx": 0} for d in (dy, -dy)]
        views += [{"flip": "none", "dy": 0, "dx": d} for d in (dx, -dx)]
    return views


def with_tta(net: keras.Model, views: list[dict]) -> keras.Model:
    """``net`` predicting the mean of its logits over ``views`` (one view: ``net`` itself). The views are layers of
    the model, so a saved ``.keras`` file predicts exactly what the run reported, in safe mode. The network runs
    once on the views stacked into one batch: against one call a view, at 28x28 on a 2-core CPU, the fused graph
    traced 3-6x quicker, one image scored 1.2-2.6x quicker and batches 3-6% slower (8-24% for the tiny smoke
    network; docs/benchmarks.md, "Test-time views in one batch"). A call holds the activations of every view at
    once: callers send at most :func:`rows_per_call` rows."""
    if len(views) == 1 and views[0] == {"flip": "none", "dy": 0, "dx": 0}:
        return net
    inputs = keras.Input(shape=net.input_shape[1:], name="pixels")
    logits = net(TTAViews(views, name="tta_views")(inputs))
    return keras.Model(inputs, ViewMean(len(views), dtype="float32", name="tta_mean")(logits), name=f"{net.name}_tta")


NETWORK_IMAGES = 256  # the most images one call sends through a network, test-time views included


def rows_per_call(views: int, images: int = NETWORK_IMAGES) -> int:
    """Input rows for one call of a model that scores ``views`` test-time views of each row, so that its network sees
    at most ``images`` images: stacked views multiply the rows a network holds at once (and its activations' memory)
    by the view count, which at 224x224 would be many gigabytes."""
    return max(1, images // max(1, views))


def tta_view_count(model: keras.Model) -> int:
    """How many test-time views a saved fold model averages (1 without any), in either layout."""
    count = 0
    for layer in model.layers:
        if isinstance(layer, TTAViews):
            count += len(layer.views)
        elif isinstance(layer, TTAView):
            count += 1
    return max(count, 1)
