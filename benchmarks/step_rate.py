"""Optimiser steps per second of the default network, one training in one process, no Prefect: what one step costs
with the old recipe's compile (accuracy, constant learning rate), the new one's (plus the SoftmaxAUC metric and the
warm-up + cosine schedule), and the new one fed by medstack's seeded ``_ShuffledBatches`` (a Keras PyDataset)
instead of in-memory arrays. Random 28x28x1 images, batch 64, 3 epochs of 20 steps timed after one untimed epoch.

    python benchmarks/step_rate.py
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from medstack.config import load_config
from medstack.models.network import build_model
from medstack.models.recipe import SoftmaxAUC
from medstack.models.training import _ShuffledBatches

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH = 20, 64


def timed(net: keras.Model, data, **fit) -> float:
    """Steps per second over 3 epochs, after one epoch that traces the graph."""
    net.fit(data, epochs=1, verbose=0, **fit)
    started = time.perf_counter()
    net.fit(data, epochs=3, verbose=0, **fit)
    return 3 * STEPS / (time.perf_counter() - started)


def main() -> None:
    cfg = load_config(REPO / "configs" / "pneumoniamnist.yaml", {})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH * STEPS, 28, 28, 1)).astype(np.uint8)
    y = keras.utils.to_categorical(rng.integers(0, 2, len(x)), 2)
    cosine = keras.optimizers.schedules.CosineDecay(0.0, 500, alpha=0.01, warmup_target=1e-3, warmup_steps=25)
    cases = [("old compile (accuracy, constant LR), arrays", ["accuracy"], 1e-3, False),
             ("new compile (accuracy + SoftmaxAUC, warm-up + cosine LR), arrays", None, cosine, False),
             ("new compile, _ShuffledBatches (PyDataset)", None, cosine, True)]
    for name, metrics, lr, pydataset in cases:
        net = build_model((28, 28, 1), 2, cfg.model, cfg.augmentation, None, seed=0, name="cnn")
        net.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy",
                    metrics=metrics or ["accuracy", SoftmaxAUC(positive_class=1)])
        if pydataset:
            rate = timed(net, _ShuffledBatches(x, y, BATCH, 0, STEPS), shuffle=False)
        else:
            rate = timed(net, x, y=y, batch_size=BATCH)
        print(f"{name}: {rate:.2f} steps/s ({rate * BATCH:.0f} images/s)", flush=True)


if __name__ == "__main__":
    main()
