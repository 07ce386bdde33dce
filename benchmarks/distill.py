"""Is a distilled student better than the same network trained on the labels alone? (issue 27, point 1)

Input: a finished run folder. The student is one network of the run's own config (its network, augmentation and
training recipe, so the same step budget) trained on the run's whole training split, early-stopped and
temperature-calibrated on its val split, and scored on its test split. Variants of what it learns:

- ``labels``: the labels alone, with balanced class weights (the run's ``class_weight`` strategy): the ablation.
- ``teacher``: the out-of-fold probabilities of the run's recommended model (or ``--teacher``). For every training
  row they come from fold models that never trained on it (and, for stacking, from the nested meta-model estimate),
  so the teacher never taught a row it had learned.
- ``mixed``: half teacher, half one-hot label (Hinton et al.'s soft and hard targets; temperature 1).

Each variant trains once per seed, one after another, in this process. Printed and appended to
benchmarks/results/distill.csv: test ROC AUC and the paired bootstrap interval of (student - teacher), log loss,
Brier score, ECE, agreement with the teacher's labels at the teacher's own decision rule, and the training time.

    python benchmarks/distill.py --run runs/<run id>                 # 3 variants x seeds 0 1 2
    python benchmarks/distill.py --run runs/<run id> --variants labels teacher --seeds 0
    python benchmarks/distill.py --run runs/<run id> --teacher stacking     # teach another model of the run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402

from medstack import pipeline  # noqa: E402
from medstack.config import NoParams, load_config  # noqa: E402
from medstack.data import read_dataset  # noqa: E402
from medstack.models.decision import apply_decision  # noqa: E402
from medstack.models.metrics import compute_metrics, paired_auc_difference  # noqa: E402
from medstack.models.reliability import expected_calibration_error  # noqa: E402
from medstack.models.resampled import roc_auc_of_resamples  # noqa: E402
from medstack.run_folder import (CONFIG_FILE, is_run_folder, read_metrics, read_oof_predictions,  # noqa: E402
                                 read_test_predictions)
from small_data import append_rows  # noqa: E402  (this folder is on sys.path when the script runs)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "distill.csv"
VARIANTS = ("labels", "teacher", "mixed")
FIELDS = ("run", "teacher", "variant", "seed", "n_train", "test_roc_auc", "diff_vs_teacher", "diff_low", "diff_high",
          "log_loss", "brier", "ece", "agreement", "epochs", "fit_s", "commit")


def in_order(predictions, rows: np.ndarray, model: str) -> np.ndarray:
    """``model``'s probabilities of a run's prediction table, in the order of ``rows`` (dataset rows)."""
    where = {row: i for i, row in enumerate(predictions.rows.tolist())}
    if set(where) != set(rows.tolist()):
        sys.exit("the run's prediction rows are not this config's split (was the data changed?)")
    return predictions.probas[model][[where[row] for row in rows.tolist()]]


def train_student(prepared, cfg, variant: str, targets: np.ndarray, seed: int):
    from medstack.models.training import CNNClassifier

    x, y = prepared.images[prepared.train_idx], prepared.y_train
    onehot = np.eye(prepared.num_classes)[y]
    strategy, learned = {"labels": ("class_weight", None), "teacher": ("student", targets),
                         "mixed": ("student", 0.5 * targets + 0.5 * onehot)}[variant]
    clf = CNNClassifier(strategy, NoParams(), prepared.num_classes, cfg.model, cfg.augmentation, cfg.training,
                        image_size=cfg.data.image_size, seed=seed, positive_class=prepared.positive_class)
    return clf.fit(x, y, prepared.images[prepared.val_idx], prepared.y_val, targets=learned)


def scores(y: np.ndarray, proba: np.ndarray, positive: int) -> dict[str, float]:
    """Log loss, and the Brier score and ECE as the run's own metrics define them (binary: of the positive class)."""
    return {"log_loss": round(float(log_loss(y, proba, labels=np.arange(proba.shape[1]))), 4),
            "brier": round(compute_metrics(y, proba, None, positive)["brier"], 4),
            "ece": round(expected_calibration_error(y, proba, positive), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run folder (its config, OOF and test predictions)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--teacher", help="the run's model whose OOF probabilities are taught (default: the run's "
                                          "recommended model)")
    parser.add_argument("--tta", choices=("none", "auto"), default="none",
                        help="the student's test-time views (default none: one network pass per image)")
    args = parser.parse_args()
    run = Path(args.run).resolve()
    if not is_run_folder(run):
        sys.exit(f"{run}: not a finished run folder (no manifest.json there)")
    cfg = load_config(run / CONFIG_FILE, {"training.tta": args.tta})
    dataset = read_dataset(cfg.data)
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg)
    metrics = read_metrics(run)
    teacher = args.teacher or metrics["recommended"]["model"]
    if teacher not in metrics["models"]:
        sys.exit(f"--teacher {teacher}: the run's models are {', '.join(metrics['models'])}")
    # The recommended model's OOF probabilities: for every training row, from models that never trained on it.
    targets = in_order(read_oof_predictions(run), prepared.train_idx, teacher)
    y_test = prepared.test_labels.reveal()
    teacher_test = in_order(read_test_predictions(run), prepared.test_idx, teacher)
    decision = metrics["models"][teacher]["decision"]
    teacher_labels = apply_decision(teacher_test, decision)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    positive = prepared.positive_class
    every_row = np.arange(len(y_test))[None]  # one "resample": the test split itself (no bootstrap for the teacher)

    rows = [{"run": run.name, "teacher": teacher, "variant": "teacher (ensemble)", "seed": "", "n_train": "",
             "test_roc_auc": round(float(roc_auc_of_resamples(y_test, teacher_test, every_row, positive)[0]), 4),
             **scores(y_test, teacher_test, positive), "commit": commit}]
    for seed in args.seeds:
        for variant in args.variants:
            started = time.perf_counter()
            clf = train_student(prepared, cfg, variant, targets, seed)
            fit_s = time.perf_counter() - started
            proba = clf.predict_proba(prepared.images[prepared.test_idx])
            paired = paired_auc_difference(y_test, teacher_test, proba, positive)
            rows.append({
                "run": run.name, "teacher": teacher, "variant": variant, "seed": seed, "n_train": len(prepared.train_idx),
                "test_roc_auc": round(paired["b"], 4), "diff_vs_teacher": round(paired["difference"], 4),
                "diff_low": round(paired["ci"][0], 4), "diff_high": round(paired["ci"][1], 4),
                **scores(y_test, proba, positive),
                "agreement": round(float(np.mean(apply_decision(proba, decision) == teacher_labels)), 4),
                "epochs": clf.info_["epochs_run"], "fit_s": round(fit_s, 1), "commit": commit,
            })
            print(" | ".join(f"{k}={rows[-1][k]}" for k in ("variant", "seed", "test_roc_auc", "diff_vs_teacher",
                                                             "log_loss", "ece", "fit_s")), flush=True)
    append_rows(RESULTS, FIELDS, rows)
    print("| " + " | ".join(FIELDS[1:-1]) + " |\n|" + "---|" * (len(FIELDS) - 2))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in FIELDS[1:-1]) + " |")


if __name__ == "__main__":
    main()
