"""The seeded training input of one fold: which rows each step trains on, and how they reach ``fit``."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


class ShuffledBatches(keras.utils.PyDataset):
    """Training batches in seeded random order: the same batches for the same seed, ``steps_per_epoch`` of them per
    epoch. An epoch may span several passes over a small training set (the recipe's ``min_epoch_steps``); passes
    run back to back, each a fresh permutation cut into batches (the last one of a pass may be short).

    ``fit(shuffle=True)`` on arrays draws its order from the backend's unseeded global RNG, so two trainings of
    one fold with one seed ended far apart (LDAM probabilities up to 0.5 apart on the tiny test config). A global
    seed would not fix it: trainings run in parallel threads and share that state. A ``PyDataset`` keeps this
    backend-neutral (no TensorFlow needed under ``KERAS_BACKEND=jax``) and slices the arrays without copying them.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, steps_per_epoch: int | None = None):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.steps_per_epoch = steps_per_epoch or -(-len(x) // batch_size)
        self._rng = np.random.default_rng(seed)
        self._pending: list[np.ndarray] = []
        self._batches = self._next_epoch()

    def _next_epoch(self) -> list[np.ndarray]:
        while len(self._pending) < self.steps_per_epoch:
            order = self._rng.permutation(len(self.x))
            self._pending += [np.sort(order[i : i + self.batch_size]) for i in range(0, len(order), self.batch_size)]
        batches, self._pending = self._pending[: self.steps_per_epoch], self._pending[self.steps_per_epoch :]
        return batches

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._batches[index]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self) -> None:
        self._batches = self._next_epoch()


class TrainingFeed:
    """What ``fit`` is fed: the seeded batches of :class:`ShuffledBatches`, handed over a few epochs at a time (one
    ``fit`` per loss phase), continuing the same seeded order from one ``fit`` to the next.

    Under TensorFlow the batches go in as a ``tf.data`` pipeline of row ranges, each batch gathered from the arrays
    by ``tf.numpy_function`` (the arrays, memory maps included, are neither copied nor converted); ``fit`` gets
    ``steps_per_epoch``, so Keras keeps one iterator across the epochs. Fed the PyDataset itself, TensorFlow trained
    the full-width network at about half the steps per second (fresh processes, 2 CPU cores, 240 steps: 1.60 against
    3.40 for arrays; ``benchmarks/step_rate.py``). Other backends (JAX) are fed the PyDataset, which keeps this
    module free of TensorFlow there.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, steps_per_epoch: int | None = None):
        self.batches = ShuffledBatches(x, y, batch_size, seed, steps_per_epoch)

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    def next_epochs(self, epochs: int) -> tuple[Any, dict]:
        """(data, ``fit`` keyword arguments) for the next ``epochs`` epochs of seeded batches."""
        if keras.backend.backend() != "tensorflow":
            return self.batches, {"shuffle": False}  # Keras calls its on_epoch_end: it advances itself
        rows = []
        for _ in range(epochs):
            rows += self.batches._batches
            self.batches.on_epoch_end()
        fit = {"steps_per_epoch": self.steps_per_epoch, "shuffle": False}
        return _gathered(self.batches.x, self.batches.y, rows), fit


def _gathered(x: np.ndarray, y: np.ndarray, rows: list[np.ndarray]) -> Any:
    """A ``tf.data.Dataset`` of the batches ``x[r], y[r]`` for ``r`` in ``rows``, in order."""
    import tensorflow as tf

    flat = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    ends = np.cumsum([len(r) for r in rows], dtype=np.int64)
    starts = ends - np.array([len(r) for r in rows], dtype=np.int64)

    def gather(start: np.int64, end: np.int64) -> tuple[np.ndarray, np.ndarray]:
        picked = flat[start:end]
        return np.asarray(x[picked]), np.asarray(y[picked])

    def batch(start: Any, end: Any) -> tuple[Any, Any]:
        xb, yb = tf.numpy_function(gather, [start, end], [tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)], stateful=False)
        xb.set_shape((None, *x.shape[1:]))
        yb.set_shape((None, *y.shape[1:]))
        return xb, yb

    return tf.data.Dataset.from_tensor_slices((starts, ends)).map(batch).prefetch(2)


def training_input(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                   steps_per_epoch: int | None = None) -> TrainingFeed:
    """The seeded training input of one fold (``benchmarks/step_rate.py`` times exactly this against bare ``fit`` on
    arrays)."""
    return TrainingFeed(x, y, batch_size, seed, steps_per_epoch)
