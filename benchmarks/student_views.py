"""How many test-time views should the run's student score? (issue 27: its throughput targets)

The student (medstack.pipeline.student) is one network; with ``training.tta: auto`` it scores 5 views of an image
(the image and its allowed flips and shifts), 5 network passes. Views change nothing in training: the weights are
the same, only the wrapper that predicts (and the temperature fitted on val through it) differs. So this trains the
student once, exactly as a run does (its network, augmentation, recipe, seed, balanced class weights, on the whole
training split less the calibration slice, early-stopped on val), then builds both predictors from that network:

- ``views 1``: the network alone, temperature fitted on val;
- ``views N``: the run's test-time views (``training.tta: auto``), temperature fitted on val through them.

For each: test ROC AUC with the paired bootstrap interval of (one view - N views), Brier and ECE as a run's metrics
define them, and images per second in this process in batches of 256 (the best of 3 passes over 2,048 images).
Printed and appended to benchmarks/results/student_views.csv.

    python benchmarks/student_views.py --config configs/pneumoniamnist.yaml --set "data.subset={train: 546, val: 78}"
    python benchmarks/student_views.py --config configs/pneumoniamnist.yaml            # full size
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from medstack import pipeline  # noqa: E402
import yaml  # noqa: E402

from medstack.config import STRATEGY_PARAMS, load_config  # noqa: E402
from medstack.data import read_dataset  # noqa: E402
from medstack.models.metrics import compute_metrics, paired_auc_difference  # noqa: E402
from medstack.models.reliability import expected_calibration_error  # noqa: E402
from medstack.pipeline.student import LEARNS  # noqa: E402
from medstack.pipeline.train import fold_seed  # noqa: E402
from medstack.run_folder import STUDENT  # noqa: E402
from small_data import append_rows  # noqa: E402  (this folder is on sys.path when the script runs)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "student_views.csv"
FIELDS = ("config", "n_train", "views", "test_roc_auc", "diff_vs_views", "diff_low", "diff_high", "brier", "ece",
          "temperature", "images_per_s", "fit_s", "commit")


def predictor(net, views: list[dict], x_val: np.ndarray, y_val: np.ndarray):
    """``net`` behind ``views``, its logits divided by the temperature fitted on val through them (as a run does)."""
    from medstack.models.calibration import fit_temperature, with_temperature
    from medstack.models.network import with_tta
    from medstack.models.training import predict_logits

    wrapped = with_tta(net, views)
    temperature = fit_temperature(predict_logits(wrapped, x_val), y_val)
    return with_temperature(wrapped, temperature), temperature


def images_per_second(model, x: np.ndarray) -> float:
    """In-process throughput in batches of 256, through one traced call (what serving uses): best of 3 passes."""
    from medstack.inference.fused import compiled_call

    call = compiled_call(model)
    batches = [x[i:i + 256].astype(np.float32) for i in range(0, len(x), 256)]
    call(batches[0])  # traced once
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for batch in batches:
            np.asarray(call(batch))
        best = min(best, time.perf_counter() - started)
    return len(x) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()
    overrides = {key.strip(): yaml.safe_load(value) for key, _, value in (s.partition("=") for s in args.set)}
    cfg = load_config(args.config, {**overrides, "training.tta": "auto"})
    from medstack.models.network import tta_views
    from medstack.models.training import CNNClassifier, configure_accelerators, predict_logits

    configure_accelerators()
    dataset = read_dataset(cfg.data)
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg)
    data = prepared.whole_training_data()  # what the run's student trains on
    y_test = prepared.test_labels.reveal()
    started = time.perf_counter()
    clf = CNNClassifier(LEARNS, STRATEGY_PARAMS[LEARNS](), prepared.num_classes, cfg.model, cfg.augmentation,
                        cfg.training, image_size=cfg.data.image_size, seed=fold_seed(cfg.seed, STUDENT, 0),
                        positive_class=prepared.positive_class)
    clf.fit(data.x_train, data.y_train, data.x_val, data.y_val)
    fit_s = time.perf_counter() - started
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    positive = prepared.positive_class
    speed_x = np.resize(data.x_test, (2048, *data.x_test.shape[1:]))
    all_views = tta_views(cfg.augmentation, data.x_train.shape[1:], "auto")
    probas, rows = {}, []
    for views in (all_views, all_views[:1]):
        model, temperature = predictor(clf.network_, views, data.x_val, data.y_val)
        logits = predict_logits(model, data.x_test).astype(np.float64)
        proba = probas[len(views)] = np.exp(logits - logits.max(axis=1, keepdims=True))
        proba /= proba.sum(axis=1, keepdims=True)
        row = {"config": Path(args.config).name + "".join(f" {s}" for s in args.set), "n_train": len(data.x_train),
               "views": len(views), "brier": round(compute_metrics(y_test, proba, None, positive)["brier"], 4),
               "ece": round(expected_calibration_error(y_test, proba, positive), 4),
               "temperature": round(temperature, 3), "images_per_s": round(images_per_second(model, speed_x)),
               "fit_s": round(fit_s, 1), "commit": commit}
        if len(views) == len(all_views):
            from medstack.models.resampled import roc_auc_of_resamples

            every_row = np.arange(len(y_test))[None]
            row["test_roc_auc"] = round(float(roc_auc_of_resamples(y_test, proba, every_row, positive)[0]), 4)
        else:
            paired = paired_auc_difference(y_test, probas[len(all_views)], proba, positive)
            row.update(test_roc_auc=round(paired["b"], 4), diff_vs_views=round(paired["difference"], 4),
                       diff_low=round(paired["ci"][0], 4), diff_high=round(paired["ci"][1], 4))
        rows.append(row)
        print(" | ".join(f"{k}={row.get(k, '')}" for k in FIELDS), flush=True)
    append_rows(RESULTS, FIELDS, rows)


if __name__ == "__main__":
    main()
