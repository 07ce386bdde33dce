"""Cost against quality of the base network: the full-width network and leaner variants, one strategy x 5 folds each.

Each variant is one cold `medstack run` of configs/pneumoniamnist.yaml on a stratified, seeded subsample of
PneumoniaMNIST (`data.subset`, 546 training and 78 validation images by default; the test split is the official 624
images) with a single strategy, so that the variants differ only in the network. Printed per variant: forward-pass
MFLOP per 28x28 image (one view; prediction runs the test-time views on top), trainable parameters, the strategy's
test ROC AUC with its bootstrap 95% CI, OOF ROC AUC, test Brier score and balanced accuracy, the CPU seconds of the
whole run (`resource.getrusage` of the finished child: the flow process and everything it started) and its wall
time, and the fold trainings' own seconds (manifest.json). Runs one variant after another, alone.

    python benchmarks/network_frontier.py                              # every variant, 546 images, class_weight
    python benchmarks/network_frontier.py --variants full-width,slim --strategy smote
    python benchmarks/network_frontier.py --size full                  # all 4,708 training images

Rows are appended to benchmarks/results/network_frontier.csv and the table of this invocation is printed as
markdown. The csv rows before the leaner default name the full-width network "default" (it was, until the
half-width network replaced it: docs/benchmarks.md, "A leaner default").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from small_data import SIZES, append_rows  # the same subsamples as the quality tables (this folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict] = {  # model-section overrides of configs/pneumoniamnist.yaml, every key spelled out
    "full-width": {"filters": [32, 64, 128], "convs_per_block": 2, "head": "flatten", "dense_units": 256},
    "gap-head": {"filters": [32, 64, 128], "convs_per_block": 2, "head": "gap", "dense_units": 256},
    "half-width": {"filters": [16, 32, 64], "convs_per_block": 2, "head": "gap", "dense_units": 128},  # the default
    "slim": {"filters": [16, 32, 64], "convs_per_block": 1, "head": "gap", "dense_units": 64},
}
FIELDS = ("variant", "strategy", "n_train", "mflop", "params", "test_roc_auc", "ci_low", "ci_high", "oof_roc_auc",
          "test_brier", "test_balanced_accuracy", "run_cpu_s", "wall_s", "training_s", "commit")


def network_cost(overrides: dict) -> tuple[float, int]:
    """(forward MFLOP per image, trainable parameters) of the variant's network at 28x28x1, two classes: 2 x
    multiply-adds of every convolution and dense layer (pooling, activations and augmentation not counted)."""
    import keras

    from medstack.config import load_config
    from medstack.models.network import build_model

    cfg = load_config(REPO / "configs" / "pneumoniamnist.yaml", {f"model.{k}": v for k, v in overrides.items()})
    net = build_model((28, 28, 1), 2, cfg.model)
    flops = 0
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    params = sum(int(keras.ops.size(w)) for w in net.trainable_weights)
    return flops / 1e6, params


def run_variant(name: str, args: argparse.Namespace, workdir: Path) -> tuple[Path, float, float]:
    """One cold run; (run folder, CPU seconds of the run process tree, wall seconds)."""
    train, val = SIZES[args.size]
    sets = [f"strategies={{{args.strategy}: {{}}}}"]
    sets += [f"model.{k}={json.dumps(v)}" for k, v in VARIANTS[name].items()]
    if train is not None:
        sets.append(f"data.subset={{train: {train}, val: {val}}}")
    command = [sys.executable, "-m", "medstack", "run", "-q", "--config", str(REPO / "configs" / "pneumoniamnist.yaml"),
               "--data", args.data, "--output-dir", str(workdir / "runs"), "--cache-dir", str(workdir / "cache")]
    for value in sets:
        command += ["--set", value]
    print(f"[{name}] {' '.join(command)}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"[{name}] run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Path(done.stdout.strip().splitlines()[-1]), cpu, wall


def row_of(name: str, run: Path, cpu: float, wall: float, args: argparse.Namespace, commit: str) -> dict:
    from medstack.run_folder import read_manifest, read_metrics

    metrics, manifest = read_metrics(run), read_manifest(run)
    result = metrics["models"][args.strategy]
    low, high = result["test_ci"]["roc_auc"]
    mflop, params = network_cost(VARIANTS[name])
    return {
        "variant": name, "strategy": args.strategy, "n_train": sum(metrics["dataset"]["counts"]["train"].values()),
        "mflop": round(mflop, 1), "params": params, "test_roc_auc": round(result["test"]["roc_auc"], 4),
        "ci_low": round(low, 4), "ci_high": round(high, 4), "oof_roc_auc": round(result["oof"]["roc_auc"], 4),
        "test_brier": round(result["test"]["brier"], 4),
        "test_balanced_accuracy": round(result["test"]["balanced_accuracy"], 4),
        "run_cpu_s": round(cpu), "wall_s": round(wall),
        "training_s": round(sum(f["seconds"] for f in manifest["folds"].values())), "commit": commit,
    }


def print_table(rows: list[dict]) -> None:
    print("| network | MFLOP/image | parameters | test ROC AUC (95% CI) | OOF ROC AUC | test Brier | test bal. acc. "
          "| run CPU | run wall | fold trainings |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['mflop']} | {int(r['params']):,} | {r['test_roc_auc']} ({r['ci_low']}-"
              f"{r['ci_high']}) | {r['oof_roc_auc']} | {r['test_brier']} | {r['test_balanced_accuracy']} "
              f"| {r['run_cpu_s']} CPU-s | {r['wall_s']} s | {r['training_s']} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--strategy", default="class_weight")
    parser.add_argument("--size", default="546", choices=sorted(SIZES))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pneumoniamnist.npz"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "network_frontier.csv"))
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    if not Path(args.data).is_file():
        sys.exit(f"needs {args.data} (PneumoniaMNIST, shipped beside the repo in ../shared/data)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.variants.split(","):
        with tempfile.TemporaryDirectory(prefix=f"medstack-frontier-{name}-") as tmp:
            run, cpu, wall = run_variant(name, args, Path(tmp))
            rows.append(row_of(name, run, cpu, wall, args, commit))
        append_rows(results, FIELDS, rows[-1:])
        print_table(rows[-1:])
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
