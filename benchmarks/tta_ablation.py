"""Test-time augmentation on and off, on the same trained fold models.

TTA only wraps a model after training (the weights do not depend on it), so one cold run with `training.tta: auto`
is enough: this script reloads its fold cache, takes each fold model's inner network (one view, no TTA), fits a
fresh temperature on val for it as a `tta: none` run would, and scores OOF, val and test both ways through the
same pipeline functions (gather, ensembles, decisions, test evaluation).

    python benchmarks/small_data.py --label after --sizes 546 ...   # leaves nothing behind: use --cache-dir, or
    python benchmarks/tta_ablation.py --cache /path/to/fold-cache --set 'data.subset={train: 546, val: 78}'
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import keras
import numpy as np
import yaml

import medstack.models.losses  # noqa: F401  registers the Keras objects the saved fold models name
import medstack.models.network  # noqa: F401
import medstack.models.recipe  # noqa: F401
from medstack import pipeline
from medstack.config import load_config
from medstack.data import read_dataset
from medstack.models.calibration import fit_temperature
from medstack.models.training import predict_logits
from medstack.pipeline import FoldCache

REPO = Path(__file__).resolve().parents[1]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _network(model: keras.Model) -> keras.Model | None:
    """The CNN inside the saved fold model (which wraps it in the TTA views and the temperature)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if any(isinstance(inner, keras.layers.Conv2D) for inner in layer.layers):
                return layer
            found = _network(layer)
            if found is not None:
                return found
    return None


def without_tta(result, prepared, calibrate: bool):
    """The fold's predictions from its inner one-view network, temperature refitted on val."""
    model = keras.saving.load_model(result.model_path, safe_mode=True, compile=False)
    inner = _network(model)
    if inner is None:
        raise SystemExit(f"{result.model_path}: no CNN inside (a tta: none run has nothing to ablate)")
    data = prepared.fold_data(result.fold)
    held, val, test = (predict_logits(inner, x) for x in (data.x_holdout, data.x_val, data.x_test))
    t = fit_temperature(val, data.y_val) if calibrate else 1.0
    return dataclasses.replace(result, oof_proba=_softmax(held / t), val_proba=_softmax(val / t),
                               test_proba=_softmax(test / t))


def score(prepared, results, cfg) -> dict[str, tuple[float, float, float]]:
    ensembles = pipeline.fit_ensembles(prepared, pipeline.gather_predictions(prepared, results), cfg)
    metrics = pipeline.evaluate_on_test(prepared, ensembles, cfg)
    return {name: (m["test"]["roc_auc"], m["test"]["balanced_accuracy"], m["oof"]["roc_auc"])
            for name, m in metrics["models"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="the fold cache of a finished run (the folder holding folds/)")
    parser.add_argument("--config", default=str(REPO / "configs" / "pneumoniamnist.yaml"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pneumoniamnist.npz"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = {"data.path": args.data, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}}
    cfg = load_config(args.config, overrides)
    dataset = read_dataset(cfg.data)
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg)
    try:
        results = pipeline.cached_folds(prepared, cfg, FoldCache(args.cache), pipeline.code_version())
    except LookupError as exc:
        raise SystemExit(str(exc)) from None
    on = score(prepared, results, cfg)
    off = score(prepared, [without_tta(r, prepared, cfg.training.calibration == "temperature") for r in results], cfg)
    print("| model | test ROC AUC, TTA off | TTA on | test bal. acc., TTA off | TTA on | OOF ROC AUC, TTA off | TTA on |")
    print("|---|---|---|---|---|---|---|")
    for name in on:
        a, b = off[name], on[name]
        print(f"| {name} | {a[0]:.4f} | {b[0]:.4f} | {a[1]:.4f} | {b[1]:.4f} | {a[2]:.4f} | {b[2]:.4f} |")


if __name__ == "__main__":
    main()
