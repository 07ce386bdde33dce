"""Two runs of one dataset under two recipes (a baseline and a candidate), compared model by model, paired.

For every model both runs have: test ROC AUC of each and the paired bootstrap of (candidate - baseline) on the same
test images; the same on the out-of-fold rows (the figure a run chooses its recommendation by; the student has none);
the positive class's Brier score and expected calibration error on test. Then each run's cost from its manifest:
wall time of the flow and optimiser steps. Both runs must have scored the same test images (the script refuses a
pair that did not); the OOF columns stay empty unless both held out the same training rows.

    python benchmarks/compare_recipes.py BASELINE_RUN CANDIDATE_RUN [--label lean] [--results csv]

The run folders are what ``medstack run`` writes (``benchmarks/small_data.py --keep DIR`` keeps them under
DIR/SIZE/runs). Rows are appended to benchmarks/results/compare_recipes.csv and printed as a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medstack.models.metrics import paired_auc_difference
from medstack.models.reliability import expected_calibration_error
from medstack.run_comparison import shared_test
from medstack.run_folder import read_manifest, read_metrics, read_oof_predictions, read_positive_class
from small_data import append_rows  # the benchmarks' one csv writer (this folder is on sys.path when the script runs)

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("label", "n_train", "model", "test_auc_base", "test_auc_new", "test_diff", "test_lo", "test_hi",
          "oof_auc_base", "oof_auc_new", "oof_diff", "oof_lo", "oof_hi", "brier_base", "brier_new", "ece_base",
          "ece_new", "wall_base", "wall_new", "steps_base", "steps_new", "commit")


def _interval(found: dict) -> dict:
    return {"a": found["a"], "b": found["b"], "diff": found["difference"], "lo": found["ci"][0], "hi": found["ci"][1]}


def cost(run: Path) -> dict:
    """Wall seconds of the flow and the optimiser steps of its trainings, from the run's manifest. A run that took
    folds from the fold cache is refused: its wall time is not a cold run's."""
    manifest = read_manifest(run)
    cached = [name for name, fold in manifest["folds"].items() if fold.get("from_cache")]
    if cached:
        raise SystemExit(f"{run}: {len(cached)} training(s) came from the fold cache ({cached[0]}, ...): "
                         "compare cold runs (a fresh --cache-dir)")
    return {"wall": manifest["wall_seconds"], "steps": sum(int(f.get("steps_run") or 0)
                                                           for f in manifest["folds"].values())}


def compare(base: Path, new: Path) -> list[dict]:
    """One row per model both runs have (see the module docstring)."""
    test = shared_test(base, new)
    if test is None:
        raise SystemExit("the two runs scored different test images: nothing to pair")
    positive = test.positive_class
    if read_positive_class(base) != positive:
        raise SystemExit("the two runs name different positive classes")
    oof_a, oof_b = read_oof_predictions(base), read_oof_predictions(new)
    same_oof = oof_a.same_images(oof_b)
    metrics_a, metrics_b = read_metrics(base)["models"], read_metrics(new)["models"]
    rows = []
    for model in [m for m in test.b if m in test.a]:
        on_test = test.roc_auc_difference(model, model)
        if on_test is None:
            raise SystemExit(f"{model}: its test ROC AUC difference is undefined (a non-finite probability?)")
        oof = (paired_auc_difference(oof_b.labels, oof_a.probas[model], oof_b.probas[model], positive)
               if same_oof and model in oof_a.probas and model in oof_b.probas else None)
        rows.append({
            "model": model, "test": _interval(on_test), "oof": None if oof is None else _interval(oof),
            "n_oof": len(oof_b.rows),
            "brier": (metrics_a[model]["test"]["brier"], metrics_b[model]["test"]["brier"]),
            "ece": tuple(expected_calibration_error(test.labels, p[model], positive) for p in (test.a, test.b)),
        })
    return rows


def as_csv_rows(rows: list[dict], base: Path, new: Path, label: str) -> list[dict]:
    ca, cb = cost(base), cost(new)
    commit = str(read_manifest(new).get("git_commit") or "")[:7]  # the checkout the candidate ran on
    out = []
    for r in rows:
        t, o = r["test"], r["oof"] or {}
        out.append({
            "label": label, "n_train": r["n_oof"], "model": r["model"],
            "test_auc_base": round(t["a"], 4), "test_auc_new": round(t["b"], 4), "test_diff": round(t["diff"], 4),
            "test_lo": round(t["lo"], 4), "test_hi": round(t["hi"], 4),
            **({"oof_auc_base": round(o["a"], 4), "oof_auc_new": round(o["b"], 4), "oof_diff": round(o["diff"], 4),
                "oof_lo": round(o["lo"], 4), "oof_hi": round(o["hi"], 4)} if o else {}),
            "brier_base": round(r["brier"][0], 4), "brier_new": round(r["brier"][1], 4),
            "ece_base": round(r["ece"][0], 4), "ece_new": round(r["ece"][1], 4),
            "wall_base": ca["wall"], "wall_new": cb["wall"], "steps_base": ca["steps"], "steps_new": cb["steps"],
            "commit": commit,
        })
    return out


def print_table(rows: list[dict]) -> None:
    print("| model | test ROC AUC, base / new | new - base (95% CI) | OOF ROC AUC, base / new | new - base (95% CI) "
          "| Brier, base / new | ECE, base / new |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        oof = (f"{r['oof_auc_base']:.4f} / {r['oof_auc_new']:.4f} | {r['oof_diff']:+.4f} ({r['oof_lo']:+.4f} to "
               f"{r['oof_hi']:+.4f})" if "oof_diff" in r else "- | -")
        print(f"| {r['model']} | {r['test_auc_base']:.4f} / {r['test_auc_new']:.4f} | {r['test_diff']:+.4f} "
              f"({r['test_lo']:+.4f} to {r['test_hi']:+.4f}) | {oof} | {r['brier_base']:.3f} / {r['brier_new']:.3f} "
              f"| {r['ece_base']:.3f} / {r['ece_new']:.3f} |")
    if rows:
        r = rows[0]
        speedup = r["wall_base"] / r["wall_new"]
        print(f"\nwall: base {r['wall_base']:.0f} s, new {r['wall_new']:.0f} s ({speedup:.2f}x); "
              f"optimiser steps: base {r['steps_base']:,}, new {r['steps_new']:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="run folder of the baseline recipe")
    parser.add_argument("candidate", type=Path, help="run folder of the candidate recipe, same data")
    parser.add_argument("--label", default="candidate", help="the candidate's name in the csv")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "compare_recipes.csv")
    args = parser.parse_args()
    rows = as_csv_rows(compare(args.baseline, args.candidate), args.baseline, args.candidate, args.label)
    append_rows(args.results, FIELDS, rows)
    print_table(rows)


if __name__ == "__main__":
    main()
