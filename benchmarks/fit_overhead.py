"""What medstack's training of one fold costs over a bare ``model.fit`` on in-memory arrays (issue 15: at most 1.10x).

(a) bare: ``models.network.build_model`` with the config's network, compiled with the loss, class weights and
    optimiser (Adam + the recipe's learning-rate schedule) that the strategy plans for the fold, then
    ``fit(x, y, batch_size)`` on the fold's training arrays with Keras' own shuffle: no validation, no metrics,
    no callbacks; as many epochs (passes) as make medstack's number of optimiser steps.
(b) medstack: ``medstack.pipeline.train_one_fold`` of the same (strategy, fold) into a fresh ``FoldCache`` in a temp
    folder: seeded batches, per-epoch validation + early stopping, loss/metrics as compiled, test-time-augmented
    predictions of the held-out fold, val and test, temperature calibration, the cache entry (model included).

The two run alternately (medstack, bare, bare, medstack, ... with ``--repeats``); the ratio is the median of per-pair
ratios of seconds per optimiser step, by wall clock and by this process's CPU time (steadier on a shared machine).
Both train the same number of steps unless early stopping ends medstack off a pass boundary (then bare trains the
nearest whole number of passes). Medstack's time is broken down by timing the functions it calls:
keras ``fit`` (training; its ``evaluate`` calls are the per-epoch validation), val logits for calibration and the
temperature fit, predictions (``predict_logits`` after training), the cache save, and the rest.

Measured (2 CPU cores shared with other jobs, class_weight, fold 1): ``--quick`` on a quiet machine: medstack 40-43 s,
bare 33-34 s, ratio 1.23 by wall (1.26 CPU); of medstack's time, training 81% (as long as the whole bare fit),
predictions with 5 TTA views 10%, validation 4%, calibration logits 3%, cache save 1%: fixed costs that 48 steps do
not amortise. ``--epochs 5`` (then the default config's full-width network and its 531-step budget for this fold, 9
epochs of 59 steps), one pair: medstack 804 s / 517 CPU s, bare 549 s / 474 CPU s: 1.09 by CPU, 1.47 by wall
(medstack ran under a neighbour's load of 7, bare on a quiet machine); training 92%, predictions 5%, validation 2%,
calibration 1%.

    python benchmarks/fit_overhead.py --quick                 # ~2 minutes: 640-image subset, 48 steps, 2 repeats
    python benchmarks/fit_overhead.py                         # one fold of configs/pneumoniamnist.yaml, as run
    python benchmarks/fit_overhead.py --subset 1000 --epochs 5 --set training.tta=none --strategy ldam --fold 2
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import keras
import yaml

import medstack.models.training as training
from medstack import pipeline
from medstack.config import RunConfig, load_config
from medstack.data import read_dataset
from medstack.models.network import build_model
from medstack.models.recipe import learning_rate, resolve_recipe
from medstack.models.strategies import get_strategy
from medstack.pipeline import FoldCache

REPO = Path(__file__).resolve().parents[1]
QUICK = {
    "data.subset": {"train": 640, "val": 128, "test": 128},
    "training.epochs": 6,  # 512 training rows of fold 1: 8 steps a pass, 48 steps in all ...
    "training.min_steps": 48,
    "training.min_epoch_steps": 16,  # ... in 3 epochs of 2 passes
    "training.stop_after_steps": 48,  # no early stop: both sides train every planned step
}


def build_config(args: argparse.Namespace) -> RunConfig:
    overrides: dict[str, Any] = {"data.path": str(args.data)} if args.data else {}
    if args.quick:
        overrides.update(QUICK)
    if args.subset:
        overrides["data.subset"] = {**overrides.get("data.subset", {}), "train": args.subset}
    if args.epochs:
        overrides["training.epochs"] = args.epochs
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return load_config(args.config, overrides)


@contextlib.contextmanager
def timed_parts(parts: dict[str, float]) -> Iterator[None]:
    """Add the wall seconds spent in the functions medstack's training calls to ``parts`` while inside."""
    inside_fit = [False]

    def wrap(owner: Any, name: str, part) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                key = part() if callable(part) else part
                parts[key] = parts.get(key, 0.0) + time.perf_counter() - started

        patched.append((owner, name, original))
        setattr(owner, name, timed)

    def classifier_fit(original):
        def run(*args, **kwargs):
            inside_fit[0] = True
            try:
                return original(*args, **kwargs)
            finally:
                inside_fit[0] = False
        return run

    patched: list[tuple[Any, str, Any]] = []
    wrap(keras.Model, "fit", "keras fit")
    wrap(keras.Model, "evaluate", "validation")
    wrap(training, "predict_logits", lambda: "calibration logits" if inside_fit[0] else "predictions")
    wrap(training, "fit_temperature", "temperature fit")
    wrap(FoldCache, "save", "cache save")
    patched.append((training.CNNClassifier, "fit", training.CNNClassifier.fit))
    training.CNNClassifier.fit = classifier_fit(training.CNNClassifier.fit)
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def run_medstack(prepared, cfg: RunConfig, strategy: str, fold: int
                 ) -> tuple[float, float, int, dict[str, float], dict]:
    """Wall and CPU seconds of ``train_one_fold`` into a fresh cache, its optimiser steps, wall time by part, its info."""
    parts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fit_overhead_") as tmp, timed_parts(parts):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = pipeline.train_one_fold(prepared, cfg, strategy, fold, FoldCache(tmp), pipeline.code_version())
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    parts["training (fit less validation)"] = parts.pop("keras fit", 0.0) - parts.get("validation", 0.0)
    parts["other"] = wall - sum(parts.values())
    return wall, cpu, int(result.info["steps_run"]), parts, result.info


