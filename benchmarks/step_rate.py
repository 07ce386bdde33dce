"""Optimiser steps per second of the default network fed by each training-input option, one process, no Prefect.

Every case trains its own copy of the default network (configs/pneumoniamnist.yaml: the half-width network since the
leaner default; every rate quoted below and in docs/benchmarks.md up to then is the full-width one's) with the
compile medstack uses (accuracy + SoftmaxAUC, warm-up + cosine LR) on the same random 28x28x1 uint8 images, batch
64, ``--steps`` steps an epoch. After one untimed ``fit`` per case (traces the graph), the cases are timed in
rounds, A, B, C, A, B, C, ... (each round starting one case later), each time a ``fit`` of ``--epochs`` epochs; a
case's rate is the median over rounds and its ratio is the median of per-round ratios to ``arrays`` from the same
round, so a neighbour's load on a shared machine hits every case alike. Wall time and this process's CPU time are
both reported: on a shared machine the CPU seconds (the work the input pipeline adds) are far steadier than wall
seconds.

Cases (``--cases`` picks some):
  arrays            bare ``fit(x, y, batch_size=64)``: Keras' own (unseeded) shuffle, the target of issue 15
  medstack          what ``CNNClassifier.fit`` feeds (``training_input``): the seeded ``ShuffledBatches``, under
                    TensorFlow as a ``tf.data`` pipeline of row ranges gathered by ``tf.numpy_function``
  pydataset         the seeded ``ShuffledBatches`` PyDataset fed to ``fit`` as is (what medstack fed before)
  pydataset_threads the same PyDataset with ``workers=2`` threads and a queue of 10 batches
  tfdata            the same seeded batches as a ``tf.data`` gather pipeline (TensorFlow only)
  old_compile       ``arrays`` with the old recipe's compile (accuracy only, constant LR)
  bfloat16          ``medstack`` with the network built under Keras' ``mixed_bfloat16`` policy (bfloat16 compute,
                    float32 variables and logits): fast only where the CPU has bfloat16 instructions (AVX512-BF16,
                    AMX); ``grep -o 'avx512_bf16\|amx_bf16' /proc/cpuinfo`` says whether this one shows them

Interleaved in one process, the cases look alike: on 2 shared CPU cores (load 4-8), ``--steps 10 --rounds 5``, arrays
1.11 steps/s and the PyDataset fed as is 1.07 (CPU x0.998 of arrays). Each training runs in a fresh process (or
thread), though, and there the PyDataset fed as is cost twice the time per step: one fresh process per case, 240
steps after one traced epoch, 2 cores otherwise idle: PyDataset 1.60 steps/s against arrays 3.40 (seven shorter
runs: 1.46-2.33 against 2.92-4.53); two trainings in two threads of one process, 120 steps each: 1.46 steps/s
combined. Fed as the ``tf.data`` pipeline (the ``medstack`` case now): 2.93 steps/s alone (arrays 3.46 in the same
minutes) and 2.93 combined for two threads. So compare cases in fresh processes (``--fresh``), as trainings run.

    python benchmarks/step_rate.py                       # all cases, 5 rounds
    python benchmarks/step_rate.py --rounds 7 --steps 10 --cases arrays medstack
    python benchmarks/step_rate.py --fresh --steps 60 --rounds 3 --cases arrays medstack pydataset
    python benchmarks/step_rate.py --fresh --trainings 2 --steps 60 --rounds 3 --cases medstack pydataset
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np

from medstack.config import load_config
from medstack.models.network import build_model
from medstack.models.recipe import SoftmaxAUC
from medstack.models.feed import ShuffledBatches, training_input

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
CASES = ("arrays", "medstack", "pydataset", "pydataset_threads", "tfdata", "old_compile", "bfloat16")


def _tf_dataset(x: np.ndarray, y: np.ndarray, batches: ShuffledBatches, epochs: int):
    """The seeded batches of ``epochs`` epochs as a tf.data pipeline that gathers rows in the graph."""
    import tensorflow as tf

    rows = list(batches._batches)
    for _ in range(epochs - 1):
        batches.on_epoch_end()
        rows += list(batches._batches)
    flat = np.concatenate(rows).astype(np.int64)
    ends = np.cumsum([len(r) for r in rows])
    starts = ends - np.array([len(r) for r in rows])
    xs, ys, index = tf.constant(x), tf.constant(y), tf.constant(flat)

    def gather(start, end):
        picked = index[start:end]
        return tf.gather(xs, picked), tf.gather(ys, picked)

    ds = tf.data.Dataset.from_tensor_slices((starts, ends)).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _fit_args(case: str, x: np.ndarray, y: np.ndarray, steps: int, epochs: int, seed: int) -> tuple[object, dict]:
    """(data, fit keyword arguments) of one timed fit of ``case``: fresh each time, as every training's input is."""
    if case in ("arrays", "old_compile"):
        return x, {"y": y, "batch_size": BATCH}
    if case == "pydataset":
        return ShuffledBatches(x, y, BATCH, seed, steps), {"shuffle": False}
    if case == "pydataset_threads":
        data = ShuffledBatches(x, y, BATCH, seed, steps)
        data.workers, data.max_queue_size = 2, 10
        return data, {"shuffle": False}
    if case == "tfdata":
        return _tf_dataset(x, y, ShuffledBatches(x, y, BATCH, seed, steps), epochs), {"steps_per_epoch": steps}
    if case in ("medstack", "bfloat16"):
        return training_input(x, y, BATCH, seed, steps).next_epochs(epochs)
    raise ValueError(f"unknown case {case!r}")


