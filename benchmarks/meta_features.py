"""Stacking on probabilities against stacking on log-odds, on the same fold models of a finished run.

The meta-model is fitted from the cached fold predictions on every run, so nothing is retrained: this script reads
the run folder's `config.yaml` and the `code_version_models` of its `manifest.json`, finds every (strategy, fold)
entry of that run in its fold cache, and runs the pipeline's own ensembles, decisions and test evaluation once per
`ensemble.meta_features` value. The choice of log-odds was made on OOF rows only (`benchmarks/stacking_variants.py`);
this shows what it does to the figures a run reports, test included.

    python benchmarks/meta_features.py RUN_FOLDER --cache FOLD_CACHE      # e.g. what small_data.py --keep left

Prints a markdown table: every model's test ROC AUC and balanced accuracy and OOF ROC AUC per setting, and the model
each setting recommends.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medstack import pipeline
from medstack.config import load_config
from medstack.data import read_dataset
from medstack.pipeline import FoldCache
from medstack.run_folder import CONFIG_FILE, read_manifest

SETTINGS = ("probabilities", "log_odds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run folder (config.yaml, manifest.json)")
    parser.add_argument("--cache", type=Path, required=True, help="that run's fold cache (the folder holding folds/)")
    args = parser.parse_args()
    version = read_manifest(args.run)["code_version_models"]
    cfg = load_config(args.run / CONFIG_FILE)
    dataset = read_dataset(cfg.data)
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg)
    try:
        results = pipeline.cached_folds(prepared, cfg, FoldCache(args.cache), version)
    except LookupError as exc:
        raise SystemExit(str(exc)) from None
    preds = pipeline.gather_predictions(prepared, results)
    scores, recommended = {}, {}
    for setting in SETTINGS:
        run_cfg = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"meta_features": setting})})
        ensembles = pipeline.fit_ensembles(prepared, preds, run_cfg)
        metrics = pipeline.evaluate_on_test(prepared, ensembles, run_cfg)
        scores[setting] = {name: (m["test"]["roc_auc"], m["test"]["balanced_accuracy"], m["oof"]["roc_auc"])
                           for name, m in metrics["models"].items()}
        recommended[setting] = ensembles.recommended["model"]
    print(f"{args.run}: {len(prepared.y_train)} training images, {len(results)} fold models\n")
    print("| model | test ROC AUC, probabilities / log-odds | test bal. acc. | OOF ROC AUC |")
    print("|---|---|---|---|")
    for name in scores[SETTINGS[0]]:
        a, b = scores["probabilities"][name], scores["log_odds"][name]
        print(f"| {name} | {a[0]:.4f} / {b[0]:.4f} | {a[1]:.4f} / {b[1]:.4f} | {a[2]:.4f} / {b[2]:.4f} |")
    print("\nrecommended: " + ", ".join(f"{s}: {recommended[s]}" for s in SETTINGS))


if __name__ == "__main__":
    main()
