"""Two finished runs on the same test split: is B's test ROC AUC really above or below A's, model by model?

Each run's `test_predictions.csv` holds every model's test probabilities. The two runs must have scored the same test
rows with the same labels (same data, same split). For every model in both runs this prints A's and B's test ROC AUC,
B minus A, its 95% paired bootstrap interval (`medstack.models.metrics.paired_auc_difference`: both models scored on
the same resampled rows, so the images both find hard or easy cancel out) and the share of resamples where B is not
above A.

    python benchmarks/compare_runs.py RUN_A RUN_B [--n-boot 2000]   # e.g. the before and after runs of small_data.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medstack.models.metrics import paired_auc_difference


def model_probas(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """{model: (N, K) probabilities} from the `model:p(class)` columns of a predictions file."""
    columns: dict[str, list[str]] = {}
    for column in frame.columns:
        model, sep, _ = column.partition(":p(")
        if sep:
            columns.setdefault(model, []).append(column)
    return {model: frame[cols].to_numpy(dtype=np.float64) for model, cols in columns.items()}


def read_run(run: Path) -> tuple[pd.DataFrame, int]:
    frame = pd.read_csv(run / "test_predictions.csv").sort_values("row").reset_index(drop=True)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    positive = cfg["data"].get("positive_class")
    return frame, 1 if positive is None else int(positive)  # multi-class runs: macro ROC AUC, the class is unused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (a, positive), (b, _) = read_run(args.run_a), read_run(args.run_b)
    if not (a["row"].equals(b["row"]) and a["label"].equals(b["label"])):
        raise SystemExit("the two runs did not score the same test rows with the same labels: nothing to pair")
    probas_a, probas_b = model_probas(a), model_probas(b)
    print(f"A: {args.run_a}\nB: {args.run_b}\n{len(a)} test rows, {args.n_boot} paired resamples\n")
    print("| model | A test ROC AUC | B test ROC AUC | B - A | 95% interval | resamples with B not above A |")
    print("|---|---|---|---|---|---|")
    for model in [m for m in probas_a if m in probas_b]:
        out = paired_auc_difference(a["label"].to_numpy(), probas_a[model], probas_b[model], positive,
                                    n_boot=args.n_boot, seed=args.seed)
        lo, hi = out["ci"]
        print(f"| {model} | {out['a']:.4f} | {out['b']:.4f} | {out['difference']:+.4f} | {lo:+.4f} to {hi:+.4f} "
              f"| {out['b_not_better']:.0%} |")


if __name__ == "__main__":
    main()