def _compiled(case: str, cfg, total_steps: int) -> keras.Model:
    if case == "bfloat16":  # layers take the global policy when built (the logits layer pins float32)
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        net = build_model((28, 28, 1), 2, cfg.model, cfg.augmentation, None, seed=0, name="cnn")
    finally:
        keras.config.set_dtype_policy("float32")
    if case == "old_compile":
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
        return net
    cosine = keras.optimizers.schedules.CosineDecay(0.0, total_steps, alpha=0.01, warmup_target=1e-3,
                                                    warmup_steps=max(1, total_steps // 20))
    net.compile(optimizer=keras.optimizers.Adam(cosine), loss="categorical_crossentropy",
                metrics=["accuracy", SoftmaxAUC(positive_class=1)])
    return net


def _setup(steps: int) -> tuple[object, np.ndarray, np.ndarray]:
    """The default config and one epoch of random 28x28x1 images with one-hot labels."""
    cfg = load_config(REPO / "configs" / "pneumoniamnist.yaml", {})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH * steps, 28, 28, 1)).astype(np.uint8)
    y = keras.utils.to_categorical(rng.integers(0, 2, len(x)), 2).astype(np.float32)
    return cfg, x, y


def measure(cases: list[str], steps: int, epochs: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per case: median steps per wall second and per CPU second of this process (less sensitive to neighbours'
    load than wall time), and the median per-round ratios of its time to ``arrays``' (when ``arrays`` is a case)."""
    cfg, x, y = _setup(steps)
    nets = {case: _compiled(case, cfg, (rounds + 1) * epochs * steps) for case in cases}
    for case in cases:  # trace every graph before anything is timed
        data, fit = _fit_args(case, x, y, steps, 1, seed=0)
        nets[case].fit(data, epochs=1, verbose=0, **fit)
    wall: dict[str, list[float]] = {case: [] for case in cases}
    cpu: dict[str, list[float]] = {case: [] for case in cases}
    for r in range(rounds):
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            data, fit = _fit_args(case, x, y, steps, epochs, seed=r + 1)
            started, started_cpu = time.perf_counter(), time.process_time()
            nets[case].fit(data, epochs=epochs, verbose=0, **fit)
            wall[case].append(time.perf_counter() - started)
            cpu[case].append(time.process_time() - started_cpu)
        print(f"round {r + 1}, steps/s (per CPU s): "
              + ", ".join(f"{c} {epochs * steps / wall[c][-1]:.2f} ({epochs * steps / cpu[c][-1]:.2f})" for c in cases),
              flush=True)
    out = {}
    for case in cases:
        out[case] = {"steps_per_s": epochs * steps / statistics.median(wall[case]),
                     "steps_per_cpu_s": epochs * steps / statistics.median(cpu[case])}
        if "arrays" in cases:
            out[case]["time_vs_arrays"] = statistics.median(b / a for a, b in zip(wall["arrays"], wall[case]))
            out[case]["cpu_vs_arrays"] = statistics.median(b / a for a, b in zip(cpu["arrays"], cpu[case]))
    return out


def fresh_once(case: str, steps: int, epochs: int, trainings: int) -> float:
    """Steps per second of ``trainings`` fits of ``case`` running at once in threads of this (fresh) process, each on
    its own network after one untimed epoch: what a flow's training tasks see."""
    cfg, x, y = _setup(steps)
    nets = [_compiled(case, cfg, (epochs + 1) * steps) for _ in range(trainings)]
    for net in nets:
        data, fit = _fit_args(case, x, y, steps, 1, seed=0)
        net.fit(data, epochs=1, verbose=0, **fit)
    runs = [_fit_args(case, x, y, steps, epochs, seed=i + 1) for i in range(trainings)]
    threads = [threading.Thread(target=net.fit, args=(data,), kwargs={"epochs": epochs, "verbose": 0, **fit})
               for net, (data, fit) in zip(nets, runs)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return trainings * epochs * steps / (time.perf_counter() - started)


def measure_fresh(cases: list[str], steps: int, epochs: int, rounds: int, trainings: int) -> dict[str, list[float]]:
    """Every (round, case) in its own fresh Python process, cases interleaved as in :func:`measure`."""
    rates: dict[str, list[float]] = {case: [] for case in cases}
    for r in range(rounds):
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            out = subprocess.run([sys.executable, __file__, "--once", case, "--steps", str(steps), "--epochs",
                                  str(epochs), "--trainings", str(trainings)], capture_output=True, text=True, check=True)
            rates[case].append(float(out.stdout.split()[-1]))
        print(f"round {r + 1}, steps/s: " + ", ".join(f"{c} {rates[c][-1]:.2f}" for c in cases), flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--steps", type=int, default=20, help="steps an epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each timed fit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="time every case in its own fresh process")
    parser.add_argument("--trainings", type=int, default=1, help="with --fresh: trainings at once, in threads")
    parser.add_argument("--once", choices=CASES, help=argparse.SUPPRESS)  # one fresh measurement (--fresh runs it)
    args = parser.parse_args()
    if args.once:
        print(f"{fresh_once(args.once, args.steps, args.epochs, args.trainings):.4f}")
        return
    if args.fresh:
        for case, rates in measure_fresh(args.cases, args.steps, args.epochs, args.rounds, args.trainings).items():
            print(f"{case}: median {statistics.median(rates):.2f} steps/s over {len(rates)} fresh processes "
                  f"({args.trainings} training(s) at once; range {min(rates):.2f}-{max(rates):.2f})", flush=True)
        return
    results = measure(args.cases, args.steps, args.epochs, args.rounds)
    for case, r in results.items():
        ratio = (f"; time x{r['time_vs_arrays']:.3f}, CPU x{r['cpu_vs_arrays']:.3f} of arrays"
                 if "time_vs_arrays" in r else "")
        print(f"{case}: {r['steps_per_s']:.2f} steps/s, {r['steps_per_cpu_s']:.2f} steps per CPU second{ratio}",
              flush=True)


if __name__ == "__main__":
    main()