def run_bare(prepared, cfg: RunConfig, strategy: str, fold: int, steps: int) -> tuple[float, float, int]:
    """Wall and CPU seconds and optimiser steps of a bare ``fit`` on the fold's arrays (build and compile included)."""
    data = prepared.fold_data(fold)
    k = prepared.num_classes
    seed = pipeline.fold_seed(cfg.seed, strategy, fold)
    started, started_cpu = time.perf_counter(), time.process_time()
    plan = get_strategy(strategy).plan(data.x_train, data.y_train, k, cfg.strategy_params(strategy),
                                       cfg.training.epochs, seed)
    recipe = resolve_recipe(len(plan.x), cfg.training)
    net = build_model(plan.x.shape[1:], k, cfg.model, cfg.augmentation, cfg.data.image_size, seed=seed,
                      mixed_precision=cfg.training.mixed_precision and training.has_gpu(),
                      cosine_scale=plan.cosine_scale)
    net.compile(optimizer=keras.optimizers.Adam(learning_rate(cfg.training, recipe)), loss=plan.loss_phases[0][1])
    per_pass = math.ceil(len(plan.x) / cfg.training.batch_size)
    epochs = max(1, round(steps / per_pass))
    net.fit(plan.x, keras.utils.to_categorical(plan.y, k), batch_size=cfg.training.batch_size, epochs=epochs,
            class_weight=plan.class_weight, verbose=0)
    return time.perf_counter() - started, time.process_time() - started_cpu, epochs * per_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "pneumoniamnist.yaml")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/pneumoniamnist.npz"),
                        help="sets data.path (empty: the config's own)")
    parser.add_argument("--strategy", default="class_weight")
    parser.add_argument("--fold", type=int, default=0, help="0-based")
    parser.add_argument("--subset", type=int, help="train split subsample (data.subset.train)")
    parser.add_argument("--epochs", type=int, help="training.epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (YAML value)")
    parser.add_argument("--quick", action="store_true",
                        help="a ~2-minute check: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--repeats", type=int, help="medstack/bare pairs, alternating order (default 1; --quick 2)")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 1)

    cfg = build_config(args)
    dataset = read_dataset(cfg.data)
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg)
    recipe = resolve_recipe(int((prepared.fold_of != args.fold).sum()), cfg.training)
    print(f"{cfg.name} fold {args.fold + 1}/{prepared.n_folds}, {args.strategy}: {recipe.as_dict()}", flush=True)

    ratios, cpu_ratios, steps = [], [], recipe.planned_steps
    for r in range(repeats):
        order = ("medstack", "bare") if r % 2 == 0 else ("bare", "medstack")
        for side in order:
            if side == "medstack":
                m_wall, m_cpu, steps, parts, info = run_medstack(prepared, cfg, args.strategy, args.fold)
                m_steps = steps
                print(f"  medstack: {m_wall:.1f} s ({m_cpu:.1f} CPU s), {m_steps} steps ({m_steps / m_wall:.2f}/s), "
                      f"epochs run {info['epochs_run']}, best epoch {info['best_epoch']}, TTA views {info['tta_views']}",
                      flush=True)
                print("    " + ", ".join(f"{k} {v:.1f} s ({v / m_wall:.0%})" for k, v in parts.items()), flush=True)
            else:
                b_wall, b_cpu, b_steps = run_bare(prepared, cfg, args.strategy, args.fold, steps)
                print(f"  bare fit: {b_wall:.1f} s ({b_cpu:.1f} CPU s), {b_steps} steps ({b_steps / b_wall:.2f}/s)",
                      flush=True)
        ratios.append((m_wall / m_steps) / (b_wall / b_steps))
        cpu_ratios.append((m_cpu / m_steps) / (b_cpu / b_steps))
        print(f"pair {r + 1}: medstack / bare = {m_wall / b_wall:.3f} by wall, {ratios[-1]:.3f} by wall per step, "
              f"{cpu_ratios[-1]:.3f} by CPU per step", flush=True)
    print(f"median ratio per optimiser step over {repeats} pair(s): wall {statistics.median(ratios):.3f}, "
          f"CPU {statistics.median(cpu_ratios):.3f} (target <= 1.10)", flush=True)


if __name__ == "__main__":
    main()
