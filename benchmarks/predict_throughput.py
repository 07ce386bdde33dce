"""`medstack predict` throughput: the fused one-graph ensemble vs the per-member Python path.

    python benchmarks/predict_throughput.py --model runs/<run-id> [--images 10000] [--batch-size 256]

Builds ``--images`` 28x28 inputs by cycling through the images of ``--data`` (default: the shared PneumoniaMNIST
npz), writes them once as an npz and once as PNG files, and times :func:`medstack.inference.predict.predict` end to
end (reading, decoding, drift checks, scoring, writing the CSV) for each engine (PNG files through the fused
engine only: decoding costs the same for both), and the scoring calls alone on arrays in memory. Model loading and
the first (tracing) call are timed separately and excluded from images/s. Bounded: one pass per configuration.
Prints a markdown table; numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medstack.console.quiet import quiet_environment

quiet_environment()  # before TensorFlow is imported; a user's own settings win
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder or <name>@<alias>")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pneumoniamnist.npz"))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    import logging

    from PIL import Image

    from medstack.data.npz import load_npz
    from medstack.inference.bundle import load_bundle
    from medstack.inference.fused import FusedScorer, MemberScorer
    from medstack.inference.predict import predict

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    source = load_npz(args.data, "pneumoniamnist").images
    images = source[np.arange(args.images) % len(source)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medstack-bench-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", images=images[..., 0])
        (tmp / "png").mkdir()
        for i, pixels in enumerate(images):
            Image.fromarray(pixels[..., 0]).save(tmp / "png" / f"{i:06d}.png")
        for engine, make in (("fused", FusedScorer), ("members", MemberScorer)):
            started = time.perf_counter()
            bundle = load_bundle(args.model)
            scorer = make(bundle)
            scorer(images[: args.batch_size])  # trace once
            ready = time.perf_counter() - started
            inputs = [("npz", tmp / "inputs.npz")] + ([("png files", tmp / "png")] if engine == "fused" else [])
            for kind, path in inputs:
                summary = predict(bundle, path, tmp / f"{engine}.csv", scorer=scorer, batch_size=args.batch_size)
                rows.append((engine, kind, summary.scored, summary.seconds, summary.images_per_second, ready))
            x = images.astype(np.float32)
            started = time.perf_counter()
            for i in range(0, len(x), args.batch_size):
                scorer(x[i : i + args.batch_size])
            seconds = time.perf_counter() - started
            rows.append((engine, "scoring only (arrays in memory)", len(x), seconds, len(x) / seconds, ready))
    print(f"model {args.model}, {args.images} images of {images.shape[1:]}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs visible\n")
    print("| engine | input | images | seconds | images/s | load + first call (s) |")
    print("|---|---|---|---|---|---|")
    for engine, kind, n, seconds, rate, ready in rows:
        print(f"| {engine} | {kind} | {n:,} | {seconds:.1f} | {rate:,.0f} | {ready:.1f} |")


if __name__ == "__main__":
    main()
