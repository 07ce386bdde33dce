"""Multi-class decisions on an imbalanced set built here: argmax against OOF-chosen class offsets.

The set is scikit-learn's bundled 8x8 digits (offline), digits 0-4 thinned to 178, 90, 45, 25 and 15 images (the
rarest 4.2% of 353), written to a temporary npz and split 60/10/30 so the test split holds a few rare images. One `medstack run` trains the ensemble with
the default recipe and `ensemble.multiclass_policy: balanced_accuracy`; a second run with `argmax` re-uses every
fold from the cache (the decision policy is not part of a fold's cache key), so the two differ only in how
probabilities become labels. Printed per model: test macro ROC AUC, balanced accuracy and the rarest class's recall
under both policies. The test split is small (4-5 images of the rarest class): read it as a check that K > 2 works
and which way the policy moves the rare class, not as a precise figure.

    python benchmarks/multiclass.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from medstack.console.quiet import ENVIRONMENT_DEFAULTS
from medstack.run_folder import read_metrics

REPO = Path(__file__).resolve().parents[1]
KEEP = [178, 90, 45, 25, 15]  # images of digits 0..4
CLASSES = len(KEEP)


def build_npz(path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == d)[: KEEP[d]] for d in range(CLASSES)])
    images = np.rint(digits.images[rows] * (255 / 16)).astype(np.uint8)
    np.savez(path, images=images, labels=digits.target[rows].astype(np.int64))


def run(config: Path, workdir: Path, policy: str) -> dict:
    command = [sys.executable, "-m", "medstack", "run", "--config", str(config), "--output-dir",
               str(workdir / policy), "--cache-dir", str(workdir / "cache"),
               "--set", f"ensemble.multiclass_policy={policy}"]
    env = {**os.environ, **ENVIRONMENT_DEFAULTS}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{policy} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    run_dir = next((workdir / policy).iterdir())
    return read_metrics(run_dir)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="medstack-multiclass-") as tmp:
        work = Path(tmp)
        build_npz(work / "digits.npz")
        config = {
            "name": "digits-imbalanced", "seed": 3,
            "data": {"source": "npz", "name": "digits-imbalanced", "path": str(work / "digits.npz"),
                     "class_names": [str(d) for d in range(CLASSES)]},
            "split": {"folds": 5, "seed": 3, "fractions": [0.6, 0.1, 0.3]},
            "model": {"filters": [32, 64], "convs_per_block": 1, "head": "flatten", "dense_units": 64},
            "augmentation": {"flip": "none", "rotation": 0.03, "zoom": 0.05, "shift": 0.1},
            "report": {"bootstrap": 200},
        }
        (work / "digits-imbalanced.yaml").write_text(yaml.safe_dump(config))
        results = {policy: run(work / "digits-imbalanced.yaml", work, policy) for policy in ("balanced_accuracy", "argmax")}
    rare = str(CLASSES - 1)
    counts = results["argmax"]["dataset"]["counts"]
    print(f"class counts (train/val/test): { {s: list(c.values()) for s, c in counts.items()} }")
    print(f"| model | test macro ROC AUC | balanced acc. argmax | balanced acc. offsets | recall of class {rare} argmax "
          f"| recall of class {rare} offsets |")
    print("|---|---|---|---|---|---|")
    for model, argmax in results["argmax"]["models"].items():
        tuned = results["balanced_accuracy"]["models"][model]
        print(f"| {model} | {argmax['test']['roc_auc']:.3f} | {argmax['test']['balanced_accuracy']:.3f} | "
              f"{tuned['test']['balanced_accuracy']:.3f} | {argmax['test']['per_class'][rare]['recall']:.3f} | "
              f"{tuned['test']['per_class'][rare]['recall']:.3f} |")


if __name__ == "__main__":
    main()
