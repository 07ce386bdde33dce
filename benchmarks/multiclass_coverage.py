"""Prediction sets and referral of a 10-class imbalanced run: one `medstack run`, then conformal_coverage.py on it.

The set is scikit-learn's bundled 8x8 digits (offline), each digit d thinned to ``round(174 * 3 ** (-d / 9))``
images (174 of digit 0 down to 58 of digit 9, 3:1; 1,069 images), split 50/10/40: test holds 70 down to 23 images
a class. The calibration slice is 30% of the training split (``conformal.calibration_share: 0.3``, 26 down to 9
images a class) instead of the default 10%, so that every class keeps the 9 slice rows the 90% level needs (at 10%
the slice would hold 9 down to 3 and most classes would be refused; the run says so, but there would be nothing to
measure); 95% (19 rows) is refused for digits 3 to 9, while the OOF rows (61 down to 20) allow it for all. The network and recipe are ``benchmarks/multiclass.py``'s (default training
recipe, 5 folds x 4 strategies). The script then runs ``benchmarks/conformal_coverage.py`` on the run folder:
coverage per class and level with Clopper-Pearson intervals, for the held-out slice and the OOF calibration;
re-splits of slice + test rows pooled; referral of stacking against the best member.

    python benchmarks/multiclass_coverage.py --work /tmp/digits10 [--resplits 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from medstack.console.quiet import ENVIRONMENT_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10
KEEP = [round(174 * 3 ** (-d / (CLASSES - 1))) for d in range(CLASSES)]  # 174, 154, ..., 58 (digit 8 has 174)


def build_npz(path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == d)[: KEEP[d]] for d in range(CLASSES)])
    images = np.rint(digits.images[rows] * (255 / 16)).astype(np.uint8)
    np.savez(path, images=images, labels=digits.target[rows].astype(np.int64),
             class_names=np.array([str(d) for d in range(CLASSES)]))


def config(npz: Path) -> dict:
    return {
        "name": "digits10-imbalanced", "seed": 3,
        "data": {"source": "npz", "name": "digits10-imbalanced", "path": str(npz),
                 "class_names": [str(d) for d in range(CLASSES)]},
        "split": {"folds": 5, "seed": 3, "fractions": [0.5, 0.1, 0.4]},
        "model": {"filters": [32, 64], "convs_per_block": 1, "head": "flatten", "dense_units": 64},
        "augmentation": {"flip": "none", "rotation": 0.03, "zoom": 0.05, "shift": 0.1},
        "conformal": {"calibration": "split", "calibration_share": 0.3},
        "report": {"bootstrap": 200},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="where the npz, config, run and cache go")
    parser.add_argument("--resplits", type=int, default=200)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    build_npz(args.work / "digits10.npz")
    (args.work / "digits10.yaml").write_text(yaml.safe_dump(config(args.work / "digits10.npz")))
    env = {**os.environ, **ENVIRONMENT_DEFAULTS}
    done = subprocess.run([sys.executable, "-m", "medstack", "run", "-q", "--config", str(args.work / "digits10.yaml"),
                           "--output-dir", str(args.work / "runs"), "--cache-dir", str(args.work / "cache")],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"medstack run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    print(f"run folder: {run_dir}")
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "conformal_coverage.py"), str(run_dir),
                    "--resplits", str(args.resplits), "--json", str(args.work / "coverage.json")], check=True)


if __name__ == "__main__":
    main()
