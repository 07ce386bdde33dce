"""Test-time views in one batch against one network call a view: what a fold model and the fused graph cost.

A fold model with ``training.tta: auto`` averages its network's logits over 5 views of an image. Until the views
were stacked into one batch (``medstack.models.network.TTAViews``), the saved model called the network once per
view (one ``TTAView`` layer a view; bundles written then still load that way). This builds the config's fold
networks (untrained: weights do not change what a call costs), wraps each both ways with its temperature, as a run
saves them, and measures in a fresh process per layout:

- ``eager_ms``: CPU ms of one eager call of one fold model on ``--rows`` rows (how a run predicts its held-out,
  val and test rows: ``medstack.models.training.predict_logits``), the median over the folds and 5 repeats;
- ``trace_cpu_s``: CPU seconds to trace and first call the fused graph of all folds (what ``medstack predict``,
  ``serve-model`` and every prediction test pay once per loaded bundle);
- ``one_image_ms``: wall ms of one image through the fused graph, median of 50 calls;
- ``images_per_s_64`` and ``images_per_s_256``: fused-graph throughput at those batch sizes, best of 3 passes. As
  the product scores them: one call a batch with one call a view; with the views in one batch, calls of
  ``rows_per_call`` rows (51 at 5 views), so that no network holds more than 256 images at once.

TensorFlow keeps its default threads (a user's process). Printed and appended to
benchmarks/results/tta_batching.csv.

    python benchmarks/tta_batching.py --config configs/pneumoniamnist.yaml   # 4 strategies x 5 folds
    python benchmarks/tta_batching.py --config configs/smoke.yaml            # 4 strategies x 2 folds
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "tta_batching.csv"
LAYOUTS = ("one call a view", "views in one batch")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_view_tta(net, views):
    """The layout fold models were saved in before: the network called once per view, the logits averaged."""
    import keras

    from medstack.models.network import TTAView

    inputs = keras.Input(shape=net.input_shape[1:], name="pixels")
    logits = [net(TTAView(**view, name=f"tta_view{i}")(inputs)) for i, view in enumerate(views)]
    return keras.Model(inputs, keras.layers.Average(dtype="float32", name="tta_mean")(logits))


def measure(config: str, layout: str, rows: int) -> dict:
    import keras
    import numpy as np

    from medstack.config import load_config
    from medstack.inference.fused import compiled_call
    from medstack.models.calibration import with_temperature
    from medstack.models.network import build_model, rows_per_call, tta_views, with_tta

    cfg = load_config(config, {"training.tta": "auto"})
    shape = (*cfg.data.image_size, cfg.data.channels) if cfg.data.image_size else (28, 28, 1)
    views = tta_views(cfg.augmentation, shape, "auto")
    wrap = per_view_tta if layout == LAYOUTS[0] else with_tta
    folds = len(cfg.strategies) * cfg.split.folds
    models = [with_temperature(wrap(build_model(shape, 2, cfg.model, cfg.augmentation, seed=i), views), 1.3)
              for i in range(folds)]
    x = np.random.default_rng(0).integers(0, 256, (256, *shape)).astype("float32")
    for model in models:
        model(x[:rows], training=False)  # first eager calls build what later calls reuse
    eager = []
    for _ in range(5):
        for model in models:
            started = _cpu()
            keras.ops.convert_to_numpy(model(x[:rows], training=False))
            eager.append(_cpu() - started)
    inputs = keras.Input(shape=shape, dtype="float32", name="pixels")
    outs = [keras.Model(m.inputs[0], m.outputs[0], name=f"fold{i}")(inputs, training=False)
            for i, m in enumerate(models)]
    fused = keras.Model(inputs, keras.layers.Average()(outs) if len(outs) > 1 else outs[0])
    started = _cpu()
    call = compiled_call(fused)
    call(x[:1])
    trace = _cpu() - started
    singles = []
    for _ in range(50):
        started = time.perf_counter()
        call(x[:1])
        singles.append(time.perf_counter() - started)
    per_call = len(x) if layout == LAYOUTS[0] else rows_per_call(len(views))
    chunked = lambda batch: [call(batch[i:i + per_call]) for i in range(0, len(batch), per_call)]  # noqa: E731
    rates = {}
    for batch in (64, 256):
        chunked(x[:batch])
        best = min(_timed(chunked, x[:batch]) for _ in range(3))
        rates[batch] = round(4 * batch / best)
    return {"config": Path(config).name, "layout": layout, "folds": folds, "views": len(views), "rows": rows,
            "eager_ms": round(1000 * float(np.median(eager)), 1), "trace_cpu_s": round(trace, 2),
            "one_image_ms": round(1000 * float(np.median(singles)), 2), "rows_a_call": per_call,
            "images_per_s_64": rates[64], "images_per_s_256": rates[256]}


def _timed(call, x) -> float:
    started = time.perf_counter()
    for _ in range(4):
        call(x)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/pneumoniamnist.yaml")
    parser.add_argument("--rows", type=int, default=100, help="rows of one eager call (default 100)")
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)  # one layout, in this process
    args = parser.parse_args()
    if args.layout:
        print(json.dumps(measure(args.config, args.layout, args.rows)))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for layout in LAYOUTS:  # a fresh process each: neither inherits the other's traced functions
        done = subprocess.run([sys.executable, __file__, "--config", args.config, "--rows", str(args.rows),
                               "--layout", layout], capture_output=True, text=True, check=True)
        rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "commit": commit})
    new = not RESULTS.is_file()
    with RESULTS.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
