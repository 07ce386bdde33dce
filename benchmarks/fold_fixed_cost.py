"""The fixed cost of one small fold's training: CPU seconds of ``CNNClassifier.fit`` and how often Keras traced the
training step, per strategy, at the smoke config's size (configs/smoke.yaml: 200 training and 100 validation images
of PneumoniaMNIST, 12-16 optimiser steps).

At this size tracing the graphs is most of a training, and the suite (and every small run) trains dozens of such
folds. Each strategy trains in this one process, one after another, after one untimed warm-up training (the first
training in a process also pays TensorFlow's start-up). Printed per strategy: CPU seconds of ``fit`` (this process),
the number of times ``train_step`` ran (it runs only while a step is traced: once per loss phase is the least
possible), and a hash of the trained weights, so two commits can be checked to train the same models.

    python benchmarks/fold_fixed_cost.py                  # needs ../shared/data/pneumoniamnist.npz
    python benchmarks/fold_fixed_cost.py --repeats 3      # median CPU seconds of 3 trainings per strategy
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # as the test suite runs its trainings
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from medstack.config import load_config  # noqa: E402
from medstack.models.training import CNNClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"
STRATEGIES = ("ldam", "class_weight", "smote", "custom_loss")

traced = {"train_step": 0}
_train_step = keras.Model.train_step


def _counting_train_step(self, data):
    traced["train_step"] += 1
    return _train_step(self, data)


keras.Model.train_step = _counting_train_step  # Keras calls it only while it traces the step


def _data() -> tuple[np.ndarray, ...]:
    with np.load(DATA) as d:
        x, x_val = d["train_images"][:200, ..., None], d["val_images"][:100, ..., None]  # uint8, as a run feeds them
        return x, d["train_labels"][:200].ravel(), x_val, d["val_labels"][:100].ravel()


def _train(config, strategy: str, data) -> tuple[float, int, str]:
    traced["train_step"] = 0
    started = time.process_time()
    clf = CNNClassifier(strategy, config.strategy_params(strategy), 2, config.model, config.augmentation,
                        config.training, seed=1).fit(*data)
    cpu = time.process_time() - started
    weights = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in clf.network_.get_weights())).hexdigest()[:12]
    return cpu, traced["train_step"], weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"needs {DATA} (PneumoniaMNIST, shipped beside the repo in ../shared/data)")
    config = load_config(REPO / "configs" / "smoke.yaml")
    data = _data()
    _train(config, "class_weight", data)  # warm-up: TensorFlow's first-use costs land here
    print("| strategy | fit, CPU-s | train_step traces | weights (sha256) |\n|---|---|---|---|")
    for strategy in STRATEGIES:
        runs = [_train(config, strategy, data) for _ in range(args.repeats)]
        cpu = statistics.median(r[0] for r in runs)
        print(f"| {strategy} | {cpu:.2f} | {runs[0][1]} | {runs[0][2]} |")


if __name__ == "__main__":
    main()
